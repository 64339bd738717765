"""Studies (the images of one examination) for models that read a study at once: which rows form
each study, the kind of each view, and the study's labels (the union over its images: CXR-LT
labels are per study)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlt.errors import CxrltError


def study_groups(df: pd.DataFrame, spec) -> list[np.ndarray]:
    """Row positions of each study, studies in order of first appearance (images without a study id
    last, one study each), rows in table order; a one-line error when the preset has no study column."""
    if not spec.study_col or spec.study_col not in df.columns:
        raise CxrltError(f"dataset preset '{spec.name}' has no study column (data.study_col): a study-level model "
                         f"needs one")
    codes, uniq = pd.factorize(df[spec.study_col], sort=False)
    missing = np.flatnonzero(codes < 0)            # no study id: each such image is a study of its own
    codes[missing] = len(uniq) + np.arange(len(missing))
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


def view_vocabulary(views) -> list[str]:
    """The view kinds seen in training (upper-cased, sorted); anything else is kind 0 (unknown)."""
    return sorted({str(v).strip().upper() for v in views if isinstance(v, str) and v.strip()})


def view_kinds(views, vocab: list[str]) -> np.ndarray:
    """1 + position in `vocab` per image, 0 for an unknown or missing view."""
    index = {v: i + 1 for i, v in enumerate(vocab)}
    return np.array([index.get(str(v).strip().upper(), 0) if isinstance(v, str) else 0 for v in views], np.int64)


def study_labels(y: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """(n_studies, C): the union of the labels of a study's images."""
    return np.stack([y[g].max(0) for g in groups]) if groups else np.zeros((0, y.shape[1]), y.dtype)


def pick_views(rows: np.ndarray, max_views: int, rng=None) -> np.ndarray:
    """At most max_views rows of a study: a random subset in training (rng given), the first ones in
    table order at prediction (the rest receive the study's prediction without being read)."""
    if len(rows) <= max_views:
        return rows
    if rng is None:
        return rows[:max_views]
    return np.sort(rng.choice(rows, max_views, replace=False))
