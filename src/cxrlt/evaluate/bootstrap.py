"""Paired bootstrap over patients: is B really better than A?

Each resample draws patients with replacement and keeps all their images (an image counts as many
times as its patient was drawn), so images of one patient, which are not independent, move
together. Every model is scored on the same resamples (paired), and the 95 % interval of the
difference in mAP (or any class subset's mAP, e.g. tail) says whether it is real: an interval
that contains 0 is "not distinguishable".

Fast: a resample is a weight per image, so each class's scores are sorted once and AP for a whole
block of resamples is read off weighted cumulative sums (sklearn's AP with sample weights, ties
grouped as in `precision_recall_curve`). A class without a positive in a resample has no AP there
and is left out of that resample's mean, as in the pipeline's metrics.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlt.errors import CxrltError

BLOCK = 4_000_000       # resamples x images per block (memory bound: ~32 MB per array)


def check_count(key: str, value) -> int:
    """A resample count or seed: a whole number >= 0 (one-line error naming the key)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or float(value) != int(value):
        raise CxrltError(f"{key}={value!r}: must be a whole number >= 0")
    return int(value)


def resample_weights(patients, n_boot: int, seed: int):
    """Yield blocks of (b, N) int32 image weights, n_boot rows in all: row r counts how often each
    image's patient was drawn in resample r. Seeded: same patients, n_boot and seed, same blocks."""
    codes, uniq = pd.factorize(pd.Series(patients).astype(str), sort=True)
    n_pat, rng = len(uniq), np.random.default_rng(seed)
    step = max(1, BLOCK // max(len(codes), 1))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        draws = rng.integers(0, n_pat, size=(b, n_pat)) + np.arange(b)[:, None] * n_pat
        counts = np.bincount(draws.ravel(), minlength=b * n_pat).reshape(b, n_pat).astype(np.int32)
        yield counts[:, codes]


def weighted_ap(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(b, C) average precision of every class under each row of image weights w (b, N); NaN where
    a resample holds no positive of the class."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, np.float64)
    out = np.full((len(w), y.shape[1]), np.nan)
    for c in range(y.shape[1]):
        if not y[:, c].any():
            continue
        order = np.argsort(-p[:, c], kind="stable")
        ps, pos = p[order, c], np.flatnonzero(y[order, c])               # sorted scores, positives' places
        ends = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]           # last row of each tie group
        at = np.unique(ends[np.searchsorted(ends, pos)])                 # ends of the groups holding positives
        ws = w[:, order]
        tot = np.cumsum(ws, axis=1)[:, at]                               # weighted images ranked up to there
        tp = np.cumsum(ws[:, pos], axis=1)[:, np.searchsorted(pos, at, side="right") - 1]
        gain = np.diff(tp, axis=1, prepend=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (gain * (tp / np.maximum(tot, 1))).sum(1) / tp[:, -1]
        out[:, c] = np.where(tp[:, -1] > 0, ap, np.nan)
    return out


def bootstrap_ap(y, preds: dict, patients, n_boot: int, seed: int) -> dict:
    """{name: (n_boot, C) per-class AP on each resample}, every prediction set on the same
    resamples (paired)."""
    blocks = {name: [] for name in preds}
    for w in resample_weights(patients, n_boot, seed):
        for name, p in preds.items():
            blocks[name].append(weighted_ap(y, p, w))
    return {name: np.concatenate(b) if b else np.empty((0, np.asarray(y).shape[1])) for name, b in blocks.items()}


def subset_map(ap: np.ndarray, cols=None) -> np.ndarray:
    """Per resample: the mean AP over `cols` (boolean or index mask; all classes when None), NaN
    where none of them has a positive."""
    a = ap if cols is None else ap[:, cols]
    count = np.isfinite(a).sum(1)
    return np.where(count > 0, np.nansum(a, 1) / np.maximum(count, 1), np.nan)


def interval(diff: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap differences (NaN resamples left out)."""
    d = diff[np.isfinite(diff)]
    if not len(d):
        return float("nan"), float("nan")
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def distinguishable(lo: float, hi: float):
    """True when the interval excludes 0, False when it contains it, None when unknown."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return bool(lo > 0 or hi < 0)
