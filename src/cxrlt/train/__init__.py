"""Training wing: the epoch loop and runner, the checkpoint saver, the fold driver of stage 03, the
feature cache and the second stages over frozen backbones. Imports ground, data, models, losses."""
