"""The training split as every stage after the folds sees it: table, cached files, labels, folds.

Functions of (recipe, resolved dataset spec); a stage reaches them through its `Experiment`
(`data.experiment`), which reads the table once and keeps it.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from cxrlt.config import rerun_hint
from cxrlt.data.datasets import label_matrix, read_split
from cxrlt.data.folds import folds_path, read_folds
from cxrlt.data.images import Cache
from cxrlt.errors import CxrltError
from cxrlt.experiment import given_split
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


def training_data(cfg, spec):
    """(spec, training table, cached file per row, label matrix, fold per row), all checked; only
    the rows of `data.views` when it is set. folds.scheme=given: the training CSV's rows (fold -1,
    never held out) followed by the validation CSV's (fold 0, the held-out part)."""
    if given_split(cfg):
        df, fold_of = given_table(cfg, spec, labels="required")
        cache = Cache.from_config(cfg, spec.name)
        train = fold_of < 0
        files = (cache.require(df[spec.id_col][train], spec.train_csv, cfg)
                 + cache.require(df[spec.id_col][~train], spec.val_csv, cfg))
        return spec, df, files, label_matrix(spec, df), fold_of
    df = read_split(spec, "train", labels="required")
    fpath = folds_path(cfg, spec)
    if not fpath.is_file():
        raise CxrltError(f"{display_path(fpath)}: no folds yet; run {rerun_hint(cfg, '02_make_folds.py')}")
    folds = read_folds(fpath, spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
    df = view_rows(cfg, spec, df)
    files = Cache.from_config(cfg, spec.name).require(df[spec.id_col], spec.train_csv, cfg)
    return spec, df, files, label_matrix(spec, df), folds.loc[df[spec.id_col]].to_numpy()


def given_table(cfg, spec, labels: str = "required") -> tuple[pd.DataFrame, np.ndarray]:
    """folds.scheme=given: the training CSV's rows then the validation CSV's (the columns both
    have), and the fold of each row: -1 (trained on) or 0 (held out). An id in both CSVs is refused."""
    if spec.val_csv is None:
        raise CxrltError(f"folds.scheme=given needs a validation CSV: dataset preset '{spec.name}' has none "
                         f"(set data.val_csv)")
    train = view_rows(cfg, spec, read_split(spec, "train", labels=labels))
    val = view_rows(cfg, spec, read_split(spec, "val", labels=labels))
    both = set(train[spec.id_col]) & set(val[spec.id_col])
    if both:
        raise CxrltError(f"{display_path(spec.val_csv)}: {len(both)} ids are also in the training CSV "
                         f"{display_path(spec.train_csv)}, e.g. '{sorted(both)[0]}'; a held-out image must not be trained on")
    cols = [c for c in train.columns if c in val.columns]
    df = pd.concat([train[cols], val[cols]], ignore_index=True)
    return df, np.r_[np.full(len(train), -1), np.zeros(len(val), int)]


def oof_table(cfg, spec):
    """The labelled rows an experiment's oof.csv covers, in its order: the training CSV (the
    recipe's views) with K folds, the validation CSV with folds.scheme=given."""
    return view_rows(cfg, spec, read_split(spec, "val" if given_split(cfg) else "train", labels="required"))


def training_counts(cfg, spec) -> tuple[np.ndarray, int]:
    """Positives per class and images of the training CSV (the recipe's views): what head / medium /
    tail groups are made from, whatever the scheme."""
    train = view_rows(cfg, spec, read_split(spec, "train", labels="required"))
    return label_matrix(spec, train).sum(0), len(train)


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


def current_full_assignment(cfg, spec) -> str:
    """The full-data fit's assignment for the training CSV as it is now (the recipe's views only)."""
    return full_assignment(view_rows(cfg, spec, read_split(spec, "train", labels="none"))[spec.id_col])


def current_assignment(cfg, spec) -> str:
    """The assignment hash of the folds file as it is now (no image-cache check: cheap)."""
    if given_split(cfg):
        df, fold_of = given_table(cfg, spec, labels="none")
        return assignment_hash(df[spec.id_col], fold_of)
    df = read_split(spec, "train", labels="none")
    fpath = folds_path(cfg, spec)
    if not fpath.is_file():
        raise CxrltError(f"{display_path(fpath)}: no folds yet; run {rerun_hint(cfg, '02_make_folds.py')}")
    folds = read_folds(fpath, spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
    df = view_rows(cfg, spec, df)
    return assignment_hash(df[spec.id_col], folds.loc[df[spec.id_col]].to_numpy())


def given_summary(cfg, spec) -> dict:
    """folds.scheme=given (stage 02 makes no folds file): images per class in the training and
    validation CSVs, and the patients they share (the benchmark's splits share none)."""
    df, fold_of = given_table(cfg, spec, labels="required")
    y = label_matrix(spec, df)
    table = pd.DataFrame({"train": y[fold_of < 0].sum(0).astype(int), "val": y[fold_of == 0].sum(0).astype(int)},
                         index=list(spec.labels))
    pats = df[spec.patient_col].astype(str)
    shared = set(pats[fold_of < 0]) & set(pats[fold_of == 0])
    return dict(table=table, shared_patients=len(shared), n_train=int((fold_of < 0).sum()),
                n_val=int((fold_of == 0).sum()), val_csv=spec.val_csv)
