"""Data wing: presets and CSV checks (`datasets`), label lists (`labels`), decode + cache (`images`),
the synthetic demo (`demo`), folds (`folds`), augmentation and mix label rules (`augment`), datasets
and loaders (`loader`). Imports only the ground modules (config, errors, fileio, ...)."""
