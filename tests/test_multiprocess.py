"""The paths a user with N GPUs runs, exercised with two CPU processes (gloo): stage 04's
prediction, a second stage's sharded feature cache and the full-data fit. The process boundary is
the behaviour here, so these tests launch `accelerate` for real."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, ROOT, cfg_at

from cxrlt.evaluate.predict import predict_experiment
from cxrlt.train.fold import train_fold

# accelerate 1.x starts one process for `--cpu --num_processes 2`; two CPU ranks (gloo) need the
# torchrun-based launcher with the CPU forced through the environment.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
          "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch2(script, *args):
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run([*LAUNCH, f"src/{script}", "--config", str(DEMO), *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def copy_of(trained, dest):
    shutil.copytree(trained, dest, ignore=shutil.ignore_patterns("features", "*.csv", "metrics.json", "*.png",
                                                                  "predict_config.yaml"))
    return dest


def test_stage_04_with_two_processes_equals_one(base, trained, tmp_path):
    ov = ["predict.bootstrap=0", "train.trackers=[]"]
    one, two = copy_of(trained, tmp_path / "one"), copy_of(trained, tmp_path / "two")
    r1 = predict_experiment(cfg_at(base, one, *ov), progress=False)
    launch2("04_predict.py", *base, f"output_dir={two}", *ov)
    for name in ("oof.csv", "test.csv", "development.csv"):
        a, b = pd.read_csv(one / name), pd.read_csv(two / name)
        assert a.iloc[:, 0].tolist() == b.iloc[:, 0].tolist(), name          # every image once, same order
        np.testing.assert_allclose(b.iloc[:, 1:].to_numpy(), a.iloc[:, 1:].to_numpy(), atol=1e-6, err_msg=name)
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["mAP"] == pytest.approx(r1["mAP"], abs=1e-6)


def test_second_stage_feature_cache_is_sharded_and_written_once(base, trained, tmp_path):
    s2 = ["stage2.method=crt", "stage2.cache_dtype=float32", "stage2.epochs=1", "stage2.batch_size=32",
          "stage2.workers=0", "train.trackers=[]", "predict.tta=none", "predict.study_aggregation=false",
          "predict.bootstrap=0", "loss.name=bce"]
    first1, first2 = copy_of(trained, tmp_path / "first1"), copy_of(trained, tmp_path / "first2")
    train_fold(cfg_at(base, tmp_path / "s1", f"stage2.from={first1}", *s2), 0, progress=False)
    launch2("03_train.py", "--fold", "0", *base, f"output_dir={tmp_path / 's2'}", f"stage2.from={first2}", *s2)
    files1 = sorted(p.relative_to(first1) for p in (first1 / "features").rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(first2) for p in (first2 / "features").rglob("*") if p.is_file())
    assert files1 == files2 and files2, files2               # the same finished store, no shard or partial left
    for f in (f for f in files2 if f.suffix == ".npy"):
        a, b = np.load(first1 / f), np.load(first2 / f)
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=1e-5, err_msg=str(f))       # each row computed by one of the ranks
    assert (tmp_path / "s2" / "fold0" / "done.json").is_file() and (tmp_path / "s2" / "fold0" / "best.pt").is_file()


def test_full_data_fit_with_two_processes(base, tmp_path):
    r = launch2("03_train.py", "--full", *base, f"output_dir={tmp_path}", "train.full_epochs=1", "train.trackers=[]")
    assert "2 process(es)" in r.stdout
    full = tmp_path / "full"
    assert (full / "done.json").is_file() and (full / "best.pt").is_file()
    assert pd.read_csv(full / "log.csv").epoch.tolist() == [1]          # one epoch, logged once (main process)
    assert not list(full.glob("*.tmp*"))
