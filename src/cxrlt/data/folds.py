"""Patient-grouped multilabel-stratified K folds (docs/design.md, "Folds").

iterative-stratification has no grouped splitter, so patients are stratified on the union of
their images' labels and each image inherits its patient's fold.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlt.data.datasets import DatasetSpec
from cxrlt.errors import CxrltError


def make_folds(df: pd.DataFrame, spec: DatasetSpec, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """DataFrame [id, fold] in the row order of df."""
    labels = [*spec.labels, *spec.holdout_labels]   # held-out labels spread too: stage 04 scores them on OOF
    patients = df.groupby(spec.patient_col, sort=True)[labels].max()
    if len(patients) < 2 * k:
        raise CxrltError(f"folds.k={k}: the training CSV has only {len(patients)} patients; each fold needs at "
                         f"least 2 (folds.k <= {len(patients) // 2})")
    fold_of_patient = np.empty(len(patients), np.int64)
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold   # here: it imports scikit-learn (slow start-up)

    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(splitter.split(np.zeros((len(patients), 1)), patients.to_numpy())):
        fold_of_patient[held] = f
    # Per-patient image-level counts (positives per class + images): what the folds should balance.
    counts = df.groupby(spec.patient_col, sort=True)[labels].sum()
    counts["_images"] = df.groupby(spec.patient_col, sort=True).size()
    fold_of_patient = refine_balance(counts.to_numpy(np.float64), fold_of_patient, k, seed)
    fold = pd.Series(fold_of_patient, index=patients.index)
    return pd.DataFrame({spec.id_col: df[spec.id_col].to_numpy(),
                         "fold": fold.loc[df[spec.patient_col]].to_numpy()})


def refine_balance(counts: np.ndarray, fold: np.ndarray, k: int, seed: int, max_passes: int = 30) -> np.ndarray:
    """Move whole patients between folds while that lowers the image-level imbalance.

    Stratifying patients on label unions balances patients, not images: a patient with six films
    counts six times. iterative-stratification cannot weight samples, so this local search
    (hand-written for that reason) takes its split as the start and greedily moves single patients,
    minimising sum over columns of (fold total - even share)^2 / even share; the last column
    (image count) keeps the folds the same size. Deterministic for a seed.
    """
    fold = fold.copy()
    even = counts.sum(0) / k
    w = 1.0 / np.maximum(even, 1.0)
    w[-1] *= 4.0  # fold sizes matter more than any single class
    totals = np.stack([counts[fold == f].sum(0) for f in range(k)])
    rng = np.random.default_rng(seed)
    for _ in range(max_passes):
        moved = 0
        for p in rng.permutation(len(counts)):
            a, x = fold[p], counts[p]
            if not x.any():
                continue
            # cost change of moving p from a to each fold b
            gain_a = ((totals[a] - x - even) ** 2 - (totals[a] - even) ** 2) @ w
            delta = ((totals + x - even) ** 2 - (totals - even) ** 2) @ w + gain_a
            delta[a] = 0.0
            b = int(np.argmin(delta))
            if delta[b] < -1e-9:
                totals[a] -= x
                totals[b] += x
                fold[p] = b
                moved += 1
        if moved == 0:
            break
    return fold


def positives_per_fold(df: pd.DataFrame, folds: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Image-level positives: one row per class, one column per fold."""
    merged = df[[spec.id_col, *spec.labels]].merge(folds, on=spec.id_col, validate="one_to_one")
    return merged.groupby("fold")[list(spec.labels)].sum().T


def imbalance(table: pd.DataFrame) -> pd.DataFrame:
    """Per class: the even share, the largest |fold count - even|, and the allowed 1 + 10 % of even."""
    even = table.sum(axis=1) / table.shape[1]
    dev = table.sub(even, axis=0).abs().max(axis=1)
    out = pd.DataFrame({"even": even, "max_dev": dev, "allowed": 1 + 0.1 * even})
    out["ratio"] = out.max_dev / out.allowed
    return out


def folds_path(cfg, spec: DatasetSpec):
    from cxrlt.fileio import project_path

    return project_path(cfg.folds.dir) / f"{spec.name}_folds.csv"


def read_folds(path, spec: DatasetSpec, df: pd.DataFrame | None = None, k: int | None = None) -> pd.DataFrame:
    """Read a folds CSV; check it covers exactly df's ids and has folds 0..k-1 (else rebuild is needed)."""
    from cxrlt.fileio import display_path, read_table

    folds = read_table(path, spec.id_col)
    if list(folds.columns) != [spec.id_col, "fold"]:
        raise CxrltError(f"{display_path(path)}: expected columns '{spec.id_col}', 'fold'")
    if df is not None and set(folds[spec.id_col]) != set(df[spec.id_col]):
        raise CxrltError(f"{display_path(path)}: its ids differ from the training CSV's; "
                         f"rebuild with src/02_make_folds.py --force")
    present = sorted(int(f) for f in folds.fold.unique())
    if k is not None and present != list(range(k)):
        raise CxrltError(f"{display_path(path)}: has folds {present}, the recipe says folds.k={k}; "
                         f"rebuild with src/02_make_folds.py --force")
    return folds
