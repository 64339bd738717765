"""The paired bootstrap over patients: AP under resampling weights, patients moving together, seeds,
and intervals that shrink with more patients."""
import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cxrlt.errors import CxrltError
from cxrlt.evaluate.bootstrap import (
    bootstrap_ap,
    check_count,
    distinguishable,
    interval,
    resample_weights,
    subset_map,
    weighted_ap,
)


def data(n_patients, per_patient=3, classes=5, seed=0, quality=(0.6, 0.4)):
    """Two models scoring the same images; images of a patient share labels and near-equal scores."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), per_patient)
    y_pat = (rng.random((n_patients, classes)) < 0.25).astype(int)
    y = y_pat[patients]
    noise = {m: rng.normal(0, 1, y_pat.shape)[patients] + rng.normal(0, 0.1, y.shape) for m in "ab"}
    return y, {m: y * q + noise[m] * (1 - q) for m, q in zip("ab", quality)}, patients


def test_weighted_ap_equals_sklearn_with_repeated_images_and_ties():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 4)) < 0.1).astype(int)
    p = np.round(rng.random((300, 4)) + 0.3 * y, 1)                     # many ties
    w = next(resample_weights(rng.integers(0, 120, 300), 6, seed=2))
    ap = weighted_ap(y, p, w)
    for r in range(6):
        for c in range(4):
            if (y[:, c] * w[r]).sum() == 0:
                assert np.isnan(ap[r, c])
                continue
            want = average_precision_score(np.repeat(y[:, c], w[r]), np.repeat(p[:, c], w[r]))
            assert ap[r, c] == pytest.approx(want, abs=1e-12)
            assert ap[r, c] == pytest.approx(average_precision_score(y[:, c], p[:, c], sample_weight=w[r]), abs=1e-12)
    assert weighted_ap(y, p, np.ones((1, 300), np.int32))[0] == pytest.approx(
        [average_precision_score(y[:, c], p[:, c]) for c in range(4)], abs=1e-12)


def test_resamples_move_a_patients_images_together():
    patients = np.array(["p3", "p1", "p3", "p2", "p1", "p3", "p4"])    # images of four patients, interleaved
    w = np.concatenate(list(resample_weights(patients, 500, seed=0)))
    assert w.shape == (500, 7)
    for pid in set(patients):
        cols = w[:, patients == pid]
        assert (cols == cols[:, :1]).all()                           # every image of a patient: same count
    per_patient = np.stack([w[:, np.flatnonzero(patients == pid)[0]] for pid in sorted(set(patients))], 1)
    assert (per_patient.sum(1) == 4).all()                           # 4 patients drawn per resample
    assert 0.2 < (per_patient == 0).mean() < 0.45                    # about (3/4)^4 = 0.32 left out


def test_patients_not_images_are_the_unit():
    """Ten near-identical images per patient: resampling images pretends to have 10x the evidence,
    resampling patients does not, so its interval is wider."""
    y, preds, patients = data(80, per_patient=10, seed=3)
    widths = {}
    for unit, groups in (("patient", patients), ("image", np.arange(len(patients)))):
        ap = bootstrap_ap(y, preds, groups, 400, seed=1)
        lo, hi = interval(subset_map(ap["b"]) - subset_map(ap["a"]))
        widths[unit] = hi - lo
    assert widths["patient"] > 2 * widths["image"]


def test_seeded_reproducible_and_paired():
    y, preds, patients = data(100)
    a = bootstrap_ap(y, preds, patients, 300, seed=5)
    b = bootstrap_ap(y, preds, patients, 300, seed=5)
    c = bootstrap_ap(y, preds, patients, 300, seed=6)
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in "ab")
    assert not np.array_equal(a["a"], c["a"], equal_nan=True)
    same = bootstrap_ap(y, {"x": preds["a"], "y": preds["a"]}, patients, 300, seed=5)   # paired: identical models
    lo, hi = interval(subset_map(same["y"]) - subset_map(same["x"]))
    assert lo == hi == 0 and distinguishable(lo, hi) is False
    assert np.array_equal(same["x"], a["a"], equal_nan=True)          # the same resamples whatever else is scored


def test_interval_shrinks_as_patients_grow():
    widths = []
    for n in (40, 160, 640):
        y, preds, patients = data(n, seed=n)
        ap = bootstrap_ap(y, preds, patients, 400, seed=0)
        lo, hi = interval(subset_map(ap["a"]) - subset_map(ap["b"]))
        widths.append(hi - lo)
        if n == 640:
            assert lo > 0 and distinguishable(lo, hi)                 # a clearly better model
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] > 2.5 * widths[2]                                # ~ 1 / sqrt(n): 4x fewer would be exact


def test_subset_means_and_interval_edges():
    ap = np.array([[0.5, np.nan, 0.1], [0.7, 0.2, np.nan]])
    assert subset_map(ap).tolist() == pytest.approx([0.3, 0.45])
    assert np.isnan(subset_map(ap, np.array([False, False, True]))[1])
    assert np.isnan(interval(np.array([np.nan, np.nan]))[0]) and distinguishable(np.nan, 1.0) is None
    assert check_count("compare.bootstrap", 1000.0) == 1000
    for bad in (-1, 2.5, "many", True):
        with pytest.raises(CxrltError, match=r"^compare\.bootstrap=.*: must be a whole number >= 0$"):
            check_count("compare.bootstrap", bad)


def test_demo_sized_bootstrap_takes_seconds():
    """3000 images x 26 classes, 1000 resamples, one model: seconds, not minutes (measured 1-2 s)."""
    rng = np.random.default_rng(0)
    y = (rng.random((3000, 26)) < np.geomspace(0.3, 0.003, 26)).astype(int)
    p = np.clip(0.3 * y + rng.random(y.shape), 0, 1)
    t = time.perf_counter()
    ap = bootstrap_ap(y, {"m": p}, rng.integers(0, 1300, 3000), 1000, seed=0)["m"]
    assert ap.shape == (1000, 26) and time.perf_counter() - t < 30


# ----------------------------------------------------------------------------- the first design, kept as the reference
def _reference_bootstrap(y, preds, patients, n_boot, seed, block):
    """The bootstrap as first written (row weights gathered per block, every class re-sorted per
    block): the redesign must give the same figures to the last bit, from the same draws."""
    import pandas as pd

    codes, uniq = pd.factorize(pd.Series(patients).astype(str), sort=True)
    n_pat, rng = len(uniq), np.random.default_rng(seed)
    step = max(1, block // max(len(codes), 1))
    out = {name: [] for name in preds}
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        draws = rng.integers(0, n_pat, size=(b, n_pat)) + np.arange(b)[:, None] * n_pat
        w = np.bincount(draws.ravel(), minlength=b * n_pat).reshape(b, n_pat).astype(np.int32)[:, codes]
        for name, p in preds.items():
            yb, p = np.asarray(y).astype(bool), np.asarray(p, np.float64)
            ap_ = np.full((len(w), yb.shape[1]), np.nan)
            for c in range(yb.shape[1]):
                if not yb[:, c].any():
                    continue
                order = np.argsort(-p[:, c], kind="stable")
                ps, pos = p[order, c], np.flatnonzero(yb[order, c])
                ends = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
                at = np.unique(ends[np.searchsorted(ends, pos)])
                ws = w[:, order]
                tot = np.cumsum(ws, axis=1)[:, at]
                tp = np.cumsum(ws[:, pos], axis=1)[:, np.searchsorted(pos, at, side="right") - 1]
                gain = np.diff(tp, axis=1, prepend=0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    a = (gain * (tp / np.maximum(tot, 1))).sum(1) / tp[:, -1]
                ap_[:, c] = np.where(tp[:, -1] > 0, a, np.nan)
            out[name].append(ap_)
    return {name: np.concatenate(b) for name, b in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_is_the_first_design_to_the_last_bit(seed, monkeypatch):
    """Same draws (same generator, calls and order), same figures bit for bit: ties, a class
    without a positive, a class with one positive, a class all positive, string patients, several
    blocks of draws and several blocks of arithmetic."""
    import cxrlt.evaluate.bootstrap as bs

    rng = np.random.default_rng(seed)
    n, classes = 700, 7
    patients = np.array([f"p{i}" for i in rng.integers(0, 260, n)])
    y = (rng.random((n, classes)) < [0.3, 0.1, 0.02, 0.005, 0.0, 1.0, 0.5]).astype(int)
    y[:, 3] = 0
    y[rng.integers(0, n), 3] = 1                                            # exactly one positive
    preds = {"a": np.clip(0.3 * y + rng.random(y.shape), 0, 1),
             "b": np.round(0.2 * y + rng.random(y.shape), 1),               # many ties
             "c": np.zeros(y.shape)}                                        # everything tied
    # one block of draws; blocks of 7 and a last block of one; blocks of one (numpy summed a lone
    # resample's terms pairwise, a block's left to right: both kept)
    for block, work, f32 in ((bs.BLOCK, bs.WORK, bs.F32_EXACT), (5_000, 3_000, bs.F32_EXACT), (700, 1_000_000, 0)):
        monkeypatch.setattr(bs, "BLOCK", block)
        monkeypatch.setattr(bs, "WORK", work)
        monkeypatch.setattr(bs, "F32_EXACT", f32)                           # 0: the float64 path
        got = bootstrap_ap(y, preds, patients, 50, seed=seed)
        want = _reference_bootstrap(y, preds, patients, 50, seed, block)
        for k in preds:
            assert got[k].shape == (50, classes)
            assert np.array_equal(got[k], want[k], equal_nan=True), k
        assert np.isnan(got["a"][:, 4]).all() and (got["a"][:, 5] == 1).all()


def test_bootstrap_matches_sklearn_on_explicit_resamples():
    """Each resample's AP is scikit-learn's on the resampled images (a patient's images repeated
    as often as the patient was drawn)."""
    import pandas as pd

    rng = np.random.default_rng(7)
    patients = rng.integers(0, 90, 400)
    y = (rng.random((400, 3)) < [0.2, 0.05, 0.5]).astype(int)
    p = np.round(rng.random((400, 3)) + 0.4 * y, 2)
    ap = bootstrap_ap(y, {"m": p}, patients, 20, seed=3)["m"]
    codes, uniq = pd.factorize(pd.Series(patients).astype(str), sort=True)
    rng2 = np.random.default_rng(3)
    draws = rng2.integers(0, len(uniq), size=(20, len(uniq)))                # one block at this size
    for r in range(20):
        rows = np.concatenate([np.flatnonzero(codes == d) for d in draws[r]])
        for c in range(3):
            if y[rows, c].sum() == 0:
                assert np.isnan(ap[r, c])
            else:
                assert ap[r, c] == pytest.approx(average_precision_score(y[rows, c], p[rows, c]), abs=1e-12)
