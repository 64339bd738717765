import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cfg_at

from cxrlt.config import Config
from cxrlt.data.images import read_cached
from cxrlt.data.labels import LABELS_2023
from cxrlt.data.loader import CxrDataset, make_loader
from cxrlt.data.experiment import Experiment
from cxrlt.data.splits import training_data
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predict import predict_experiment
from cxrlt.metrics import per_class
from cxrlt.models.checkpoint import load
from cxrlt.models.factory import create_model
from cxrlt.models.inference import combine_tta, predict_loader, to_model_input


def test_oof_covers_each_image_once_from_the_model_that_did_not_train_on_it(base, trained, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(trained, out)
    cfg = cfg_at(base, out, "predict.tta=none", "predict.study_aggregation=false")
    predict_experiment(cfg, progress=False)
    spec, df, files, y, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    oof = pd.read_csv(out / "oof.csv", dtype={"dicom_id": str})
    assert list(oof.dicom_id) == list(df.dicom_id) and oof.fold.tolist() == fold_of.tolist()
    imgs = torch.stack([torch.from_numpy(read_cached(f))[None] for f in files])
    preds = {}
    for k in range(5):
        ck = load(out / f"fold{k}" / "best.pt")
        net = create_model(Config(dict(cfg.model, pretrained=False)), 26)
        net.load_state_dict(ck["model"])
        with torch.no_grad():
            preds[k] = torch.sigmoid(net.eval()(to_model_input(imgs, ck["mean"], ck["std"], False))).numpy()
    p = oof[LABELS_2023].to_numpy()
    for k in range(5):
        rows = fold_of == k
        assert np.allclose(p[rows], preds[k][rows], atol=1e-5)                      # its own fold's model
        assert not np.allclose(p[rows], preds[(k + 1) % 5][rows], atol=1e-3)        # not another's


def test_demo_report_matches_sklearn_and_studies_share_rows(base, trained):
    cfg = cfg_at(base, trained)
    predict_experiment(cfg, progress=False)
    spec, df, files, y, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    oof = pd.read_csv(trained / "oof.csv", dtype={"dicom_id": str})
    m = json.loads((trained / "metrics.json").read_text())
    assert m["mAP"] == pytest.approx(np.nanmean(per_class(y, oof[LABELS_2023].to_numpy())), abs=1e-12)
    assert m["final"] == "tta/study" and set(m["variants"]) == {"no_tta/image", "no_tta/study", "tta/image", "tta/study"}
    assert set(m["groups"]) == {"head", "medium", "tail"} and len(m["per_class"]) == 26
    by_study = oof.assign(study=df.study_id.to_numpy()).groupby("study")[LABELS_2023].nunique()
    assert by_study.max().max() == 1                                              # one row per study
    test = pd.read_csv(spec.test_csv, dtype=str)
    tp = pd.read_csv(trained / "test.csv", dtype={"dicom_id": str})
    assert list(tp.dicom_id) == list(test.dicom_id) and tp[LABELS_2023].stack().between(0, 1).all()
    assert (trained / "development.csv").is_file() and "development" in m
    for png in ("per_class_ap.png", "pr_rarest.png"):
        assert (trained / png).stat().st_size > 5000
    assert predict_experiment(cfg, progress=False)["skipped"]                     # up to date: skipped
    os.utime(spec.test_csv)                                                       # a newer test CSV
    assert not predict_experiment(cfg, progress=False)["skipped"]


def test_hflip_tta_leaves_a_symmetric_image_unchanged(tmp_path):
    import cv2
    from accelerate import Accelerator

    rng = np.random.default_rng(0)
    files = []
    for i in range(6):
        a = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        img = a if i % 2 else np.maximum(a, a[:, ::-1])          # even: left-right symmetric
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), img)
    net = create_model(Config(name="test_resnet", pretrained=False, pretrained_path=None, require_pretrained=False,
                              in_chans=1, drop_rate=0.0, drop_path_rate=0.0), 5)
    acc = Accelerator(cpu=True)
    loader = acc.prepare(make_loader(CxrDataset(files), 3, 0, False))
    logits, _, idx, flipped = predict_loader(net, loader, acc, 0.5, 0.25, False, hflip=True)
    assert list(flipped) == ["hflip"]                             # extra views: a dict view -> logits
    plain, tta = combine_tta(logits, None), combine_tta(logits, flipped, "prob")
    sym = (idx % 2 == 0).numpy()
    assert torch.allclose(tta[sym], plain[sym], atol=1e-6)
    assert not torch.allclose(tta[~sym], plain[~sym], atol=1e-4)
    assert torch.allclose(combine_tta(logits, flipped, "logit")[sym], plain[sym], atol=1e-6)


def test_bad_inputs_give_one_line_errors(base, trained, tmp_path, tiny_root):
    partial = tmp_path / "partial"
    shutil.copytree(trained, partial)
    (partial / "fold1" / "best.pt").unlink()
    with pytest.raises(CxrltError, match=r"^fold 1: no checkpoint .*fold1/best.pt"):
        predict_experiment(cfg_at(base, partial), progress=False)
    shutil.copy(trained / "fold1" / "best.pt", partial / "fold1" / "best.pt")
    (partial / "fold1" / "done.json").unlink()         # best.pt of a fold still training
    with pytest.raises(CxrltError, match=r"^fold 1: not finished \(no done.json beside .*fold1/best.pt\)"):
        predict_experiment(cfg_at(base, partial), progress=False)
    with pytest.raises(CxrltError, match="recipe changed since this checkpoint .*image_size"):
        predict_experiment(cfg_at(base, trained, "cache.size=48"), progress=False)
    # a test CSV with an id that has no cached image
    root = tmp_path / "input"
    shutil.copytree(tiny_root / "demo", root / "demo")
    test = pd.read_csv(root / "demo" / "test.csv", dtype=str)
    test.loc[len(test)] = test.iloc[0].replace({test.dicom_id.iloc[0]: "not-in-cache"})
    test.to_csv(root / "demo" / "test.csv", index=False)
    with pytest.raises(CxrltError, match="1 of 41 ids have no cached image .*'not-in-cache'") as e:
        predict_experiment(cfg_at(base, trained, f"data.input_dir={root}"), progress=False)
    assert "\n" not in str(e.value)


def test_pooled_and_per_fold_figures_and_label_free_fold_normalisation(base, trained, tmp_path, tiny_root):
    from scipy.stats import rankdata
    from sklearn.metrics import average_precision_score

    with pytest.raises(CxrltError, match=r"^predict\.oof_normalise must be one of none, rank, logit_standardise, not 'z'$"):
        predict_experiment(cfg_at(base, tmp_path / "empty", "predict.oof_normalise=z"), progress=False)
    with pytest.raises(CxrltError, match=r"^predict\.bootstrap=-5: must be >= 0$"):
        predict_experiment(cfg_at(base, tmp_path / "empty", "predict.bootstrap=-5"), progress=False)
    runs = {}
    # the same checkpoints predicting with the real training labels and with the labels shuffled over rows
    root = tmp_path / "input"
    shutil.copytree(tiny_root / "demo", root / "demo")
    train = pd.read_csv(root / "demo" / "train.csv", dtype=str, keep_default_na=False)
    train[LABELS_2023] = train[LABELS_2023].sample(frac=1, random_state=0).to_numpy()
    train.to_csv(root / "demo" / "train.csv", index=False)
    for run, more in (("real", []), ("shuffled", [f"data.input_dir={root}"])):
        out = tmp_path / run
        shutil.copytree(trained, out)
        predict_experiment(cfg_at(base, out, "predict.tta=none", "predict.oof_normalise=rank", *more), progress=False)
        runs[run] = {f: (out / f).read_text() for f in ("oof.csv", "test.csv", "development.csv")}
    assert runs["real"] == runs["shuffled"]                        # normalisation never reads a label
    out = tmp_path / "real"
    cfg = cfg_at(base, out, "predict.tta=none", "predict.oof_normalise=rank")
    spec, df, files, y, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    m = json.loads((out / "metrics.json").read_text())
    assert m["final"] == "no_tta/study/rank" and m["settings"]["oof_normalise"] == "rank"
    oof = pd.read_csv(out / "oof.csv", dtype={"dicom_id": str})
    p = oof[LABELS_2023].to_numpy()
    per = []
    for k in range(5):                                             # per-fold figures: scikit-learn on each fold
        r = fold_of == k
        per.append(np.mean([average_precision_score(y[r, c], p[r, c]) for c in range(26) if y[r, c].sum() > 0]))
        assert m["folds"]["per_fold"][str(k)]["mAP"] == pytest.approx(per[-1], abs=1e-12)
        assert np.allclose(p[r], (rankdata(p[r], axis=0) - 0.5) / r.sum(), atol=1e-7)   # mid-rank quantiles in the fold
    assert m["folds"]["mean"]["mAP"] == pytest.approx(np.mean(per), abs=1e-12)
    assert m["folds"]["std"]["mAP"] == pytest.approx(np.std(per, ddof=1), abs=1e-12)
    assert m["per_fold"] == {str(k): pytest.approx(v, abs=1e-12) for k, v in enumerate(per)}
    assert m["drift"]["gap"] == pytest.approx(np.mean(per) - m["mAP"], abs=1e-12)
    assert set(m["drift"]["fold_mean_prob"]) == {str(k) for k in range(5)}
    assert {g: v["n_images"] for g, v in m["by_view"].items()} == {
        g: int(n) for g, n in pd.Series(df.ViewPosition.map({"PA": "frontal", "AP": "frontal", "LATERAL": "lateral",
                                                             "LL": "lateral"}).fillna("other")).value_counts().items()}
    assert set(m["development"]["by_view"]) <= {"frontal", "lateral", "other"} and "mAP" in m["development"]
    assert set(m["variants_vs_final"]) == set(m["variants"]) - {m["final"]}
    assert all(v["lo"] <= v["hi"] for v in m["variants_vs_final"].values())
    # none: not up to date (a setting of stage 04), other test predictions, the raw final
    none = cfg_at(base, out, "predict.tta=none")
    r = predict_experiment(none, progress=False)
    assert not r["skipped"] and r["final"] == "no_tta/study" and r["mAP"] == pytest.approx(m["variants"]["no_tta/study"])
    assert (out / "test.csv").read_text() != runs["real"]["test.csv"]
    assert r["folds"]["mean"]["mAP"] == pytest.approx(m["folds"]["mean"]["mAP"], abs=1e-6)   # monotone per fold
