"""Training wing: the fold driver of stage 03. Imports ground, data, models, losses."""
