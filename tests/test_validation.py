"""Local validation: per-fold figures, the drift warning, fold normalisation, figures by view, and the
development set kept out of every fit."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import cfg_at
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxrlt.data.datasets import resolve_dataset
from cxrlt.data.labels import LABELS_2023
from cxrlt.ensemble.blend import blend_experiment
from cxrlt.ensemble.thresholds import tune_thresholds
from cxrlt.errors import CxrltError
from cxrlt.evaluate.normalise import FoldNormaliser, check_method
from cxrlt.evaluate.validation import DRIFT_MARGIN, best_epochs, drift_check, figure_lines, fold_summary, view_figures, view_groups
from cxrlt.metrics import evaluate, map_score
from cxrlt.stage import seal

NAMES = [f"c{i}" for i in range(6)]


def scored(n, seed, prevalence=(0.4, 0.3, 0.2, 0.15, 0.1, 0.05)):
    """Labels and calibrated-looking scores: sigmoid(2 y - 1 + noise)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(prevalence))) < np.array(prevalence)).astype(int)
    return y, 1 / (1 + np.exp(-(2 * y - 1.5 + rng.normal(0, 1.2, y.shape))))


def sklearn_fold(y, p):
    has = [c for c in range(y.shape[1]) if y[:, c].sum() > 0]
    return dict(mAP=np.mean([average_precision_score(y[:, c], p[:, c]) for c in has]),
                mAUC=np.mean([roc_auc_score(y[:, c], p[:, c]) for c in has if y[:, c].sum() < len(y)]),
                mF1=np.mean([f1_score(y[:, c], p[:, c] >= 0.5) for c in has]))


def test_per_fold_means_equal_sklearn_per_fold():
    y, p = scored(900, 0)
    folds = np.arange(900) % 4
    pos = y.sum(0)
    r = fold_summary(y, p, folds, NAMES, pos, len(y))
    want = {k: sklearn_fold(y[folds == k], p[folds == k]) for k in range(4)}
    for m in ("mAP", "mAUC", "mF1"):
        per = [want[k][m] for k in range(4)]
        assert [r["per_fold"][k][m] for k in range(4)] == pytest.approx(per, abs=1e-12)
        assert r["mean"][m] == pytest.approx(np.mean(per), abs=1e-12)
        assert r["std"][m] == pytest.approx(np.std(per, ddof=1), abs=1e-12)
    heads = [c for c in range(6) if pos[c] / len(y) > 0.1]
    assert r["mean"]["head"] == pytest.approx(
        np.mean([np.mean([average_precision_score(y[folds == k, c], p[folds == k, c]) for c in heads]) for k in range(4)]))
    assert [r["per_fold"][k]["n_images"] for k in range(4)] == [225] * 4


def drifted(shift: bool):
    """The issue's case: fold 1 is fold 0 (same images and labels) with scores x 0.5 + 0.4, or,
    calibrated, the same scores."""
    y0, p0 = scored(400, 1)
    y = np.vstack([y0, y0])
    p = np.vstack([p0, p0 * 0.5 + 0.4 if shift else p0])
    return y, p, np.repeat([0, 1], 400)


def test_drift_warning_fires_on_a_rescaled_fold_and_not_on_a_calibrated_one(tmp_path):
    for k, epoch in ((0, 7), (1, 3)):
        (tmp_path / f"fold{k}").mkdir()
        (tmp_path / f"fold{k}" / "done.json").write_text(json.dumps({"best_epoch": epoch}))
    from cxrlt.evaluate.validation import best_epochs

    epochs = best_epochs(tmp_path, [0, 1])
    assert epochs == {0: 7, 1: 3}
    for shift in (True, False):
        y, p, folds = drifted(shift)
        pooled, fs = map_score(y, p), fold_summary(y, p, folds, NAMES, y.sum(0), len(y))
        assert fs["per_fold"][0]["mAP"] == pytest.approx(fs["per_fold"][1]["mAP"])      # same ranking in each fold
        d = drift_check(y, pooled, fs["mean"]["mAP"], p, folds, NAMES, epochs)
        if shift:
            assert fs["mean"]["mAP"] - pooled > DRIFT_MARGIN
            w = d["warning"]
            assert w and "\n" not in w and "score scales differ" in w and "predict.oof_normalise" in w
            assert "fold 1: mean prob" in w and "best epoch 3" in w
            assert d["fold_mean_prob"][1] == pytest.approx(d["fold_mean_prob"][0] * 0.5 + 0.4)
            assert d["odd_folds"][1]["best_epoch"] == 3 and len(d["odd_folds"][1]["classes"]) == 3
            assert d["pooled_mAP_rank_normalised"] == pytest.approx(fs["mean"]["mAP"], abs=1e-9)
        else:
            assert d["warning"] is None and abs(d["gap"]) < 1e-9
    # a log.csv stands in for a missing done.json; a blend has neither
    (tmp_path / "fold1" / "done.json").unlink()
    pd.DataFrame({"epoch": [1, 2, 3], "val_mAP": [0.1, 0.3, 0.2]}).to_csv(tmp_path / "fold1" / "log.csv", index=False)
    assert best_epochs(tmp_path, [0, 1, 2]) == {0: 7, 1: 2, 2: None}


def test_a_gap_that_is_not_scale_is_told_apart():
    """Tiny folds inflate per-fold AP; once the folds are rank-normalised the warning says it is not scale."""
    y, p = scored(120, 5)
    folds = np.arange(120) % 4                               # four folds of 30 images
    q = FoldNormaliser("rank", p, folds).oof()
    f = fold_summary(y, q, folds, NAMES, y.sum(0), len(y))
    d = drift_check(y, map_score(y, q), f["mean"]["mAP"], q, folds, NAMES, normalised="rank", margin=0.0)
    assert d["gap"] != 0 and d["pooled_mAP_rank_normalised"] == pytest.approx(map_score(y, q), abs=1e-12)
    assert d["warning"] and "not from score scales" in d["warning"] and "predict.oof_normalise" not in d["warning"]


@pytest.mark.parametrize("method", ["rank", "logit_standardise"])
def test_normalisation_never_reads_labels_and_removes_the_scale_drift(method):
    y, p, folds = drifted(True)
    norm = FoldNormaliser(method, p, folds)
    q = norm.oof()
    # never reads a label: q is what the scores and folds alone give (recomputed here from them) ...
    want = np.empty_like(p)
    z = np.log(np.clip(p, 1e-7, 1 - 1e-7) / (1 - np.clip(p, 1e-7, 1 - 1e-7)))
    mu = {k: z[folds == k].mean(0) for k in (0, 1)}
    sd = {k: np.where(z[folds == k].std(0) > 0, z[folds == k].std(0), 1.0) for k in (0, 1)}
    for k in (0, 1):
        rows = folds == k
        if method == "rank":                                  # mid-rank quantile within the fold
            want[rows] = (rankdata(p[rows], axis=0) - 0.5) / rows.sum()
        else:                                                 # onto the folds' mean logit location and scale
            zk = (z[rows] - mu[k]) / sd[k] * np.mean([sd[0], sd[1]], 0) + np.mean([mu[0], mu[1]], 0)
            want[rows] = 1 / (1 + np.exp(-zk))
    assert np.allclose(q, want, atol=1e-9)
    # ... and where labels meet the normalisation (the drift check's rank-normalised figure), other
    # labels with the same scores are scored on the same label-free normalised scores
    y_perm = y[np.random.default_rng(0).permutation(len(y))]
    assert y_perm.sum() == y.sum() and not np.array_equal(y_perm, y)
    label_free = FoldNormaliser("rank", p, folds).oof()
    for labels in (y, y_perm):
        d = drift_check(labels, map_score(labels, p), 0.0, p, folds, NAMES, margin=0.0)
        assert d["pooled_mAP_rank_normalised"] == pytest.approx(map_score(labels, label_free), abs=1e-12)
    assert q.min() >= 0 and q.max() <= 1
    for k in (0, 1):                                          # monotone per fold and class: each fold's AP kept
        rows = folds == k
        assert map_score(y[rows], q[rows]) == pytest.approx(map_score(y[rows], p[rows]), abs=1e-12)
    if method == "rank":                                      # both folds on one scale again
        assert np.allclose(q[folds == 0], q[folds == 1], atol=1e-12)
    fs = fold_summary(y, q, folds, NAMES, y.sum(0), len(y))
    assert drift_check(y, map_score(y, q), fs["mean"]["mAP"], q, folds, NAMES)["warning"] is None
    # test predictions of model k go through model k's own map (here: the same scores as its OOF rows)
    assert np.allclose(norm.apply(p[folds == 1], 1), q[folds == 1], atol=1e-12)
    new = np.random.default_rng(1).random((50, 6))            # unseen scores: strictly increasing, in [0, 1]
    a, b = norm.apply(new, 1), norm.apply(np.minimum(new + 1e-4, 1), 1)
    assert (a >= 0).all() and (a <= 1).all() and (b > a).all()
    with pytest.raises(CxrltError, match=r"^predict\.oof_normalise must be one of none, rank, logit_standardise, not 'zscore'$"):
        check_method("zscore")


def test_rank_normalisation_is_the_mid_rank_quantile_within_the_fold():
    p = np.array([[0.1], [0.7], [0.7], [0.3], [0.9], [0.2]])
    folds = np.array([0, 0, 0, 0, 1, 1])
    q = FoldNormaliser("rank", p, folds).oof()
    assert q[:4, 0].tolist() == pytest.approx([0.125, 0.75, 0.75, 0.375])
    assert q[4:, 0].tolist() == pytest.approx([0.75, 0.25])


def test_figures_by_view_group():
    y, p = scored(600, 2)
    views = np.array(["PA", "AP", "LATERAL", "LL", "pa", None] * 100, dtype=object)
    g = view_groups(views)
    assert g[:6].tolist() == ["frontal", "frontal", "lateral", "lateral", "frontal", "other"]
    folds = np.arange(600) // 6 % 3
    r = view_figures(y, p, g, NAMES, y.sum(0), 600, folds=folds)
    assert {k: v["n_images"] for k, v in r.items()} == {"frontal": 300, "lateral": 200, "other": 100}
    fr = g == "frontal"
    assert r["frontal"]["pooled"]["mAP"] == pytest.approx(sklearn_fold(y[fr], p[fr])["mAP"], abs=1e-12)
    assert r["frontal"]["fold_mean"]["mAP"] == pytest.approx(
        np.mean([sklearn_fold(y[fr & (folds == k)], p[fr & (folds == k)])["mAP"] for k in range(3)]), abs=1e-12)
    m = evaluate(y, p, NAMES, y.sum(0), 600)
    m.update(folds=fold_summary(y, p, folds, NAMES, y.sum(0), 600), by_view=r)
    lines = figure_lines(m)
    assert lines[1].split()[0] == "mAP" and f"{m['mAP']:.4f}" in lines[1] and " ± " in lines[1]
    assert any(line.strip().startswith("frontal (300 images): mAP") for line in lines)


def member(cfg, out, quality, seed, dev_perfect=False):
    """A fake stage-04 experiment of the tiny demo with oof.csv, test.csv and development.csv."""
    spec = resolve_dataset(cfg.data)
    train = pd.read_csv(spec.train_csv, dtype={"dicom_id": str})
    folds = pd.read_csv(f"{cfg.folds.dir}/demo_folds.csv", dtype={"dicom_id": str})
    rng = np.random.default_rng(seed)
    y = train[LABELS_2023].to_numpy()
    out.mkdir(parents=True, exist_ok=True)
    oof = pd.DataFrame(np.clip(y * quality + rng.random(y.shape) * (1 - quality), 0, 1), columns=LABELS_2023)
    oof.insert(0, "dicom_id", train.dicom_id)
    oof["fold"] = folds.set_index("dicom_id").fold.loc[train.dicom_id].to_numpy()
    oof.to_csv(out / "oof.csv", index=False)
    for split, csv in (("test", spec.test_csv), ("development", spec.dev_csv)):
        df = pd.read_csv(csv, dtype={"dicom_id": str})
        p = rng.random((len(df), 26))
        if split == "development" and dev_perfect:
            p = df[LABELS_2023].to_numpy(np.float64)
        t = pd.DataFrame(p, columns=LABELS_2023)
        t.insert(0, "dicom_id", df.dicom_id)
        t.to_csv(out / f"{split}.csv", index=False)
    seal(out / "metrics.json", {"mAP": 0.5}, [out / f for f in ("oof.csv", "test.csv", "development.csv")])
    return out


def test_development_set_is_never_fitted_on(base, tmp_path):
    """Blend weights (fitted and honest) and thresholds come from the OOF alone: development
    predictions that are perfect for one member and random for the other change none of them."""
    cfg = cfg_at(base, tmp_path / "x")
    results = []
    for perfect in (False, True):
        d = tmp_path / str(perfect)
        a, b = member(cfg, d / "a", 0.3, 1, dev_perfect=perfect), member(cfg, d / "b", 0.25, 2)
        bl = cfg_at(base, d / "blend", f"blend.members=[{a}, {b}]")
        r = blend_experiment(bl)
        t = tune_thresholds(bl)
        results.append((r["weights"], r["honest_weights"], t["thresholds"], (d / "blend" / "oof.csv").read_text()))
    (w0, h0, t0, o0), (w1, h1, t1, o1) = results
    assert list(w0.values()) == list(w1.values()) and t0 == t1 and o0 == o1
    assert [list(v.values()) for v in h0.values()] == [list(v.values()) for v in h1.values()]


def test_best_epoch_of_a_log_is_the_training_rule_not_val_map(tmp_path):
    """Without done.json the best epoch comes from log.csv by train.epochs.best_index: val_score
    (balanced accuracy for a multiclass task), which may peak at another epoch than val mAP."""
    (tmp_path / "fold0").mkdir()
    pd.DataFrame(dict(epoch=[1, 2, 3], val_mAP=[0.6, 0.5, 0.4], val_bAcc=[0.3, 0.7, 0.5],
                      val_score=[0.3, 0.7, 0.5])).to_csv(tmp_path / "fold0" / "log.csv", index=False)
    (tmp_path / "fold1").mkdir()
    pd.DataFrame(dict(epoch=[1, 2], val_mAP=[0.4, 0.6])).to_csv(tmp_path / "fold1" / "log.csv", index=False)  # older log
    assert best_epochs(tmp_path, [0, 1, 2]) == {0: 2, 1: 2, 2: None}
