"""Ranking metrics of the leaderboards: per-class scikit-learn scores averaged over classes.

A class with no positive (or no negative, for AUC) in the scored set has no defined score: it is
left out of the mean and named in `skipped`.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def per_class(y: np.ndarray, p: np.ndarray, score=average_precision_score, need_negatives: bool = False):
    """Per-class scores (NaN where undefined)."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        pos = y[:, c].sum()
        if pos == 0 or (need_negatives and pos == len(y)):
            continue
        out[c] = score(y[:, c], p[:, c])
    return out


def mean_ap(y, p, names=None) -> dict:
    ap = per_class(y, p)
    auc = per_class(y, p, roc_auc_score, need_negatives=True)
    names = list(names) if names is not None else [str(i) for i in range(len(ap))]
    return dict(mAP=float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
                mAUC=float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
                ap=dict(zip(names, ap.tolist())),
                skipped=[n for n, a in zip(names, ap) if not np.isfinite(a)])
