import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, cfg_at

from cxrlt.config import load_config
from cxrlt.data.datasets import resolve_dataset
from cxrlt.data.labels import LABELS_2023, LABELS_2024_TASK2, LABELS_2026
from cxrlt.ensemble.blend import blend_experiment, combine, fit_weights
from cxrlt.ensemble.submission import check_file, make_submission
from cxrlt.ensemble.thresholds import best_threshold, ece, fit_temperature, tune_thresholds
from cxrlt.errors import CxrltError
from cxrlt.fileio import stamps
from cxrlt.metrics import per_class
from cxrlt.stage import seal


def noisy(y, quality, rng):
    return np.clip(y * quality + rng.random(y.shape) * (1 - quality), 0, 1)


@pytest.mark.parametrize("seed", range(4))
def test_fitted_weights_never_below_the_best_member(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((300, 6)) < 0.2).astype(int)
    members = [noisy(y, q, rng) for q in (0.1, 0.3, 0.2)]
    w = fit_weights(y, members, steps=20)
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    best = max(np.nanmean(per_class(y, m)) for m in members)
    assert np.nanmean(per_class(y, combine(members, w, "mean"))) >= best - 1e-12


def _reference_fit(y, arrays, steps):
    """fit_weights as first written: scikit-learn's AP, every candidate scored from scratch."""
    from sklearn.metrics import average_precision_score

    def m(p):
        ap = [average_precision_score(y[:, c], p[:, c]) for c in range(y.shape[1]) if y[:, c].sum() > 0]
        return float(np.mean(ap)) if ap else 0.0

    scores = [m(a) for a in arrays]
    counts = np.zeros(len(arrays))
    counts[int(np.argmax(scores))] = 1
    total, best = arrays[int(np.argmax(scores))].copy(), max(scores)
    for _ in range(steps - 1):
        trial = [m((total + a) / (counts.sum() + 1)) for a in arrays]
        j = int(np.argmax(trial))
        if trial[j] < best - 1e-12:
            break
        counts[j] += 1
        total += arrays[j]
        best = max(best, trial[j])
    return counts / counts.sum()


@pytest.mark.parametrize("seed", range(6))
def test_fit_picks_the_first_designs_weights_on_all_rows_and_per_fold(seed):
    """fit_weights_folds (fits side by side, one sort per shared candidate) picks exactly the weights
    of the first design (scikit-learn AP, one fit per row set): members of mixed quality, ties,
    a class without a positive, a rare class, 5 folds; the side-by-side fits equal separate fast fits."""
    from cxrlt.ensemble.blend import fit_weights_folds

    rng = np.random.default_rng(seed)
    n = 400
    y = (rng.random((n, 6)) < [0.3, 0.1, 0.03, 0.0, 0.5, 0.2]).astype(int)
    base = rng.normal(size=y.shape)
    members = [1 / (1 + np.exp(-(q * 3 * y + base + rng.normal(size=y.shape)))) for q in (0.6, 0.5, 0.45)]
    if seed % 2:
        members = [np.round(m, 2) for m in members]                      # ties
    folds = rng.integers(0, 5, n)
    steps = 12
    w, per_fold = fit_weights_folds(y, members, steps, folds)
    assert np.array_equal(w, _reference_fit(y, members, steps))
    assert np.array_equal(fit_weights(y, members, steps), w)
    assert sorted(per_fold) == [0, 1, 2, 3, 4]
    for f, wf in per_fold.items():
        tr = folds != f
        assert np.array_equal(wf, _reference_fit(y[tr], [m[tr] for m in members], steps)), f
        assert np.array_equal(wf, fit_weights(y[tr], [m[tr] for m in members], steps)), f
    from cxrlt.ensemble.blend import _map, _MaskedScorer

    for m in members:                                   # the shared-sort mAP is the direct one, bit for bit
        got = _MaskedScorer(y, folds)(m, [None, 0, 1, 2, 3, 4])
        assert got[None] == _map(y, m)
        assert all(got[f] == _map(y[folds != f], m[folds != f]) for f in range(5))


def test_rank_blend_of_one_member_keeps_its_ranking():
    p = np.random.default_rng(0).random((50, 3))
    r = combine([p], [1.0], "rank")
    assert np.array_equal(np.argsort(r, axis=0, kind="stable"), np.argsort(p, axis=0, kind="stable"))
    assert r.min() == 0 and r.max() == 1


def fake_member(cfg, out, quality, seed):
    """An experiment folder with oof.csv (real fold column) and test.csv for the tiny demo."""
    spec = resolve_dataset(cfg.data)
    train = pd.read_csv(spec.train_csv, dtype={"dicom_id": str})
    folds = pd.read_csv(f"{cfg.folds.dir}/demo_folds.csv", dtype={"dicom_id": str})
    rng = np.random.default_rng(seed)
    oof = pd.DataFrame(noisy(train[LABELS_2023].to_numpy(), quality, rng), columns=LABELS_2023)
    oof.insert(0, "dicom_id", train.dicom_id)
    oof["fold"] = folds.fold.to_numpy()
    out.mkdir(parents=True, exist_ok=True)
    oof.to_csv(out / "oof.csv", index=False)
    test = pd.read_csv(spec.test_csv, dtype={"dicom_id": str})
    tp = pd.DataFrame(rng.random((len(test), 26)), columns=LABELS_2023)
    tp.insert(0, "dicom_id", test.dicom_id)
    tp.to_csv(out / "test.csv", index=False)
    dev = pd.read_csv(spec.dev_csv, dtype={"dicom_id": str})
    dp = pd.DataFrame(noisy(dev[LABELS_2023].to_numpy(), quality, rng), columns=LABELS_2023)
    dp.insert(0, "dicom_id", dev.dicom_id)
    dp.to_csv(out / "development.csv", index=False)
    seal(out / "metrics.json", {"mAP": 0.5}, [out / "oof.csv", out / "test.csv", out / "development.csv"])  # as stage 04
    return out


def test_blend_stage(base, tmp_path):
    cfg = cfg_at(base, tmp_path / "x")
    a = fake_member(cfg, tmp_path / "a", 0.3, 1)
    b = fake_member(cfg, tmp_path / "b", 0.2, 2)
    bl = cfg_at(base, tmp_path / "blend", f"blend.members=[{a}, {b}]")
    r = blend_experiment(bl)
    assert r["mAP"] >= max(r["members"].values()) - 1e-12
    assert set(r["weights"]) == {str(a), str(b)} and sum(r["weights"].values()) == pytest.approx(1)
    assert 0 < r["mAP_honest"] <= 1 and len(r["honest_weights"]) == 5
    m = json.loads((tmp_path / "blend" / "metrics.json").read_text())
    oof = pd.read_csv(tmp_path / "blend" / "oof.csv")
    y = pd.read_csv(resolve_dataset(bl.data).train_csv)[LABELS_2023].to_numpy()
    assert m["mAP"] == pytest.approx(np.nanmean(per_class(y, oof[LABELS_2023].to_numpy())), abs=1e-12)
    assert list(oof.columns) == ["dicom_id", *LABELS_2023, "fold"] and (tmp_path / "blend" / "test.csv").is_file()
    # the labelled development set is scored as stage 04 scores a member's: the blend's own predictions
    dev = pd.read_csv(tmp_path / "blend" / "development.csv", dtype={"dicom_id": str})
    y_dev = pd.read_csv(resolve_dataset(bl.data).dev_csv, dtype={"dicom_id": str}).set_index("dicom_id")
    want = np.nanmean(per_class(y_dev.loc[dev.dicom_id, LABELS_2023].to_numpy(), dev[LABELS_2023].to_numpy()))
    assert m["development"]["mAP"] == pytest.approx(want, abs=1e-12) and "per_class" not in m["development"]
    assert blend_experiment(bl)["skipped"]
    # members whose ids are in another order are refused
    t = pd.read_csv(b / "oof.csv")
    t.iloc[::-1].to_csv(b / "oof.csv", index=False)
    seal(b / "metrics.json", {"mAP": 0.5}, [b / "oof.csv", b / "test.csv"])
    with pytest.raises(CxrltError, match="ids differ or are in another order"):
        blend_experiment(bl)


def test_thresholds_beat_half_on_crafted_data(base, tmp_path):
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.05, 0.1, 0.3, 0.4, 0.2, 0.35])       # well ranked, all below 0.5
    t = best_threshold(y, p)
    assert t == pytest.approx(0.3) and ((p >= t) == y).all()
    cfg = cfg_at(base, tmp_path / "e", "thresholds.calibration=temperature")
    fake_member(cfg, tmp_path / "e", 0.35, 3)
    r = tune_thresholds(cfg)
    assert r["mF1_tuned"] > r["mF1_at_0_5"] and r["mF1_tuned"] >= r["mF1_honest"] - 1e-9
    assert r["ECE_after"] <= r["ECE_before"] and (tmp_path / "e" / "f1_per_class.png").is_file()
    assert r["ECE_after"] <= r["ECE_honest"]
    saved = json.loads((tmp_path / "e" / "thresholds.json").read_text())
    assert set(saved["thresholds"]) == set(saved["calibrators"]) == set(LABELS_2023)
    assert saved["calibration"] == "temperature" and all(isinstance(t, float) for t in saved["calibrators"].values())
    assert tune_thresholds(cfg)["skipped"]                                 # same calibration: up to date
    assert not tune_thresholds(cfg_at(base, tmp_path / "e", "thresholds.calibration=none"))["skipped"]
    with pytest.raises(CxrltError, match="must be one of none, temperature, isotonic, not 'platt'"):   # at load
        tune_thresholds(cfg_at(base, tmp_path / "e", "thresholds.calibration=platt"))


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z))).astype(float)
    over = 1 / (1 + np.exp(-3 * z))                        # overconfident by a factor 3
    assert fit_temperature(y, over) == pytest.approx(3.0, rel=0.1)
    assert ece(y, 1 / (1 + np.exp(-z))) < ece(y, over)


@pytest.fixture
def submitted(base, tmp_path):
    cfg = cfg_at(base, tmp_path / "exp", f"submission.dir={tmp_path / 'subs'}")
    fake_member(cfg, tmp_path / "exp", 0.3, 4)
    return cfg, make_submission(cfg), tmp_path


def test_submission_zip_round_trips_and_is_logged(submitted):
    cfg, r, tmp = submitted
    spec = resolve_dataset(cfg.data)
    with zipfile.ZipFile(r["zip"]) as z:
        assert z.namelist() == [r["csv"].name]
        assert z.read(r["csv"].name) == r["csv"].read_bytes()          # byte for byte
    sub = pd.read_csv(r["csv"], dtype={"dicom_id": str})
    sample = pd.read_csv(spec.sample_submission, dtype={"dicom_id": str})
    assert list(sub.dicom_id) == list(sample.dicom_id)                  # sample-submission order
    log = pd.read_csv(tmp / "subs" / "log.csv")
    assert log.sha256.iloc[-1] == r["sha256"] and log.oof_mAP.iloc[-1] == 0.5
    assert check_file(cfg, r["zip"]) == len(sample)


@pytest.mark.parametrize("breakage,message", [
    ("missing", r"1 test ids are missing"),
    ("duplicate", r"appears more than once"),
    ("swap", r"columns are in the wrong order"),
    ("nan", r"NaN or non-numeric value at row 4, column 'Edema'"),
    ("big", r"value 1.2 at row 3, column 'Atelectasis' is outside \[0, 1\]"),
])
def test_check_refuses_each_fault_with_its_own_message(submitted, breakage, message):
    cfg, r, tmp = submitted
    df = pd.read_csv(r["csv"], dtype={"dicom_id": str})
    if breakage == "missing":
        df = df.drop(index=5)
    elif breakage == "duplicate":
        df.loc[3, "dicom_id"] = df.loc[4, "dicom_id"]
    elif breakage == "swap":
        cols = list(df.columns)
        cols[1], cols[2] = cols[2], cols[1]
        df = df[cols]
    elif breakage == "nan":
        df.loc[2, "Edema"] = np.nan
    elif breakage == "big":
        df.loc[1, "Atelectasis"] = 1.2
    bad = tmp / f"{breakage}.csv"
    df.to_csv(bad, index=False)
    with pytest.raises(CxrltError, match=message):
        check_file(cfg, bad)


def test_check_cli_exit_codes(submitted, stage):
    cfg, r, tmp = submitted
    df = pd.read_csv(r["csv"])
    df.loc[0, "Edema"] = 1.2
    df.to_csv(tmp / "bad.csv", index=False)
    args = ["src/07_make_submission.py", "--config", cfg.recipe]
    ov = [f"data.input_dir={cfg.data.input_dir}"]
    ok = stage(*args, "--check", r["zip"], *ov)
    bad = stage(*args, "--check", tmp / "bad.csv", *ov)
    assert ok.returncode == 0 and "OK" in ok.stdout
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and "outside [0, 1]" in bad.stderr


def test_binary_submission_uses_thresholds(submitted):
    cfg, r, tmp = submitted
    exp = tmp / "exp"
    (exp / "thresholds.json").write_text(json.dumps({"thresholds": {c: 0.5 for c in LABELS_2023},
                                                     "inputs": stamps({"oof.csv": exp / "oof.csv"})}))
    rb = make_submission(cfg, binary=True)
    sub = pd.read_csv(rb["csv"])
    assert set(np.unique(sub[LABELS_2023].to_numpy())) <= {0, 1} and rb["csv"].name.endswith("_binary.csv")


@pytest.mark.parametrize("preset,labels,id_col", [("cxr-lt-2026", LABELS_2026, "ImageID"),
                                                  ("cxr-lt-2024-task2", LABELS_2024_TASK2, "dicom_id")])
def test_submission_for_other_presets(tmp_path, preset, labels, id_col):
    spec = resolve_dataset(load_config(ROOT / "experiments" / "demo.yaml", [f"data.preset={preset}",
                                                                             f"data.input_dir={tmp_path}"]).data)
    ids = [f"img{i}.png" for i in range(7)]
    spec.test_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({id_col: ids, spec.path_col if spec.path_col != id_col else "x": ids}).to_csv(spec.test_csv, index=False)
    exp = tmp_path / "exp"
    exp.mkdir()
    p = pd.DataFrame(np.random.default_rng(0).random((7, len(labels))), columns=labels)
    p.insert(0, id_col, ids[::-1])                                       # any row order in test.csv
    p.to_csv(exp / "test.csv", index=False)
    seal(exp / "metrics.json", {}, [exp / "test.csv"])
    cfg = load_config(ROOT / "experiments" / "demo.yaml", [f"data.preset={preset}", f"data.input_dir={tmp_path}",
                                                           f"output_dir={exp}", f"submission.dir={tmp_path / 's'}"])
    r = make_submission(cfg)
    sub = pd.read_csv(r["csv"], dtype={id_col: str})
    assert list(sub.columns) == [id_col, *labels] and list(sub[id_col]) == ids


def test_best_threshold_is_scikit_learns_to_the_bit():
    """The hand-written precision-recall curve (one sort) picks the threshold scikit-learn's
    precision_recall_curve gives, exactly: ties, a single positive, every image positive."""
    from sklearn.metrics import precision_recall_curve

    from cxrlt.ensemble.thresholds import best_threshold

    def reference(y, p):
        prec, rec, thr = precision_recall_curve(y, p)
        f1 = 2 * prec[:-1] * rec[:-1] / np.clip(prec[:-1] + rec[:-1], 1e-12, None)
        return float(thr[int(np.argmax(f1))])

    rng = np.random.default_rng(5)
    for trial in range(150):
        n = int(rng.integers(2, 400))
        y = (rng.random(n) < rng.choice([0.01, 0.1, 0.5, 1.0])).astype(int)
        if y.sum() == 0:
            y[0] = 1
        p = rng.random(n) + 0.3 * y
        if trial % 2:
            p = np.round(p, 1)                                          # ties
        assert best_threshold(y, p) == reference(y, p)
    assert best_threshold(np.zeros(5), np.ones(5)) == 0.5
