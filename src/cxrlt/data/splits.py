"""The training split as every stage after the folds sees it: table, cached files, labels, folds."""
from __future__ import annotations

from cxrlt.data.datasets import label_matrix, read_split, resolve_dataset
from cxrlt.data.folds import folds_path, read_folds
from cxrlt.data.images import Cache
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path


def training_data(cfg):
    """(spec, training table, cached file per row, label matrix, fold per row), all checked."""
    spec = resolve_dataset(cfg.data)
    df = read_split(spec, "train", labels="required")
    fpath = folds_path(cfg, spec)
    if not fpath.is_file():
        raise CxrltError(f"{display_path(fpath)}: no folds yet; run src/02_make_folds.py --config {display_path(cfg.recipe)}")
    folds = read_folds(fpath, spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
    files = Cache.from_config(cfg, spec.name).require(df[spec.id_col], spec.train_csv, cfg.recipe)
    return spec, df, files, label_matrix(spec, df), folds.loc[df[spec.id_col]].to_numpy()
