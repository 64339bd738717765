"""Paired bootstrap over patients: is B really better than A?

Each resample draws patients with replacement and keeps all their images (an image counts as many
times as its patient was drawn), so images of one patient, which are not independent, move
together. Every model is scored on the same resamples (paired), and the 95 % interval of the
difference in mAP (or any class subset's mAP, e.g. tail) says whether it is real: an interval
that contains 0 is "not distinguishable".

Fast, linear in the images: a resample is a count per patient. Each class's scores are sorted
once (per prediction set, not per block of resamples): the images then fall into buckets between
consecutive distinct positive scores, and a sparse (buckets x patients) matrix of image counts turns
a block of resamples' patient counts into the weight of every bucket with one sparse product. AP
is read off cumulative sums over the buckets (sklearn's AP with sample weights, ties grouped as in
`precision_recall_curve`; hand-written for speed, equality tested in tests/test_bootstrap.py). A
class without a positive in a resample has no AP there and is left out of that resample's mean, as
in the pipeline's metrics. The random draws are those of the first design (same generator, same
calls, same order), so every interval is what it was.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlt.errors import CxrltError

BLOCK = 4_000_000       # resamples x images per block of draws (kept: the block sizes fix the random draws)
F32_EXACT = 2 ** 24     # float32 holds every whole number below this: sums of weights below it are exact
WORK = 1_000_000        # resamples x groups (or patients) per block of arithmetic (~8 MB per array)


def check_count(key: str, value) -> int:
    """A resample count or seed: a whole number >= 0 (one-line error naming the key)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or float(value) != int(value):
        raise CxrltError(f"{key}={value!r}: must be a whole number >= 0")
    return int(value)


def patient_draws(patients, n_boot: int, seed: int):
    """(codes (N,) patient index of each image, yields blocks of (b, P) int32 patient counts), n_boot
    rows in all: row r counts how often each patient was drawn in resample r. The block size
    depends on the number of images, as it always has: the generator is called in the same blocks,
    so the draws (and every interval) are the same as before."""
    codes, uniq = pd.factorize(pd.Series(patients).astype(str), sort=True)
    n_pat, n_img = len(uniq), len(codes)

    def blocks():
        rng = np.random.default_rng(seed)
        step = max(1, BLOCK // max(n_img, 1))
        for start in range(0, n_boot, step):
            b = min(step, n_boot - start)
            draws = rng.integers(0, n_pat, size=(b, n_pat)) + np.arange(b)[:, None] * n_pat
            yield np.bincount(draws.ravel(), minlength=b * n_pat).reshape(b, n_pat).astype(np.int32)

    return codes, blocks()


def resample_weights(patients, n_boot: int, seed: int):
    """Yield blocks of (b, N) int32 image weights, n_boot rows in all: row r counts how often each
    image's patient was drawn in resample r. Seeded: same patients, n_boot and seed, same blocks."""
    codes, blocks = patient_draws(patients, n_boot, seed)
    for counts in blocks:
        yield counts[:, codes]


class _ClassOrder:
    """One class's scores sorted once, as what a weighted AP needs: the distinct scores of the
    positives (descending: the tie groups that hold a positive), a sparse (groups x units) count of
    the images entering at each group (scored at or above it, below the one before; a cumulative
    sum down the groups counts every image at or above), and of the positives in each group. A unit
    is whatever carries a weight: a patient, or an image."""

    def __init__(self, y: np.ndarray, p: np.ndarray, codes: np.ndarray, n_units: int, dtype=np.float32):
        from scipy.sparse import csr_matrix

        pos = y
        thr = np.unique(p[pos])[::-1]                             # descending distinct positive scores
        self.n = len(thr)
        # an image joins the count at the first group (from the top) whose score it reaches; below all: dropped
        g = len(thr) - np.searchsorted(thr[::-1], p, side="right")   # p >= thr[g], p < thr[g + 1]
        keep = g < len(thr)
        shape = (max(len(thr), 1), n_units)
        self.all = csr_matrix((np.ones(int(keep.sum()), dtype), (g[keep], codes[keep])), shape=shape)
        gp = len(thr) - 1 - np.searchsorted(thr[::-1], p[pos], side="left")   # a positive's own group
        self.pos = csr_matrix((np.ones(len(gp), dtype), (gp, codes[pos])), shape=shape)
        self.all.sum_duplicates()
        self.pos.sum_duplicates()

    def ap(self, w: np.ndarray, pairwise: np.ndarray | None = None) -> np.ndarray:
        """(b,) AP under unit weights w (units, b) (whole numbers; float32 below 2**24 keeps every
        sum exact); NaN where the weights hold no positive. Each term is the first design's
        (whole-number weights, the same divisions) and so is the sum over the groups: left to right,
        or pairwise for the `pairwise` columns (numpy's sum of a single-resample block), so the
        figures are the same to the last bit."""
        # (b, groups) C-ordered (numpy's cumsum runs fast along the contiguous axis), worked in place;
        # the whole-number sums stay in w's dtype (exact), the divisions are float64 as before
        tot = np.ascontiguousarray((self.all @ w).T)
        np.cumsum(tot, axis=1, out=tot)                                  # weighted images at or above each group
        gain = np.ascontiguousarray((self.pos @ w).T)                    # weighted positives in each group
        tp = np.cumsum(gain, axis=1)
        found = tp[:, -1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.maximum(tot, 1, out=tot)
            terms = np.divide(tp, tot, dtype=np.float64)
            np.multiply(gain, terms, out=terms, dtype=np.float64)
            lone = np.flatnonzero(pairwise) if pairwise is not None else ()
            alone = [terms[j].sum() for j in lone]                       # a contiguous row: numpy sums pairwise
            total = np.cumsum(terms, axis=1, out=terms)[:, -1].copy()   # a block: left to right
            total[lone] = alone
            ap = total / found
        return np.where(found > 0, ap, np.nan)


def _weighted_ap(y, p, codes, n_units: int, w: np.ndarray, pairwise: np.ndarray) -> np.ndarray:
    """(R, C) AP of every class under each row of `w` ((R, units) whole-number weights, e.g. patient
    counts; unit codes[i] carries image i); `pairwise` (R,) marks the rows the first design scored
    alone (a block of one resample), whose sum over the groups numpy made pairwise."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, np.float64)
    out = np.full((len(w), y.shape[1]), np.nan)
    if not len(w):
        return out
    # float32 keeps the sparse products exact while every sum of weights stays below 2**24
    per_unit, rows = np.bincount(codes, minlength=n_units).astype(np.float64), max(1, WORK // max(n_units, 1))
    cap = max(float(np.max(w[s:s + rows] @ per_unit)) for s in range(0, len(w), rows))
    dtype = np.float32 if cap < F32_EXACT else np.float64
    # every class sorted once; then each block of resamples is made float (units x b) once for all classes
    orders = {c: _ClassOrder(y[:, c], p[:, c], codes, n_units, dtype) for c in range(y.shape[1]) if y[:, c].any()}
    step = max(1, WORK // max(max((o.n for o in orders.values()), default=1), n_units, 1))
    for s in range(0, len(w) if orders else 0, step):
        chunk = np.ascontiguousarray(w[s:s + step].T, dtype=dtype)
        for c, order in orders.items():
            out[s:s + step, c] = order.ap(chunk, pairwise[s:s + step])
    return out


def weighted_ap(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(b, C) average precision of every class under each row of image weights w (b, N); NaN where
    a resample holds no positive of the class."""
    w = np.asarray(w)
    return _weighted_ap(y, p, np.arange(w.shape[1]), w.shape[1], w, np.full(len(w), len(w) == 1))


def bootstrap_ap(y, preds: dict, patients, n_boot: int, seed: int) -> dict:
    """{name: (n_boot, C) per-class AP on each resample}, every prediction set on the same
    resamples (paired). The patient counts are drawn once and kept compact (n_boot x patients);
    each class of each prediction set is sorted once."""
    codes, blocks = patient_draws(patients, n_boot, seed)
    counts = [b.astype(np.uint8) if b.max(initial=0) < 256 else b for b in blocks]
    pairwise = np.concatenate([np.full(len(b), len(b) == 1) for b in counts]) if counts else np.zeros(0, bool)
    n_pat = int(codes.max()) + 1 if len(codes) else 0
    counts = np.concatenate(counts) if counts else np.zeros((0, n_pat), np.int32)
    return {name: _weighted_ap(y, p, codes, n_pat, counts, pairwise) for name, p in preds.items()}


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
