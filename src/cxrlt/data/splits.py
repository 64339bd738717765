"""The training split as every stage after the folds sees it: table, cached files, labels, folds."""
from __future__ import annotations

import hashlib

from cxrlt.config import rerun_hint
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
        raise CxrltError(f"{display_path(fpath)}: no folds yet; run {rerun_hint(cfg, '02_make_folds.py')}")
    folds = read_folds(fpath, spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
    files = Cache.from_config(cfg, spec.name).require(df[spec.id_col], spec.train_csv, cfg)
    return spec, df, files, label_matrix(spec, df), folds.loc[df[spec.id_col]].to_numpy()


def assignment_hash(ids, folds) -> str:
    """sha256 (16 hex) of the (id, fold) pairs in training-CSV order: what a fold's model held out.
    A checkpoint records it, so a model is never scored against folds it was not trained for."""
    h = hashlib.sha256()
    for i, f in zip(ids, folds):
        h.update(f"{i}\t{int(f)}\n".encode())
    return h.hexdigest()[:16]


def full_assignment(ids) -> str:
    """What a full-data fit was trained on (every row, nothing held out): `full:<hash of the ids>`."""
    return "full:" + assignment_hash(ids, [0] * len(ids))


def current_assignment(cfg, spec=None) -> str:
    """The assignment hash of the folds file as it is now (no image-cache check: cheap)."""
    spec = spec or resolve_dataset(cfg.data)
    df = read_split(spec, "train", labels="none")
    fpath = folds_path(cfg, spec)
    if not fpath.is_file():
        raise CxrltError(f"{display_path(fpath)}: no folds yet; run {rerun_hint(cfg, '02_make_folds.py')}")
    folds = read_folds(fpath, spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
    return assignment_hash(df[spec.id_col], folds.loc[df[spec.id_col]].to_numpy())
