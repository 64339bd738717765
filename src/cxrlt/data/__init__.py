"""Data wing: presets and CSV checks (`datasets`), label lists (`labels`), decode + cache (`images`),
the synthetic demo (`demo`), folds (`folds`), augmentation and mix label rules (`augment`), datasets
and loaders (`loader`); above them the `Experiment` (`experiment`: a recipe resolved once, its
training table and folds, via `splits`), the external sets (`external`), teacher soft targets
(`pseudo`) and the drivers of stages 01 and 02 (`stages`). Imports only the ground modules (config,
errors, fileio, ...)."""
