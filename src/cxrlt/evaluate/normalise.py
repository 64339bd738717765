"""Fold normalisation before pooling (`predict.oof_normalise`): put every fold model's scores on one
scale, so that pooling the out-of-fold predictions into one ranking does not mix scales.

Each fold model k gets, per class, a monotone map fitted on its own out-of-fold scores only (never
on labels, so the OOF stays honest):

- `rank`: the mid-rank empirical distribution of the model's OOF scores, linearly interpolated
  between them (and to 0 and 1 at the ends): an OOF score becomes its quantile within its fold.
- `logit_standardise`: logit(p) standardised with the model's OOF mean and standard deviation, then
  put back on the folds' average logit scale (mean of the folds' means and standard deviations),
  through a sigmoid: still probability-like, class priors kept.

The same map of model k is applied to its test and development predictions before they are
averaged over folds, so a threshold fitted on the normalised OOF means the same on test. Both maps
are strictly increasing, so each fold's own AP (and the per-fold figures) are unchanged.
"""
from __future__ import annotations

import numpy as np

from cxrlt.choices import OOF_NORMALISE as METHODS
from cxrlt.errors import CxrltError

_EPS = 1e-7


def check_method(method) -> str:
    if method not in METHODS:
        raise CxrltError(f"predict.oof_normalise must be one of {', '.join(METHODS)}, not '{method}'")
    return method


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class FoldNormaliser:
    """Per fold model and class, a monotone map fitted on that model's OOF scores (N, C) and the
    fold of each row; `oof()` gives the normalised OOF, `apply(p, k)` maps model k's other scores."""

    def __init__(self, method: str, scores: np.ndarray | None, folds: np.ndarray | None):
        self.method = check_method(method)
        self.params = {}
        if scores is None:      # filled by `load`
            return
        self.scores = np.asarray(scores, np.float64)
        self.folds = np.asarray(folds)
        for k in np.unique(self.folds):
            s = self.scores[self.folds == k]
            if method == "rank":
                self.params[k] = [self._ecdf(s[:, c]) for c in range(s.shape[1])]
            elif method == "logit_standardise":
                z = _logit(s)
                sd = z.std(0)
                self.params[k] = (z.mean(0), np.where(sd > 0, sd, 1.0))
        if method == "logit_standardise":
            self.ref = (np.mean([m for m, _ in self.params.values()], 0), np.mean([s for _, s in self.params.values()], 0))

    @staticmethod
    def _ecdf(s: np.ndarray):
        """Knots (x, q) of the mid-rank empirical distribution of one class's scores."""
        u, counts = np.unique(s, return_counts=True)
        q = (np.cumsum(counts) - counts / 2) / len(s)
        if u[0] > 0:
            u, q = np.r_[0.0, u], np.r_[0.0, q]
        if u[-1] < 1:
            u, q = np.r_[u, 1.0], np.r_[q, 1.0]
        return u, q

    def apply(self, p: np.ndarray, fold) -> np.ndarray:
        """Model `fold`'s scores (n, C) mapped onto the common scale."""
        p = np.asarray(p, np.float64)
        if self.method == "none":
            return p.copy()
        if self.method == "rank":
            return np.column_stack([np.interp(p[:, c], *self.params[fold][c]) for c in range(p.shape[1])])
        mu, sd = self.params[fold]
        z = (_logit(p) - mu) / sd * self.ref[1] + self.ref[0]
        return 1 / (1 + np.exp(-z))

    def oof(self) -> np.ndarray:
        """The normalised OOF: each fold's rows through its own model's map."""
        out = self.scores.copy()
        for k in self.params:
            rows = self.folds == k
            out[rows] = self.apply(self.scores[rows], k)
        return out

    def save(self, path) -> None:
        """The fitted maps (not the OOF scores) to an .npz, atomically."""
        from cxrlt.fileio import write_atomic

        arrays = {"method": np.array(self.method)}
        for k, prm in self.params.items():
            if self.method == "rank":
                for c, (u, q) in enumerate(prm):
                    arrays[f"rank/{int(k)}/{c}/x"], arrays[f"rank/{int(k)}/{c}/q"] = u, q
            else:
                arrays[f"logit/{int(k)}/mean"], arrays[f"logit/{int(k)}/sd"] = prm
        if self.method == "logit_standardise":
            arrays["ref/mean"], arrays["ref/sd"] = self.ref

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        write_atomic(path, write)

    @classmethod
    def load(cls, path) -> "FoldNormaliser":
        """The maps `save` wrote; a missing or unreadable file is a one-line CxrltError."""
        from cxrlt.fileio import display_path

        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            self = cls(str(arrays.pop("method")), None, None)
            if self.method == "logit_standardise":
                self.ref = (arrays.pop("ref/mean"), arrays.pop("ref/sd"))
            for key in sorted(arrays):
                kind, k, *rest = key.split("/")
                k = int(k)
                if kind == "rank":
                    c, part = int(rest[0]), rest[1]
                    cols = self.params.setdefault(k, {})
                    cols.setdefault(c, [None, None])[0 if part == "x" else 1] = arrays[key]
                else:
                    self.params[k] = (arrays[f"logit/{k}/mean"], arrays[f"logit/{k}/sd"])
            if self.method == "rank":
                self.params = {k: [tuple(v[c]) for c in sorted(v)] for k, v in self.params.items()}
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise CxrltError(f"{display_path(path)}: not a fold normaliser written by stage 04 "
                             f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); rerun "
                             f"src/04_predict.py --force") from None
        return self
