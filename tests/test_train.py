import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEMO, ROOT, cfg_at

from cxrlt.errors import CxrltError
from cxrlt.models.checkpoint import load
from cxrlt.models.factory import create_model
from cxrlt.train.fold import train_fold


def fold_ids(cfg, fold):
    f = pd.read_csv(os.path.join(cfg.folds.dir, "demo_folds.csv"), dtype=str)
    return set(f.dicom_id[f.fold == str(fold)])


def test_tiny_run_learns_and_writes_artefacts(base, tmp_path):
    cfg = cfg_at(base, tmp_path)
    r = train_fold(cfg, 0, progress=False)
    d = tmp_path / "fold0"
    log = pd.read_csv(d / "log.csv")
    assert log.epoch.tolist() == [1, 2, 3]
    assert log.train_loss.iloc[-1] < log.train_loss.iloc[0]
    assert {"train_loss", "val_loss", "val_mAP", "val_mAUC", "lr", "img_s"} <= set(log.columns)
    for name in ("best.pt", "last.pt", "curve.png", "done.json", "val_predictions.csv"):
        assert (d / name).is_file(), name
    assert (tmp_path / "config.yaml").is_file()
    best = load(d / "best.pt")
    assert r["best_mAP"] == pytest.approx(log.val_mAP.max()) and best["epoch"] + 1 == r["best_epoch"]
    m = create_model(cfg.model, 26)
    m.load_state_dict(best["model"])                     # best.pt holds plain model weights
    preds = pd.read_csv(d / "val_predictions.csv")
    assert set(preds.dicom_id) == fold_ids(cfg, 0) and preds.dicom_id.is_unique
    # val loss is plain BCE of the best epoch's predictions, whatever the training loss (focal here)
    from cxrlt.data.experiment import Experiment
    from cxrlt.data.splits import training_data

    spec, df, _, y, _ = training_data(cfg, Experiment.of(cfg).spec)
    y = pd.DataFrame(y, index=df.dicom_id).loc[preds.dicom_id].to_numpy()
    p = preds.iloc[:, 1:].to_numpy().clip(1e-12, 1 - 1e-12)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert log.val_loss[r["best_epoch"] - 1] == pytest.approx(bce, rel=1e-4)


@pytest.mark.parametrize("opt", [(), ("train.optimizer=sgd", "train.scheduler=tanh", "train.warmup_epochs=0.5")])
def test_resume_continues_exactly(base, tmp_path, opt):
    """Also with another timm optimizer and schedule (recipe keys): the schedule's update count is
    part of last.pt, so the resumed run's lr column equals the uninterrupted run's."""
    full = cfg_at(base, tmp_path / "a", *opt)
    train_fold(full, 1, progress=False)
    cut = cfg_at(base, tmp_path / "b", *opt)
    r = train_fold(cut, 1, progress=False, stop_after=1)          # as if killed after epoch 1
    assert r["stopped"] and pd.read_csv(tmp_path / "b/fold1/log.csv").epoch.tolist() == [1]
    train_fold(cut, 1, progress=False)
    a, b = pd.read_csv(tmp_path / "a/fold1/log.csv"), pd.read_csv(tmp_path / "b/fold1/log.csv")
    assert b.epoch.tolist() == [1, 2, 3]
    cols = ["train_loss", "val_loss", "val_mAP", "lr"]
    np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), rtol=1e-5, atol=1e-7)
    assert b.lr.tolist() == a.lr.tolist() and a.lr.nunique() == 3
    if opt:
        assert isinstance(load(tmp_path / "b/fold1/last.pt")["optimizer"]["param_groups"][0]["momentum"], float)
    wa, wb = load(tmp_path / "a/fold1/last.pt")["model"], load(tmp_path / "b/fold1/last.pt")["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


def test_resume_across_a_drw_switch_is_exact(base, tmp_path):
    drw = ["loss.name=bce", "loss.class_weights=cb", "loss.cb_beta=0.99", "loss.drw_epoch=2", "train.epochs=3"]
    train_fold(cfg_at(base, tmp_path / "a", *drw), 1, progress=False)
    cut = cfg_at(base, tmp_path / "b", *drw)
    assert train_fold(cut, 1, progress=False, stop_after=2)["stopped"]        # killed before the switch
    train_fold(cut, 1, progress=False)
    a, b = pd.read_csv(tmp_path / "a/fold1/log.csv"), pd.read_csv(tmp_path / "b/fold1/log.csv")
    assert a.loss_weighted.tolist() == [False, False, True] == b.loss_weighted.tolist()
    cols = ["train_loss", "val_loss", "val_mAP", "lr"]
    np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), rtol=1e-5, atol=1e-7)


def test_finished_fold_is_skipped_unless_forced(base, tmp_path):
    cfg = cfg_at(base, tmp_path, "train.epochs=1")
    train_fold(cfg, 2, progress=False)
    stamp = (tmp_path / "fold2/log.csv").stat().st_mtime_ns
    assert train_fold(cfg, 2, progress=False)["skipped"]
    assert (tmp_path / "fold2/log.csv").stat().st_mtime_ns == stamp
    assert not train_fold(cfg, 2, progress=False, force=True)["skipped"]
    assert (tmp_path / "fold2/log.csv").stat().st_mtime_ns != stamp


def test_changed_recipe_is_not_resumed(base, tmp_path):
    train_fold(cfg_at(base, tmp_path), 3, progress=False, stop_after=1)
    with pytest.raises(CxrltError, match="recipe changed since this checkpoint .*model"):
        train_fold(cfg_at(base, tmp_path, "model.name=test_efficientnet"), 3, progress=False)


def run_train(base, out, *more):
    return [sys.executable, "src/03_train.py", "--config", str(DEMO), "--fold", "0", *base, f"output_dir={out}", *more]


def test_two_processes_gather_each_val_image_once(base, tmp_path):
    # accelerate 1.x starts one process for `--cpu --num_processes 2`; two CPU ranks (gloo) need the
    # torchrun-based launcher with CPU forced through the environment.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "src/03_train.py", "--config", str(DEMO), "--fold", "4",
           *base, f"output_dir={tmp_path}", "train.epochs=1", "train.val_batch_size=5"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    preds = pd.read_csv(tmp_path / "fold4/val_predictions.csv")
    cfg = cfg_at(base, tmp_path)
    assert preds.dicom_id.is_unique and set(preds.dicom_id) == fold_ids(cfg, 4)


def test_kill_9_then_rerun_finishes_without_repeating_an_epoch(base, tmp_path):
    cmd = run_train(base, tmp_path, "train.epochs=25", "train.max_steps_per_epoch=2")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log = tmp_path / "fold0/log.csv"
    t0 = time.time()
    while not (log.is_file() and len(pd.read_csv(log)) >= 2) and time.time() - t0 < 300:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    logged = pd.read_csv(log).epoch.tolist()
    assert 2 <= len(logged) < 25, "the run was not killed in the middle"
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    redone = [int(line.split("epoch ")[1].split("/")[0]) for line in r.stdout.splitlines()
              if line.startswith("fold 0 epoch ")]
    assert redone and min(redone) > max(logged)                # no logged epoch was trained again
    assert pd.read_csv(log).epoch.tolist() == list(range(1, 26))
