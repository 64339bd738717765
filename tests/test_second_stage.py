"""Second stages over frozen first-stage backbones: feature cache, cRT, tau-norm, fusion, and the
honesty of their out-of-fold predictions."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cfg_at
from sklearn.metrics import average_precision_score

from cxrlt.data.experiment import Experiment
from cxrlt.data.splits import training_data
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predict import predict_experiment
from cxrlt.models.checkpoint import load, load_model, save
from cxrlt.train.features import FeatureStore, cache_key
from cxrlt.train.fold import train_fold

S2 = ["stage2.cache_dtype=float32", "stage2.epochs=3", "stage2.batch_size=32", "stage2.workers=0", "train.trackers=[]",
      "predict.tta=none", "predict.study_aggregation=false", "predict.bootstrap=0", "loss.name=bce"]


@pytest.fixture(scope="module")
def first(trained, tmp_path_factory):
    """A private copy of the trained tiny first stage (second stages write its feature cache)."""
    d = tmp_path_factory.mktemp("first") / "demo1"
    shutil.copytree(trained, d, ignore=shutil.ignore_patterns("features"))
    return d


def s2cfg(base, out, first, method, *more):
    return cfg_at(base, out, f"stage2.from={first}", f"stage2.method={method}", *S2, *more)


def test_feature_store_resumes_after_a_kill(tmp_path):
    ck = tmp_path / "best.pt"
    ck.write_bytes(b"weights")
    key = cache_key(ck, [f"id{i}" for i in range(10)], ["none", "hflip"], "float32", "pooled")
    full = {v: np.arange(30, dtype=np.float32).reshape(10, 3) * (1 if v == "none" else -1) for v in ("none", "hflip")}
    calls = []

    def compute(lo, hi, die_after=None):
        if die_after is not None and len(calls) == die_after:
            raise KeyboardInterrupt
        calls.append((lo, hi))
        return {v: a[lo:hi] for v, a in full.items()}

    store = FeatureStore(tmp_path / "f", key)
    with pytest.raises(KeyboardInterrupt):
        store.fill(lambda lo, hi: compute(lo, hi, die_after=2), chunk=3)
    assert calls == [(0, 3), (3, 6)] and not store.complete()
    arrays = FeatureStore(tmp_path / "f", key).fill(compute, chunk=3)
    assert calls[2:] == [(6, 9), (9, 10)]                       # resumed after the last recorded chunk
    assert all(np.array_equal(arrays[v], full[v]) for v in full)
    assert FeatureStore(tmp_path / "f", key).complete()
    calls.clear()
    ck.write_bytes(b"retrained weights")                        # a new backbone: recomputed from row 0
    key2 = cache_key(ck, [f"id{i}" for i in range(10)], ["none", "hflip"], "float32", "pooled")
    assert not FeatureStore(tmp_path / "f", key2).complete()
    FeatureStore(tmp_path / "f", key2).fill(compute, chunk=4)
    assert calls[0] == (0, 4)


@pytest.fixture(scope="module")
def crt(base, first, tmp_path_factory):
    out = tmp_path_factory.mktemp("crt")
    cfg = s2cfg(base, out, first, "crt")
    for k in range(5):
        train_fold(cfg, k, progress=False)
    return cfg, out


def test_crt_oof_from_images_equals_validation_on_cached_features(crt):
    cfg, out = crt
    spec, df, files, y, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    r = predict_experiment(cfg, progress=False)
    oof = pd.read_csv(out / "oof.csv", dtype={spec.id_col: str}).set_index(spec.id_col)
    names = list(spec.labels)
    for k in range(5):
        val = pd.read_csv(out / f"fold{k}" / "val_predictions.csv", dtype={spec.id_col: str}).set_index(spec.id_col)
        # stage 04 rebuilt each fold's model from best.pt alone and ran it on the images
        assert np.allclose(oof.loc[val.index, names].to_numpy(), val[names].to_numpy(), atol=2e-5)
        done = json.loads((out / f"fold{k}" / "done.json").read_text())
        assert done["method"] == "crt" and done["fingerprint"]["stage2"]["method"] == "crt"
    assert r["n_folds"] == 5
    ck = load(out / "fold0" / "best.pt")
    assert ck["arch"]["kind"] == "image"
    first_ck = load(cfg.stage2["from"] + "/fold0/best.pt")
    sd, fsd = ck["model"], first_ck["model"]
    clf = [k for k in sd if not torch.equal(sd[k], fsd[k])]
    assert clf and all(k.startswith("fc.") for k in clf)   # only the classifier changed


def test_second_stage_uses_only_its_folds_backbone(base, first, crt, tmp_path):
    """Poison every other fold's first-stage weights: fold 0 of the second stage is unchanged."""
    _, out = crt
    poisoned = tmp_path / "poisoned"
    shutil.copytree(first, poisoned, ignore=shutil.ignore_patterns("features"))
    for k in range(1, 5):
        p = poisoned / f"fold{k}" / "best.pt"
        ck = load(p)
        ck["model"] = {n: torch.randn_like(t) if t.is_floating_point() else t for n, t in ck["model"].items()}
        save(ck, p)
    cfg = s2cfg(base, tmp_path / "again", poisoned, "crt")
    train_fold(cfg, 0, progress=False)
    a = pd.read_csv(out / "fold0" / "val_predictions.csv")
    b = pd.read_csv(tmp_path / "again" / "fold0" / "val_predictions.csv")
    pd.testing.assert_frame_equal(a, b)
    # and a missing first-stage fold is a one-line error naming it
    shutil.rmtree(poisoned / "fold2")
    with pytest.raises(CxrltError, match=r"stage2.from '.*poisoned': fold 2 is not finished \(no .*fold2/done.json\)"):
        train_fold(cfg, 2, progress=False)


def test_second_stage_refuses_a_recipe_unlike_its_first_stage(base, first, tmp_path):
    cfg = s2cfg(base, tmp_path / "x", first, "crt", "model.drop_rate=0.1", "cache.size=48")
    with pytest.raises(CxrltError, match=r"image_size: 32 -> 48.*start this recipe with `base:"):
        train_fold(cfg, 0, progress=False)
    with pytest.raises(CxrltError, match="stage2.method must be one of crt, tau_norm, fusion"):
        train_fold(s2cfg(base, tmp_path / "y", first, "lws"), 0, progress=False)


def test_crt_resume_after_a_kill_equals_an_uninterrupted_run(base, first, crt, tmp_path, capsys):
    _, out = crt
    cfg = s2cfg(base, tmp_path / "killed", first, "crt")
    r = train_fold(cfg, 1, progress=False, stop_after=1)
    assert r["stopped"] and r["epoch"] == 1
    capsys.readouterr()
    train_fold(cfg, 1, progress=False)
    assert f"fold 1: crt over '{first}' done, val mAP " in capsys.readouterr().out      # stage 03's line
    a = pd.read_csv(out / "fold1" / "log.csv").drop(columns=["img_s", "time_s"])
    b = pd.read_csv(tmp_path / "killed" / "fold1" / "log.csv").drop(columns=["img_s", "time_s"])
    pd.testing.assert_frame_equal(a, b)


def test_tau_norm_scales_class_weights_and_keeps_each_class_ranking(base, first, tmp_path, capsys):
    cfg = s2cfg(base, tmp_path / "tau", first, "tau_norm", "stage2.tau_grid=[0,1,2]")
    r = train_fold(cfg, 0, progress=False)
    tau = r["tau"]
    assert f"fold 0: tau-norm picks tau={tau:g} (" in capsys.readouterr().out            # stage 03's line
    log = pd.read_csv(tmp_path / "tau" / "fold0" / "log.csv")
    assert list(log.tau) == [0, 1, 2] and tau == log.tau[log.train_macro_f1.idxmax()]
    assert log.val_mAP.nunique() == 1           # a positive per-class scale leaves every class's AP as it was
    w0 = load(cfg.stage2["from"] + "/fold0/best.pt")["model"]["fc.weight"].double()
    w = load(tmp_path / "tau" / "fold0" / "best.pt")["model"]["fc.weight"].double()
    assert torch.allclose(w, w0 / w0.norm(dim=1, keepdim=True) ** tau, atol=1e-6)
    spec, df, _, y, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    first_val = pd.read_csv(cfg.stage2["from"] + "/fold0/val_predictions.csv", dtype={spec.id_col: str})
    tau_val = pd.read_csv(tmp_path / "tau" / "fold0" / "val_predictions.csv", dtype={spec.id_col: str})
    yv = pd.DataFrame(y, index=df[spec.id_col]).loc[tau_val[spec.id_col]].to_numpy()
    for c, name in enumerate(spec.labels):
        if 0 < yv[:, c].sum() < len(yv):
            assert average_precision_score(yv[:, c], tau_val[name]) == pytest.approx(
                average_precision_score(yv[:, c], first_val.set_index(spec.id_col).loc[tau_val[spec.id_col], name]),
                abs=1e-6)


@pytest.fixture(scope="module")
def fusion(base, first, tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion")
    cfg = s2cfg(base, out, first, "fusion", "stage2.grid=1", "stage2.dim=16", "stage2.heads=4", "stage2.layers=1")
    for k in range(5):
        train_fold(cfg, k, progress=False)
    predict_experiment(cfg, progress=False)
    return cfg, out


def test_fusion_study_predictions_from_file_alone_match_training(fusion):
    cfg, out = fusion
    spec, df, files, y, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    val = pd.read_csv(out / "fold0" / "val_predictions.csv", dtype={spec.id_col: str})
    study = df.set_index(spec.id_col).loc[val[spec.id_col], spec.study_col].to_numpy()
    names = list(spec.labels)
    per_study = val[names].groupby(study).nunique()
    assert (per_study == 1).all().all()               # every image of a study gets the study's prediction
    assert len(val) == (fold_of == 0).sum()
    net, arch = load_model(out / "fold0" / "best.pt")
    assert arch["kind"] == "study_fusion" and arch["backbone"]["model"]["name"] == "test_resnet"
    oof = pd.read_csv(out / "oof.csv", dtype={spec.id_col: str}).set_index(spec.id_col)
    assert np.allclose(oof.loc[val[spec.id_col], names].to_numpy(), val[names].to_numpy(), atol=2e-5)


def test_fusion_experiment_served_answers_its_study_prediction(fusion):
    """The web page's predictor reads a study's films together, like stage 04 did."""
    pytest.importorskip("gradio")
    from cxrlt.serve.predictor import Predictor

    cfg, out = fusion
    spec, df, files, y, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    multi = df[fold_of == 1].groupby(spec.study_col).filter(lambda g: len(g) > 1)
    sid = multi[spec.study_col].iloc[0]
    rows = df[df[spec.study_col] == sid]
    uploads = [(p, (spec.image_root / p).read_bytes()) for p in rows[spec.path_col]]
    r = Predictor(out, folds=[1]).predict(uploads, list(rows[spec.view_col]))
    oof = pd.read_csv(out / "oof.csv", dtype={spec.id_col: str}).set_index(spec.id_col)
    want = oof.loc[rows[spec.id_col].iloc[0]]
    assert r["images"] == len(rows) >= 2
    for f in r["findings"]:
        assert f["probability"] == pytest.approx(want[f["label"]], abs=1e-5)


def test_comparison_counts_a_second_stage_s_feature_and_training_seconds(crt, base, first, tmp_path):
    from cxrlt.ensemble.compare import train_minutes

    _, out = crt
    secs = [json.loads((out / f"fold{k}" / "done.json").read_text())["seconds"]["total"] for k in range(5)]
    assert train_minutes(out) == pytest.approx(sum(secs) / 60)
    tau = tmp_path / "tau"
    train_fold(s2cfg(base, tau, first, "tau_norm"), 0, progress=False)   # log.csv without time_s
    assert train_minutes(tau) > 0


def test_images_without_a_study_id_are_studies_of_their_own():
    from types import SimpleNamespace

    from cxrlt.data.studies import study_groups

    df = pd.DataFrame({"study": ["a", None, "b", np.nan, "a"]})
    groups = study_groups(df, SimpleNamespace(study_col="study", name="x"))
    assert [g.tolist() for g in groups] == [[0, 4], [2], [1], [3]]
