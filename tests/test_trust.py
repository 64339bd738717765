"""No silent wrong result: each test reproduces a way the pipeline could have produced a wrong
figure without saying so (re-made folds, a killed run with other settings, mixed weight sources,
NA-like ids, YAML numbers, NaN in JSON)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, cfg_at

from cxrlt.config import load_config
from cxrlt.data.stages import build_folds
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predict import predict_experiment
from cxrlt.evaluate.predictions import read_predictions, write_predictions
from cxrlt.fileio import read_table, to_json
from cxrlt.models.checkpoint import load, save
from cxrlt.train.fold import train_fold


def refolded(base, tmp_path, seed=7):
    """A copy of the session's folds, then rebuilt with another seed (what stage 02 --force does)."""
    src = load_config(DEMO, base).folds.dir
    shutil.copytree(src, tmp_path / "folds")
    return [f"folds.dir={tmp_path / 'folds'}"], [f"folds.dir={tmp_path / 'folds'}", f"folds.seed={seed}"]


def test_training_refuses_a_finished_fold_after_the_folds_were_remade(base, tmp_path):
    same, other = refolded(base, tmp_path)
    cfg = cfg_at(base, tmp_path / "exp", *same, "train.epochs=1")
    train_fold(cfg, 0, progress=False)
    assert train_fold(cfg, 0, progress=False)["skipped"]                    # same folds: finished
    build_folds(cfg_at(base, tmp_path / "exp", *other), force=True)
    with pytest.raises(CxrltError, match=r"done.json: recipe changed since this checkpoint \(folds: .*--force"):
        train_fold(cfg, 0, progress=False)                                  # was: "already finished"
    assert not train_fold(cfg, 0, progress=False, force=True)["skipped"]


def test_prediction_refuses_models_trained_on_other_folds(base, trained, tmp_path):
    same, other = refolded(base, tmp_path)
    out = tmp_path / "exp"
    shutil.copytree(trained, out)
    predict_experiment(cfg_at(base, out, *same), progress=False, force=True)  # its own folds: fine
    build_folds(cfg_at(base, out, *other), force=True)
    with pytest.raises(CxrltError, match=r"best.pt: recipe changed since this checkpoint \(folds: "):
        predict_experiment(cfg_at(base, out, *same), progress=False, force=True)


def test_a_run_killed_after_rewriting_outputs_is_never_up_to_date(base, trained, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(trained, out)
    cfg = cfg_at(base, out)
    predict_experiment(cfg, progress=False, force=True)
    good = (out / "oof.csv").read_bytes()
    assert predict_experiment(cfg, progress=False)["skipped"]
    json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: 1 / 0)   # strict JSON: no bare NaN
    # `predict.tta=none` killed right after it rewrote oof.csv: metrics.json still describes hflip
    (out / "oof.csv").write_bytes(good.replace(b"0.", b"0.0", 50))
    r = predict_experiment(cfg, progress=False)
    assert not r["skipped"] and (out / "oof.csv").read_bytes() == good
    (out / "per_class_ap.png").unlink()                                     # a plot lost to a kill is redrawn
    assert not predict_experiment(cfg, progress=False)["skipped"] and (out / "per_class_ap.png").is_file()


def test_folds_that_started_from_different_weights_are_refused(base, trained, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(trained, out)
    inits = {load(out / f"fold{k}/best.pt")["init"] for k in range(5)}
    assert inits == {"random"}                                              # recorded by training
    ck = load(out / "fold2/best.pt")
    save(dict(ck, init="hub:test_resnet"), out / "fold2/best.pt")
    with pytest.raises(CxrltError, match=r"folds started from different weights .*fold 2: hub:test_resnet"):
        predict_experiment(cfg_at(base, out), progress=False, force=True)


def test_offline_is_detected_without_a_retry_storm(monkeypatch):
    import socket

    from cxrlt.models import factory

    calls = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError()))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert factory.hub_reachable() is False and len(calls) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert factory.hub_reachable() is False and len(calls) == 1             # honoured without a probe


def test_na_like_ids_stay_ids(tmp_path):
    ids = ["NA", "null", "None", "nan", "N/A", "x1"]
    p = np.linspace(0, 1, 12).reshape(6, 2)
    write_predictions(tmp_path / "p.csv", ids, p, ["A", "B"], "dicom_id", fold=[0, 1, 2, 0, 1, 2])
    back = read_predictions(tmp_path / "p.csv", ["A", "B"], "dicom_id", ids=ids)
    assert back.dicom_id.tolist() == ids and np.allclose(back[["A", "B"]].to_numpy(), p)
    pd.DataFrame({"dicom_id": ids, "fold": range(6), "v": ["1", "", "NA", "2", "3", "4"]}).to_csv(tmp_path / "f.csv",
                                                                                                index=False)
    t = read_table(tmp_path / "f.csv", "dicom_id")
    assert t.dicom_id.tolist() == ids and t.v.isna().tolist() == [False, True, True, False, False, False]


def test_yaml_exponent_numbers_are_numbers(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(f"base: {DEMO}\nloss:\n  label_smoothing: 1e-2\ntrain:\n  lr: 3E-4\n  epochs: 2\n")
    cfg = load_config(r)
    assert cfg.loss.label_smoothing == 0.01 and cfg.train.lr == 3e-4 and cfg.train.epochs == 2
    assert isinstance(cfg.loss.label_smoothing, float)


def test_json_outputs_hold_no_bare_nan():
    assert to_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": np.float64("nan")}}) == \
        '{"a": null, "b": [1.0, null], "c": {"d": null}}'
