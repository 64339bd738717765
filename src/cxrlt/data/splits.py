"""The training split as every stage after the folds sees it: table, cached files, labels, folds."""
from __future__ import annotations

import hashlib

from cxrlt.config import rerun_hint
from cxrlt.data.datasets import label_matrix, read_split, resolve_dataset
from cxrlt.data.folds import folds_path, read_folds
from cxrlt.data.images import Cache
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path


def view_rows(cfg, spec, df):
    """The rows a recipe trains on: all, or those whose view is in `data.views` (a per-view
    specialist; same folds file, so the same folds for those images)."""
    views = cfg.data.get("views")
    if not views:
        return df
    if not spec.view_col or spec.view_col not in df.columns:
        raise CxrltError(f"data.views={list(views)}: dataset preset '{spec.name}' has no view column (data.view_col)")
    keep = df[spec.view_col].astype(str).str.strip().str.upper().isin([str(v).upper() for v in views])
    if not keep.any():
        raise CxrltError(f"data.views={list(views)}: no training image has one of these views in column "
                         f"'{spec.view_col}'")
    return df[keep.to_numpy()].reset_index(drop=True)


def training_data(cfg):
    """(spec, training table, cached file per row, label matrix, fold per row), all checked; only
    the rows of `data.views` when it is set."""
    spec = resolve_dataset(cfg.data)
    df = read_split(spec, "train", labels="required")
    fpath = folds_path(cfg, spec)
    if not fpath.is_file():
        raise CxrltError(f"{display_path(fpath)}: no folds yet; run {rerun_hint(cfg, '02_make_folds.py')}")
    folds = read_folds(fpath, spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
    df = view_rows(cfg, spec, df)
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


def current_full_assignment(cfg, spec=None) -> str:
    """The full-data fit's assignment for the training CSV as it is now (the recipe's views only)."""
    spec = spec or resolve_dataset(cfg.data)
    return full_assignment(view_rows(cfg, spec, read_split(spec, "train", labels="none"))[spec.id_col])


def current_assignment(cfg, spec=None) -> str:
    """The assignment hash of the folds file as it is now (no image-cache check: cheap)."""
    spec = spec or resolve_dataset(cfg.data)
    df = read_split(spec, "train", labels="none")
    fpath = folds_path(cfg, spec)
    if not fpath.is_file():
        raise CxrltError(f"{display_path(fpath)}: no folds yet; run {rerun_hint(cfg, '02_make_folds.py')}")
    folds = read_folds(fpath, spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
    df = view_rows(cfg, spec, df)
    return assignment_hash(df[spec.id_col], folds.loc[df[spec.id_col]].to_numpy())
