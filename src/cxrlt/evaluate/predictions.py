"""Prediction CSVs (docs/design.md, "Prediction CSVs") and study-level aggregation.

A prediction CSV is the id column, then one probability per label in preset order, one row per
image in the order of the input CSV; `oof.csv` adds `fold`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, read_table, write_csv


def to_frame(ids, probs: np.ndarray, labels, id_col: str, fold=None) -> pd.DataFrame:
    df = pd.DataFrame(np.asarray(probs, np.float64), columns=list(labels))
    df.insert(0, id_col, list(ids))
    if fold is not None:
        df["fold"] = np.asarray(fold, np.int64)
    return df


def write_predictions(path: str | Path, ids, probs, labels, id_col: str, fold=None) -> Path:
    p = np.asarray(probs)
    if p.shape != (len(ids), len(labels)) or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise CxrltError(f"{display_path(path)}: predictions must be finite probabilities of shape "
                         f"({len(ids)}, {len(labels)})")
    return write_csv(path, to_frame(ids, p, labels, id_col, fold), float_format="%.8g")


def read_predictions(path: str | Path, labels, id_col: str, ids=None) -> pd.DataFrame:
    """Read and check a prediction CSV; with ids, also that it has exactly these ids in this order."""
    path = Path(path)
    if not path.is_file():
        raise CxrltError(f"{display_path(path)}: file not found")
    df = read_table(path, id_col)
    expected = [id_col, *labels]
    if list(df.columns[:len(expected)]) != expected:
        raise CxrltError(f"{display_path(path)}: columns must be {id_col} then the {len(labels)} labels in order")
    if ids is not None and list(df[id_col]) != list(ids):
        raise CxrltError(f"{display_path(path)}: ids differ from the expected ones or their order")
    return df


def view_weights(views, weights: dict, other: float) -> np.ndarray:
    w = pd.Series(views, dtype=object).map(lambda v: weights.get(str(v).strip().upper(), other) if isinstance(v, str) else other)
    return w.to_numpy(np.float64)


def aggregate_studies(probs: np.ndarray, studies, views, weights: dict, other: float) -> np.ndarray:
    """Every image of a study gets the view-weighted mean of the study's probabilities."""
    w = view_weights(views, {str(k).upper(): float(v) for k, v in weights.items()}, float(other))
    p = pd.DataFrame(np.asarray(probs, np.float64) * w[:, None])
    key = pd.Series(studies).astype(str).to_numpy()
    num = p.groupby(key).transform("sum").to_numpy()
    den = pd.Series(w).groupby(key).transform("sum").to_numpy()
    return num / den[:, None]


def normal_gating(probs: np.ndarray, normal: int, keep=(), alpha: float = 1.0) -> np.ndarray:
    """Normal gating (CXR-LT 2026 winner's post-processing): every finding's probability times
    (1 - p_normal) ** alpha, p_normal being column `normal`; that column and the columns in `keep`
    (labels that may co-occur with normal, e.g. Support Devices) are left unchanged."""
    p = np.asarray(probs, np.float64)
    out = p * (1.0 - p[:, [normal]]) ** float(alpha)
    cols = [normal, *keep]
    out[:, cols] = p[:, cols]
    return out


def route_rows(views, members: dict) -> np.ndarray:
    """Per image, the index (in `members` order) of the member that answers it: the specialist
    whose views contain the image's view, else the all-view member (`members`: name -> views or None)."""
    names = list(members)
    fallback = [i for i, m in enumerate(names) if members[m] is None]
    if len(fallback) != 1:
        raise CxrltError(f"blend.mode=route needs exactly one all-view member (data.views null); got "
                         f"{[names[i] for i in fallback] or 'none'}")
    by_view = {}
    for i, m in enumerate(names):
        for v in members[m] or []:
            if v in by_view:
                raise CxrltError(f"blend.mode=route: view {v} is in members '{names[by_view[v]]}' and '{m}'")
            by_view[v] = i
    return np.array([by_view.get(str(v).strip().upper(), fallback[0]) if isinstance(v, str) else fallback[0]
                     for v in views])
