"""The single-label task (data.task=multiclass) and the benchmark's protocol (folds.scheme=given):
softmax losses against hand-computed values, the benchmark's metrics against scikit-learn, the
one-label-per-row check, and a tiny run whose outputs have the multilabel shapes."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from sklearn.metrics import balanced_accuracy_score, f1_score

from cxrlt.config import Config, load_config
from cxrlt.errors import CxrltError
from cxrlt.losses import build_loss
from cxrlt.metrics import count_groups, multiclass_metrics

LOSS = dict(name="ce", alpha=0.25, gamma=2.0, label_smoothing=0.0, class_weights=None, cb_beta=0.9999, drw_epoch=0,
            ldam_max_m=0.5, ldam_s=30.0)


def loss_of(counts, epochs=4, **kw):
    return build_loss(Config(dict(LOSS, **kw)), np.asarray(counts, float), int(sum(counts)), epochs, task="multiclass")


def test_cross_entropy_with_class_weights_is_torch_s_weighted_mean():
    torch.manual_seed(0)
    z, t = torch.randn(7, 4), torch.tensor([0, 1, 3, 3, 2, 0, 3])
    counts = [40, 10, 5, 1]
    for mode in (None, "rw", "cb"):
        loss = loss_of(counts, class_weights=mode)
        w = loss.weight if mode else None
        assert torch.allclose(loss(z, F.one_hot(t, 4).float()), F.cross_entropy(z, t, weight=w), atol=1e-6)
    # rw: n / (C n_c), normalised to mean 1
    w = np.array([1 / 40, 1 / 10, 1 / 5, 1])
    assert np.allclose(loss_of(counts, class_weights="rw").weight.numpy(), w / w.mean(), atol=1e-6)


def test_softmax_focal_and_ldam_by_hand():
    z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    y = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    p = torch.softmax(z, 1)
    want = -((1 - p[0, 0]) ** 2 * torch.log(p[0, 0]) + (1 - p[1, 2]) ** 2 * torch.log(p[1, 2])) / 2
    assert torch.allclose(loss_of([10, 10, 10], name="focal")(z, y), want, atol=1e-6)
    # LDAM: margins 0.5 * n^(-1/4) / max; the true logit lowered, times s = 30, then cross-entropy
    counts = [81, 16, 1]
    m = np.array([81, 16, 1]) ** -0.25
    m = 0.5 * m / m.max()
    zs = 30 * (z - torch.tensor(m, dtype=torch.float32) * y)
    want = F.cross_entropy(zs, y.argmax(1))
    assert torch.allclose(loss_of(counts, name="ldam")(z, y), want, atol=1e-5)


def test_deferred_reweighting_switches_on_at_its_epoch_and_smoothing_goes_to_uniform():
    z, y = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    loss = loss_of([100, 10, 1], name="ldam", ldam_s=1.0, class_weights="cb", drw_epoch=2)
    loss.set_epoch(1)
    plain = loss(z, y)
    loss.set_epoch(2)
    w = loss.weight[:2]
    assert plain > 0.1 and torch.allclose(plain, loss.per_image(z, y, y).mean())
    assert torch.allclose(loss(z, y), (w * loss.per_image(z, y, y)).sum() / w.sum())
    ls = loss_of([5, 5, 5], label_smoothing=0.3)
    soft = y * 0.7 + 0.1
    assert torch.allclose(ls(z, y), -(soft * F.log_softmax(z, 1)).sum(1).mean(), atol=1e-6)


def test_a_loss_of_the_other_task_is_refused_in_one_line():
    with pytest.raises(CxrltError, match="multilabel loss"):
        loss_of([3, 3], name="bce")
    with pytest.raises(CxrltError, match="multiclass loss"):
        build_loss(Config(dict(LOSS, name="ce")), np.array([3.0, 3.0]), 6, 2)


def test_benchmark_metrics_equal_scikit_learn_and_group_by_training_counts():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, 200)
    p = rng.random((200, 5)) + np.eye(5)[true] * rng.random((200, 1))
    y = np.eye(5)[true]
    counts = [2000, 500, 100, 99, 3]
    m = multiclass_metrics(y, p, list("abcde"), counts, (100, 1000))
    pred = p.argmax(1)
    assert m["bAcc"] == pytest.approx(balanced_accuracy_score(true, pred))
    assert m["mF1"] == pytest.approx(f1_score(true, pred, average="macro"))
    assert count_groups(counts, 100, 1000) == ["head", "medium", "medium", "tail", "tail"]
    acc = [(pred[true == c] == c).mean() for c in range(5)]
    assert m["groups"]["head"] == pytest.approx(acc[0])
    assert m["groups"]["medium"] == pytest.approx((acc[1] + acc[2]) / 2)
    assert m["groups"]["tail"] == pytest.approx((acc[3] + acc[4]) / 2)
    assert m["avg"] == pytest.approx(np.mean([acc[0], (acc[1] + acc[2]) / 2, (acc[3] + acc[4]) / 2]))
    assert m["overall"] == pytest.approx(np.mean(acc)) == pytest.approx(m["bAcc"])


@pytest.fixture(scope="module")
def sl_root(tmp_path_factory):
    from cxrlt.data.demo import make_single_label_demo

    root = tmp_path_factory.mktemp("slinput")
    make_single_label_demo(root / "demo-single-label", n_train=120, val_per_class=2, test_per_class=2, n_test=30,
                           max_side=48, seed=1, workers=1, progress=False)
    return root


def sl_cfg(root, tmp, *more):
    return load_config(ROOT / "experiments" / "demo_sl_ce.yaml", [
        f"data.input_dir={root}", f"cache.dir={tmp / 'cache'}", "cache.size=32", "cache.workers=1",
        f"output_dir={tmp / 'exp'}", "train.epochs=2", "train.batch_size=16", "train.val_batch_size=16",
        "train.workers=0", "train.trackers=[]", "predict.workers=0", "predict.batch_size=16", "predict.bootstrap=0",
        *more])


def test_a_row_without_exactly_one_label_is_a_one_line_error(sl_root, tmp_path):
    from cxrlt.data.datasets import read_split, resolve_dataset

    d = tmp_path / "demo-single-label"
    d.mkdir()
    train = pd.read_csv(sl_root / "demo-single-label" / "train.csv", dtype=str)
    train.loc[3, "Nodule"] = "1" if train.loc[3, "Nodule"] == "0" else "0"   # two labels, or none
    train.to_csv(d / "train.csv", index=False)
    spec = resolve_dataset(sl_cfg(tmp_path, tmp_path).data)
    with pytest.raises(CxrltError, match=r"train.csv: row 5: [02] labels set, data.task=multiclass needs exactly one"):
        read_split(spec, "train", labels="required")


def test_mosaic_and_union_mixes_are_refused_for_one_label_per_image(sl_root, tmp_path):
    from cxrlt.data.datasets import check_task, resolve_dataset

    for bad, msg in ((["augment.mosaic=0.5"], "augment.mosaic=0.5"),
                     (["augment.mixup=1.0", "augment.mix_labels=union"], "mix_labels=linear"),
                     (["predict.normal_gating=1.0"], "normal_gating")):
        cfg = sl_cfg(sl_root, tmp_path, *bad)
        with pytest.raises(CxrltError, match=msg):
            check_task(cfg, resolve_dataset(cfg.data))


@pytest.fixture(scope="module")
def sl_run(sl_root, tmp_path_factory):
    """The single-label demo's baseline trained (given scheme) and predicted; the training set recorded."""
    import cxrlt.train.image as fold_mod       # the image-model strategy builds the datasets
    from cxrlt.data.stages import prepare_dataset_cache
    from cxrlt.train.fold import train_fold
    from cxrlt.evaluate.predict import predict_experiment

    tmp = tmp_path_factory.mktemp("slrun")
    cfg = sl_cfg(sl_root, tmp)
    prepare_dataset_cache(cfg, progress=False)
    seen = []
    real = fold_mod.CxrDataset

    def spy(files, *a, **kw):
        seen.append([str(f) for f in files])
        return real(files, *a, **kw)

    fold_mod.CxrDataset = spy
    try:
        done = train_fold(cfg, 0, progress=False)
    finally:
        fold_mod.CxrDataset = real
    r = predict_experiment(cfg, progress=False)
    return cfg, done, r, seen


def test_given_scheme_trains_on_the_training_csv_and_never_on_validation_rows(sl_run, sl_root):
    from cxrlt.data.images import Cache, safe_name

    cfg, done, _, seen = sl_run
    d = sl_root / "demo-single-label"
    train_ids, val_ids = (pd.read_csv(d / f, dtype=str)["id"] for f in ("train.csv", "balanced-val.csv"))
    cache = Cache.from_config(cfg, "demo-single-label")
    assert sorted(seen[0]) == sorted(str(cache.path(i)) for i in train_ids)          # the training set
    assert sorted(seen[1]) == sorted(str(cache.path(i)) for i in val_ids)            # the validation set
    assert not set(seen[0]) & {str(cache.path(i)) for i in val_ids}
    assert done["score"] == "val_bAcc" and 0 <= done["best_score"] <= 1
    assert safe_name("a/b") != "a/b"      # (cache names are made safe: compared through cache.path)


def test_multiclass_outputs_have_the_multilabel_shapes_and_benchmark_figures(sl_run, sl_root):
    cfg, _, r, _ = sl_run
    out = cfg.out_dir if "out_dir" in cfg else r["dir"]
    d = sl_root / "demo-single-label"
    names = list(pd.read_csv(d / "train.csv", nrows=0).columns[2:-1])
    oof, test = pd.read_csv(r["dir"] / "oof.csv"), pd.read_csv(r["dir"] / "test.csv")
    assert list(oof.columns) == ["id", *names, "fold"] and list(test.columns) == ["id", *names]
    assert oof["id"].tolist() == pd.read_csv(d / "balanced-val.csv", dtype=str)["id"].tolist()   # OOF = validation CSV
    assert (oof["fold"] == 0).all()
    assert np.allclose(oof[names].sum(1), 1, atol=1e-4) and np.allclose(test[names].sum(1), 1, atol=1e-4)  # softmax
    m = json.loads((r["dir"] / "metrics.json").read_text())
    assert set(m["multiclass"]) == {"oof", "development", "test"}       # balanced-val, balanced-test, test
    dev = pd.read_csv(d / "balanced-test.csv")
    dev_p = pd.read_csv(r["dir"] / "development.csv")
    assert dev_p["id"].tolist() == dev["id"].tolist()
    bacc = balanced_accuracy_score(dev[names].to_numpy().argmax(1), dev_p[names].to_numpy().argmax(1))
    assert m["multiclass"]["development"]["bAcc"] == pytest.approx(bacc)
    for k in ("mAP", "mAUC", "groups", "per_class", "folds"):       # what blend, thresholds and compare read
        assert k in m
    assert not math.isnan(m["multiclass"]["test"]["avg"])
    del out


def test_blend_and_submission_work_on_a_multiclass_experiment(sl_run, tmp_path):
    from cxrlt.ensemble.blend import blend_experiment
    from cxrlt.ensemble.submission import make_submission

    cfg, _, r, _ = sl_run
    bcfg = load_config(ROOT / "experiments" / "demo_sl_ce.yaml", list(cfg.overrides) + [
        f"output_dir={tmp_path / 'blend'}", f"+blend.members=[{r['dir']}, {r['dir']}]", "blend.mode=mean",
        f"submission.dir={tmp_path / 'subs'}"])
    b = blend_experiment(bcfg)
    assert b["mAP"] == pytest.approx(json.loads((r["dir"] / "metrics.json").read_text())["mAP"], abs=1e-9)
    s = make_submission(bcfg)
    sub = pd.read_csv(s["csv"])
    assert len(sub) == len(pd.read_csv(r["dir"] / "test.csv"))


def test_comparison_prints_the_benchmark_layout_with_paired_intervals(sl_run, tmp_path):
    from cxrlt.ensemble.compare import BENCH_COLUMNS, compare_experiments

    cfg, _, r, _ = sl_run
    m = json.loads((r["dir"] / "metrics.json").read_text())["multiclass"]
    cfgs = [load_config(ROOT / "experiments" / "demo_sl_ce.yaml", list(cfg.overrides) + [f"name={n}", "compare.bootstrap=50"])
            for n in ("sl_a", "sl_b")]
    out = compare_experiments(cfgs, tmp_path / "cmp")
    t = out["table"]
    assert list(t.columns) == BENCH_COLUMNS and t.recipe.tolist() == ["sl_a", "sl_b"]
    assert t.loc[0, "avg"] == pytest.approx(m["development"]["avg"]) and t.loc[0, "bAcc"] == pytest.approx(m["test"]["bAcc"])
    assert t.loc[1, "d_bAcc"] == 0 and t.loc[1, "d_bAcc_lo"] == 0 and t.loc[1, "d_bAcc_hi"] == 0   # same model: paired
    assert "d_avg 95 % CI" in out["markdown"] and (tmp_path / "cmp" / "accuracy_by_group.png").is_file()


def test_thresholds_stage_runs_on_a_single_held_out_part(sl_run):
    from cxrlt.ensemble.thresholds import tune_thresholds

    cfg, _, r, _ = sl_run
    t = tune_thresholds(cfg, force=True)
    names = json.loads((r["dir"] / "metrics.json").read_text())["per_class"]
    assert len(t["thresholds"]) == len(names)
    assert t["mF1_honest"] != t["mF1_honest"]        # NaN: no other fold to fit thresholds on


def test_kfold_scheme_on_a_multiclass_task_covers_the_training_csv(sl_root, tmp_path):
    from cxrlt.data.stages import build_folds
    from cxrlt.data.stages import prepare_dataset_cache
    from cxrlt.evaluate.predict import predict_experiment
    from cxrlt.train.fold import train_fold

    cfg = sl_cfg(sl_root, tmp_path, "folds.scheme=kfold", "folds.k=2", f"folds.dir={tmp_path / 'folds'}",
                 "train.epochs=1", "train.max_steps_per_epoch=2")
    prepare_dataset_cache(cfg, progress=False)
    build_folds(cfg)
    for k in (0, 1):
        train_fold(cfg, k, progress=False)
    r = predict_experiment(cfg, progress=False)
    oof = pd.read_csv(r["dir"] / "oof.csv", dtype={"id": str})
    train = pd.read_csv(sl_root / "demo-single-label" / "train.csv", dtype={"id": str})
    assert oof["id"].tolist() == train["id"].tolist() and set(oof["fold"]) == {0, 1}
    m = json.loads((r["dir"] / "metrics.json").read_text())
    assert m["multiclass"]["oof"]["n_images"] == len(train) and set(m["per_fold"]) == {"0", "1"}
    # per-fold figures group classes by the same training-count rule as the headline (all tail here: < 40 images)
    fold0 = m["folds"]["per_fold"]["0"]
    assert (fold0["head"] is None or fold0["head"] != fold0["head"]) and fold0["tail"] is not None
    assert m["groups"]["tail"] is not None and (m["groups"]["head"] is None or m["groups"]["head"] != m["groups"]["head"])


def test_review_fixes_unlabelled_csv_fusion_rank_blend_and_old_logs(sl_root, sl_run, tmp_path):
    from cxrlt.data.datasets import check_task, read_split, resolve_dataset
    from cxrlt.ensemble.blend import blend_experiment
    from cxrlt.evaluate.predict import predict_experiment
    from cxrlt.train.epochs import best_index

    cfg, _, r, _ = sl_run
    spec = resolve_dataset(cfg.data)
    d = tmp_path / "demo-single-label"
    d.mkdir()
    pd.read_csv(sl_root / "demo-single-label" / "test.csv", dtype=str)[["id", "path"]].to_csv(d / "test.csv", index=False)
    unlabelled = resolve_dataset(sl_cfg(tmp_path, tmp_path).data)
    assert len(read_split(unlabelled, "test", labels="auto")) > 0          # an unlabelled test CSV is fine
    fusion = sl_cfg(sl_root, tmp_path, "stage2.from=demo_sl_ce", "stage2.method=fusion")
    with pytest.raises(CxrltError, match="fusion"):
        check_task(fusion, spec)
    ov = list(cfg.overrides) + [f"output_dir={tmp_path / 'b'}", f"+blend.members=[{r['dir']}, {r['dir']}]"]
    with pytest.raises(CxrltError, match="rank"):
        blend_experiment(load_config(ROOT / "experiments" / "demo_sl_ce.yaml", ov + ["blend.mode=rank"]))
    b = blend_experiment(load_config(ROOT / "experiments" / "demo_sl_ce.yaml", ov + ["blend.mode=fit"]))
    assert b["mAP_honest"] != b["mAP_honest"]          # NaN: one held-out part, nothing honest to fit on
    # a changed group rule redoes stage 04 (not "up to date")
    again = predict_experiment(load_config(ROOT / "experiments" / "demo_sl_ce.yaml",
                                           list(cfg.overrides) + ["data.group_counts=[5, 8]"]), progress=False)
    assert not again["skipped"] and again["multiclass"]["oof"]["group_rule"].startswith("head > 8")
    # logs written before val_score existed still find their best epoch
    assert best_index([{"val_mAP": 0.2}, {"val_mAP": 0.3, "val_score": 0.1}, {"val_mAP": 0.1, "val_score": 0.4}]) == 2
