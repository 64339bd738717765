"""The full-data fit: trained on every image for the folds' median best epoch, predicts development
and test only, never the OOF (so never blend fitting or thresholds)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import cfg_at

from cxrlt.errors import CxrltError
from cxrlt.evaluate.predict import predict_experiment
from cxrlt.experiment import FULL
from cxrlt.models.checkpoint import load
from cxrlt.train.fold import train_fold
from cxrlt.train.image import full_fit_epochs


@pytest.fixture(scope="module")
def full(base, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "demo"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("features", "*.csv", "metrics.json"))
    cfg = cfg_at(base, out, "predict.study_aggregation=false", "predict.bootstrap=0")
    r = train_fold(cfg, FULL, progress=False)
    return cfg, out, r


def test_full_fit_takes_the_folds_median_best_epoch_and_every_image(full):
    cfg, out, r = full
    best = [json.loads((out / f"fold{k}" / "done.json").read_text())["best_epoch"] for k in range(5)]
    assert r["epochs"] == full_fit_epochs(cfg) == max(1, round(float(np.median(best))))
    log = pd.read_csv(out / FULL / "log.csv")
    assert len(log) == r["epochs"] and log.val_mAP.isna().all()
    ck = load(out / FULL / "best.pt")
    assert ck["fingerprint"]["folds"].startswith("full:") and ck["epoch"] == r["epochs"] - 1
    assert not (out / FULL / "val_predictions.csv").exists()
    assert train_fold(cfg, FULL, progress=False)["skipped"]


def test_full_fit_never_enters_oof_and_joins_test_as_one_more_member(base, full):
    from cxrlt.ensemble.thresholds import tune_thresholds

    cfg, out, _ = full
    read = lambda f: pd.read_csv(out / f, dtype={"dicom_id": str}).set_index("dicom_id")  # noqa: E731
    res = {}
    for use in ("none", "alone", "with_folds"):
        c = cfg_at(base, out, "predict.study_aggregation=false", "predict.bootstrap=0", f"predict.use_full_fit={use}")
        m = predict_experiment(c, progress=False)
        th = tune_thresholds(c)
        res[use] = (read("oof.csv"), read("test.csv"), m["mAP"], th["thresholds"])
    names = [c for c in res["none"][1].columns]
    for use in ("alone", "with_folds"):
        pd.testing.assert_frame_equal(res[use][0], res["none"][0])        # OOF untouched
        assert res[use][2] == res["none"][2] and res[use][3] == res["none"][3]   # nor its figures, nor thresholds
    folds_mean, alone = res["none"][1][names].to_numpy(), res["alone"][1][names].to_numpy()
    assert not np.allclose(folds_mean, alone, atol=1e-4)
    assert np.allclose(res["with_folds"][1][names].to_numpy(), (5 * folds_mean + alone) / 6, atol=1e-6)


def test_full_fit_refuses_normalisation_and_a_missing_fit(base, full, tmp_path):
    cfg, out, _ = full
    with pytest.raises(CxrltError, match="has no OOF scores to fit its normalisation on"):   # at load, before training
        cfg_at(base, out, "predict.use_full_fit=with_folds", "predict.oof_normalise=rank")
    other = tmp_path / "nofull"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns(FULL))
    with pytest.raises(CxrltError, match=r"no full-data fit .*full/best.pt; train it with src/03_train.py .* --full"):
        predict_experiment(cfg_at(base, other, "predict.use_full_fit=alone"), progress=False)
