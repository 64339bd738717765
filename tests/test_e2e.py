"""The whole pipeline through run_all.sh on a tiny demo, in a copy of the project (minutes): one
pass, then a second that redoes nothing. What run_all.sh runs for --compare lists, second stages and
the single-label demo: tests/test_run_all.py (its calls, recorded); what those stages compute:
test_compare, test_second_stage, test_multiclass, test_train (DRW)."""
import json
import os
import subprocess
import sys
import zipfile

import pandas as pd
import pytest
from conftest import project_copy

TINY = ["cache.size=32", "train.epochs=2", "train.batch_size=16", "train.workers=0", "train.val_batch_size=64",
        "predict.workers=0", "cache.workers=1", "train.log_every=5"]


@pytest.mark.e2e
def test_run_all_on_a_tiny_demo(tmp_path):
    proj = project_copy(tmp_path)
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1",
               DEMO_ARGS="--n-train 300 --n-dev 60 --n-test 60 --max-side 96 --workers 1")
    r = subprocess.run(["bash", "run_all.sh", *TINY], cwd=proj, capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "no competition data under input/" in r.stdout
    exp = proj / "experiments"
    folds = pd.read_csv(proj / "folds" / "demo_folds.csv")
    assert len(folds) == 300 and set(folds.fold) == set(range(3))
    for name in ("demo", "demo_effnet"):
        for k in range(3):
            for f in ("best.pt", "last.pt", "log.csv", "done.json"):
                assert (exp / name / f"fold{k}" / f).is_file(), (name, k, f)
        oof = pd.read_csv(exp / name / "oof.csv")
        assert len(oof) == 300 and oof.dicom_id.is_unique
        assert len(pd.read_csv(exp / name / "test.csv")) == 60
    blend = json.loads((exp / "demo_blend" / "metrics.json").read_text())
    assert set(blend["members"]) == {"demo", "demo_effnet"} and "mAP_honest" in blend
    th = json.loads((exp / "demo_blend" / "thresholds.json").read_text())
    assert len(th["thresholds"]) == 26
    zpath = proj / "submissions" / "demo_blend.zip"
    with zipfile.ZipFile(zpath) as z:
        assert z.namelist() == ["demo_blend.csv"]
        assert z.read("demo_blend.csv") == (proj / "submissions" / "demo_blend.csv").read_bytes()
    assert len(pd.read_csv(proj / "submissions" / "log.csv")) == 1
    assert "OOF mAP" in r.stdout and "submission" in r.stdout
    # everything is complete: a second run redoes nothing (no epoch, no checkpoint or prediction rewritten)
    kept = sorted([*exp.glob("*/fold*/*"), *exp.glob("*/*.csv"), *exp.glob("*/*.json"), proj / "folds" / "demo_folds.csv"])
    stamps = {f: f.stat().st_mtime_ns for f in kept if f.is_file() and f.name != ".lock"}   # a lock is signed per run
    r2 = subprocess.run(["bash", "run_all.sh", *TINY], cwd=proj, capture_output=True, text=True, env=env, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "epoch 1/2" not in r2.stdout and "already finished" in r2.stdout and "up to date" in r2.stdout
    assert len(stamps) > 40 and {f for f, s in stamps.items() if f.stat().st_mtime_ns != s} == set()
