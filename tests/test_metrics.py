import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxrlt.evaluate.predictions import aggregate_studies
from cxrlt.metrics import evaluate, mean_ap

NAMES = ["a", "b", "c", "d"]


def random_case(seed=0, n=200):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < [0.3, 0.05, 0.0, 0.6]).astype(int)   # class c has no positive
    p = np.clip(y * 0.3 + rng.random((n, 4)) * 0.7, 0, 1)
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn_and_skip_empty_classes(seed):
    y, p = random_case(seed)
    r = evaluate(y, p, NAMES, train_positives=np.array([300, 30, 5, 600]), n_train=1000)
    keep = [0, 1, 3]
    assert r["mAP"] == pytest.approx(np.mean([average_precision_score(y[:, c], p[:, c]) for c in keep]))
    assert r["mAUC"] == pytest.approx(np.mean([roc_auc_score(y[:, c], p[:, c]) for c in keep]))
    assert r["mF1"] == pytest.approx(np.mean([f1_score(y[:, c], p[:, c] >= 0.5) for c in keep]))
    assert r["left_out"] == ["c"] and r["per_class"]["c"]["AP"] is None
    assert mean_ap(y, p, NAMES)["mAP"] == pytest.approx(r["mAP"])


def test_groups_by_training_prevalence():
    y, p = random_case(3)
    r = evaluate(y, p, NAMES, train_positives=np.array([300, 30, 5, 600]), n_train=1000)
    ap = {n: r["per_class"][n]["AP"] for n in NAMES}
    assert [r["per_class"][n]["group"] for n in NAMES] == ["head", "medium", "tail", "head"]
    assert r["groups"]["head"] == pytest.approx((ap["a"] + ap["d"]) / 2)
    assert r["groups"]["medium"] == pytest.approx(ap["b"])
    assert np.isnan(r["groups"]["tail"])            # its only class has no positive here


def test_crafted_perfect_and_tuned_thresholds():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.1, 0.4], [0.8, 0.45], [0.2, 0.1]])
    r = evaluate(y, p, ["x", "y"], np.array([50, 50]), 100, thresholds=[0.5, 0.3])
    assert r["mAP"] == 1.0 and r["mAUC"] == 1.0
    assert r["per_class"]["y"]["F1"] == 0.0 and r["mF1_tuned"] == 1.0


def test_study_aggregation_is_view_weighted_and_shared():
    p = np.array([[0.8, 0.0], [0.2, 1.0], [0.5, 0.5], [0.1, 0.3], [0.9, 0.9]])
    studies = [1, 1, 2, 3, 3]
    views = ["PA", "LATERAL", "AP", "AP", "SWIMMERS"]
    out = aggregate_studies(p, studies, views, {"PA": 7, "AP": 7, "LATERAL": 3}, other=5)
    assert np.allclose(out[0], [(7 * 0.8 + 3 * 0.2) / 10, (7 * 0 + 3 * 1) / 10]) and np.allclose(out[0], out[1])
    assert np.allclose(out[2], p[2])                                     # a single-image study is unchanged
    assert np.allclose(out[3], (7 * p[3] + 5 * p[4]) / 12) and np.allclose(out[3], out[4])


def test_fast_average_precision_equals_sklearn():
    """metrics.average_precision (one sort per class, hand-written for speed) is scikit-learn's
    average_precision_score to 1e-12: random scores, heavy ties, everything tied, one positive,
    every image positive; a class without a positive is NaN (left out), as before."""
    from cxrlt.metrics import average_precision, map_score, per_class

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 300))
        y = (rng.random(n) < rng.choice([0.01, 0.1, 0.5, 0.9, 1.0])).astype(int)
        if trial % 3 == 0:
            p = np.round(rng.random(n) * int(rng.integers(1, 12))) / 7            # ties
        elif trial % 3 == 1:
            p = rng.random(n) + 0.3 * y
        else:
            p = np.full(n, 0.5) if trial % 2 else rng.integers(0, 3, n).astype(float)
        if y.sum() == 0:
            assert np.isnan(average_precision(y, p))
            continue
        assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert average_precision(y.astype(np.float32), p.astype(np.float32)) == pytest.approx(
            average_precision_score(y, p.astype(np.float32)), abs=1e-12)
    y, p = random_case(3, n=2000)
    ap = per_class(y, p)
    assert np.isnan(ap[2]) and ap[[0, 1, 3]] == pytest.approx(
        [average_precision_score(y[:, c], p[:, c]) for c in (0, 1, 3)], abs=1e-12)
    assert map_score(y, p) == pytest.approx(np.mean(ap[[0, 1, 3]]), abs=1e-12)
    assert map_score(np.zeros((5, 2)), np.ones((5, 2)), empty=0.0) == 0.0
    with pytest.raises(ValueError):                       # not finite: scikit-learn's own error, as before
        average_precision(np.array([0, 1]), np.array([0.1, np.nan]))


def test_fast_f1_equals_sklearn_to_the_bit():
    """metrics.f1_per_class counts (hand-written for speed) and gives scikit-learn's f1_score exactly:
    per-class thresholds, one threshold, boolean hits, classes never predicted, no positive (NaN)."""
    from cxrlt.metrics import f1_per_class

    rng = np.random.default_rng(4)
    y = (rng.random((500, 6)) < [0.3, 0.05, 0.0, 0.6, 0.01, 1.0]).astype(int)
    p = np.round(np.clip(y * 0.3 + rng.random((500, 6)) * 0.7, 0, 1), 2)
    for t in (0.5, rng.random(6), np.array([0.5, 2.0, 0.1, 0.0, 0.99, 0.7])):
        got = f1_per_class(y, p, t)
        tt = np.broadcast_to(t, (6,))
        for c in range(6):
            if y[:, c].sum() == 0:
                assert np.isnan(got[c])
            else:
                assert got[c] == f1_score(y[:, c], p[:, c] >= tt[c], zero_division=0.0)
    hits = p >= 0.4
    assert np.array_equal(f1_per_class(y, hits, 0.5),
                          [f1_score(y[:, c], hits[:, c], zero_division=0.0) if y[:, c].any() else np.nan
                           for c in range(6)], equal_nan=True)


def test_fast_auc_equals_sklearn():
    from cxrlt.metrics import roc_auc

    rng = np.random.default_rng(6)
    for trial in range(150):
        n = int(rng.integers(2, 400))
        y = (rng.random(n) < rng.choice([0.01, 0.2, 0.5, 0.95])).astype(int)
        y[0], y[-1] = 0, 1
        p = rng.random(n) + 0.2 * y
        if trial % 2:
            p = np.round(p, 1)                                          # ties
        assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert roc_auc(y.astype(np.float32), p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
