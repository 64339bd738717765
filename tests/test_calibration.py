"""Stage 06 calibration: temperature and isotonic calibrators, their ECE (fitted and honest), and
applying saved calibrators later."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO
from sklearn.isotonic import IsotonicRegression

from cxrlt.config import load_config
from cxrlt.data.labels import LABELS_2023
from cxrlt.ensemble.thresholds import apply_calibration, ece, fit_calibration, tune_thresholds
from cxrlt.stage import seal


def miscalibrated(n, power, rng):
    """Labels drawn with probability q, predictions q ** power (power 3: far too low, 1/3: too high)."""
    q = rng.random(n)
    return (rng.random(n) < q).astype(float), q ** power


def test_isotonic_lowers_ece_of_miscalibrated_predictions():
    """p = q ** 3 is far too low everywhere: isotonic undoes it; temperature (a slope on the logit,
    no shift) only helps partly."""
    rng = np.random.default_rng(0)
    y, p = miscalibrated(6000, 3, rng)
    iso, temp = (fit_calibration(m, y[:, None], p[:, None], np.arange(6000) % 5, ["a"])
                 for m in ("isotonic", "temperature"))
    assert iso["ECE_before"] > 0.2
    assert iso["ECE_after"] < 0.03 and iso["ECE_after"] <= iso["ECE_honest"] < 0.04
    assert iso["ECE_honest"] < temp["ECE_honest"] < temp["ECE_before"] and temp["ECE_after"] < temp["ECE_before"]


def test_honest_ece_comes_from_calibrators_fitted_on_the_other_folds():
    """Fold 0 is under-confident, fold 1 over-confident: one calibrator fitted on both is fair to
    each, but a calibrator fitted on one fold and scored on the other is badly wrong."""
    rng = np.random.default_rng(1)
    (y0, p0), (y1, p1) = miscalibrated(3000, 1 / 3, rng), miscalibrated(3000, 3, rng)
    y = np.column_stack([np.r_[y0, y1], np.zeros(6000)])             # class b: no positive
    p = np.column_stack([np.r_[p0, p1], rng.random(6000)])
    folds = np.r_[np.zeros(3000, int), np.ones(3000, int)]
    r = fit_calibration("isotonic", y, p, folds, ["a", "b"])
    direct = np.empty(6000)
    for f in (0, 1):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p[folds != f, 0], y[folds != f, 0])
        direct[folds == f] = iso.predict(p[folds == f, 0])
    assert r["ECE_honest"] == pytest.approx((ece(y[:, 0], direct) + ece(y[:, 1], p[:, 1])) / 2, abs=1e-12)
    assert r["ECE_honest"] > r["ECE_after"] + 0.1                    # honest differs from fitted
    assert r["no_calibrator"] == ["b"] and r["calibrators"]["b"] is None


def test_apply_calibration_reproduces_sklearn_and_survives_json():
    rng = np.random.default_rng(2)
    y, p = miscalibrated(2000, 2, rng)
    y2, p2 = miscalibrated(2000, 0.5, rng)
    r = fit_calibration("isotonic", np.column_stack([y, y2]), np.column_stack([p, p2]), np.arange(2000) % 4, ["a", "b"])
    saved = json.loads(json.dumps(r))
    new = np.column_stack([np.r_[0.0, 1.0, rng.random(500)], np.r_[0.0, 1.0, rng.random(500)]])  # ends clip
    got = apply_calibration(new, saved)
    for c, (yy, pp) in enumerate(((y, p), (y2, p2))):
        want = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(pp, yy).predict(new[:, c])
        np.testing.assert_allclose(got[:, c], want, rtol=0, atol=1e-12)
    t = fit_calibration("temperature", y[:, None], p[:, None], np.arange(2000) % 4, ["a"])
    T = t["calibrators"]["a"]
    z = np.log(p / (1 - p))
    np.testing.assert_allclose(apply_calibration(p[:, None], t)[:, 0], 1 / (1 + np.exp(-z / T)), rtol=1e-9)
    assert np.array_equal(apply_calibration(new, {"calibration": "none"}), new)


def test_stage_06_isotonic_saves_calibrators_that_reproduce_its_ece(tiny_root, tmp_path, stage):
    """A copy of the tiny demo's training CSV with one class emptied: that class gets no calibrator."""
    train = pd.read_csv(tiny_root / "demo" / "train.csv", dtype=str, keep_default_na=False)
    empty = LABELS_2023[-1]
    train[empty] = "0"
    (tmp_path / "in" / "demo").mkdir(parents=True)
    train.to_csv(tmp_path / "in" / "demo" / "train.csv", index=False)
    ov = [f"data.input_dir={tmp_path / 'in'}", f"output_dir={tmp_path / 'e'}", "thresholds.calibration=isotonic"]
    rng = np.random.default_rng(3)
    y = train[LABELS_2023].to_numpy(float)
    p = np.clip(0.6 * y + 0.4 * rng.random(y.shape), 0, 1) ** 2
    oof = pd.DataFrame(p, columns=LABELS_2023)
    oof.insert(0, "dicom_id", train.dicom_id)
    oof["fold"] = np.arange(len(train)) % 3
    (tmp_path / "e").mkdir()
    oof.to_csv(tmp_path / "e" / "oof.csv", index=False)
    seal(tmp_path / "e" / "metrics.json", {}, [tmp_path / "e" / "oof.csv"])   # as stage 04 vouches for it
    res = stage("src/06_thresholds.py", "--config", DEMO, *ov)
    assert res.returncode == 0, res.stderr
    assert "isotonic calibration: ECE" in res.stdout and "(honest: calibrators from the other folds)" in res.stdout
    assert f"no calibrator (no positive in OOF; left as is): {empty}" in res.stdout
    saved = json.loads((tmp_path / "e" / "thresholds.json").read_text())
    assert saved["calibration"] == "isotonic" and saved["calibrators"][empty] is None
    assert all(set(c) == {"x", "y"} for n, c in saved["calibrators"].items() if n != empty)
    cal = apply_calibration(oof[LABELS_2023].to_numpy(), saved)
    assert np.mean([ece(y[:, c], cal[:, c]) for c in range(26)]) == pytest.approx(saved["ECE_after"], abs=1e-12)
    assert saved["ECE_after"] < saved["ECE_before"]
    assert tune_thresholds(load_config(DEMO, ov))["skipped"]
    with pytest.raises(Exception, match="thresholds.temperature was replaced"):
        tune_thresholds(load_config(DEMO, ov + ["+thresholds.temperature=true"]))
