"""The whole pipeline through run_all.sh on a tiny demo, in a copy of the project (minutes)."""
import json
import os
import shutil
import subprocess
import zipfile

import pandas as pd
import pytest
from conftest import ROOT

TINY = ["cache.size=32", "train.epochs=2", "train.batch_size=16", "train.workers=0", "train.val_batch_size=64",
        "predict.workers=0", "cache.workers=1", "train.log_every=5"]


def project_copy(tmp_path):
    """The project without data, outputs or git, its recipes only: what a user checks out."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT, proj, ignore=shutil.ignore_patterns(".git", ".venv", "input", "folds", "submissions",
                                                              "__pycache__", ".pytest_cache", "experiments"))
    (proj / "experiments").mkdir()
    for f in (ROOT / "experiments").glob("*.yaml"):
        shutil.copy(f, proj / "experiments")
    return proj


@pytest.mark.e2e
def test_run_all_on_a_tiny_demo(tmp_path):
    proj = project_copy(tmp_path)
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", shutil.which("python3") or "python3"),
               DEMO_ARGS="--n-train 300 --n-dev 60 --n-test 60 --max-side 96 --workers 1", PYTHONUNBUFFERED="1")
    env["PYTHON"] = __import__("sys").executable
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
    # everything is complete: a second run redoes nothing
    r2 = subprocess.run(["bash", "run_all.sh", *TINY], cwd=proj, capture_output=True, text=True, env=env, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "epoch 1/2" not in r2.stdout and "already finished" in r2.stdout and "up to date" in r2.stdout
    # the method comparison: a list file, one recipe already done (skipped), one long-tail recipe trained
    (exp / "tiny_ldam_drw.yaml").write_text("base: demo_lt_cb_ldam_drw.yaml\nloss:\n  drw_epoch: 1\n")
    (exp / "lt_tiny.txt").write_text("# two methods\ndemo\ntiny_ldam_drw\n")
    r3 = subprocess.run(["bash", "run_all.sh", "--compare", "lt_tiny", *TINY], cwd=proj,
                        capture_output=True, text=True, env=env, timeout=900)
    assert r3.returncode == 0, r3.stdout[-3000:] + r3.stderr[-3000:]
    table = pd.read_csv(exp / "compare_lt_tiny" / "table.csv")
    assert table.recipe.tolist() == ["demo", "tiny_ldam_drw"] and table.mAP.notna().all()
    assert (exp / "compare_lt_tiny" / "mAP_by_group.png").is_file() and "tiny_ldam_drw" in r3.stdout
    log = pd.read_csv(exp / "tiny_ldam_drw" / "fold0" / "log.csv")
    assert log.loss_weighted.tolist() == [False, True]                # DRW switched on at epoch 1
    # second stages chained after their first stage (already trained: skipped), then their table
    r4 = subprocess.run(["bash", "run_all.sh", "--compare", "demo,demo_crt,demo_fusion", *TINY, "stage2.epochs=2",
                         "stage2.grid=1", "stage2.workers=0"], cwd=proj, capture_output=True, text=True, env=env,
                        timeout=900)
    assert r4.returncode == 0, r4.stdout[-3000:] + r4.stderr[-3000:]
    assert "fold 0: crt over 'demo' done" in r4.stdout and "fold 2: fusion over 'demo' done" in r4.stdout
    table = pd.read_csv(exp / "compare_demo-demo_crt-demo_fusion" / "table.csv")
    for name in ("demo_crt", "demo_fusion"):
        oof = pd.read_csv(exp / name / "oof.csv")
        assert len(oof) == 300 and oof.dicom_id.is_unique
        assert (exp / "demo" / "features" / "fold0").is_dir()
    assert table.recipe.tolist() == ["demo", "demo_crt", "demo_fusion"] and table.mAP.notna().all()


@pytest.mark.e2e
def test_run_all_single_label_methods_table(tmp_path):
    """The single-label benchmark's table through run_all.sh: demo made, given scheme, first stages,
    cRT and tau-norm over the baseline, the benchmark's layout."""
    proj = project_copy(tmp_path)
    (proj / "experiments" / "sl_tiny.txt").write_text(
        "demo_sl_ce\ndemo_sl_rw_ce\ndemo_sl_balanced_mixup\ndemo_sl_crt\ndemo_sl_tau_norm\n")
    env = dict(os.environ, DEMO_SL_ARGS="--n-train 200 --max-side 64 --workers 1", PYTHONUNBUFFERED="1",
               PYTHON=__import__("sys").executable)
    r = subprocess.run(["bash", "run_all.sh", "--compare", "sl_tiny", *TINY, "stage2.epochs=2", "stage2.workers=0",
                        "predict.bootstrap=0", "compare.bootstrap=20", "data.group_counts=[10, 30]"], cwd=proj,
                       capture_output=True, text=True,
                       env=env, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = pd.read_csv(proj / "experiments" / "compare_sl_tiny" / "table.csv")
    assert table.recipe.tolist() == ["demo_sl_ce", "demo_sl_rw_ce", "demo_sl_balanced_mixup", "demo_sl_crt",
                                     "demo_sl_tau_norm"]
    assert table[["head", "medium", "tail", "avg", "bAcc", "mF1"]].notna().all().all()
    val = pd.read_csv(proj / "input" / "demo-single-label" / "balanced-val.csv")
    for name in table.recipe:
        oof = pd.read_csv(proj / "experiments" / name / "oof.csv")
        assert oof["id"].tolist() == val["id"].tolist()          # the given scheme's held-out set
    assert "fold 0: crt over 'demo_sl_ce' done" in r.stdout and "tau-norm picks" in r.stdout
    assert (proj / "experiments" / "compare_sl_tiny" / "accuracy_by_group.png").is_file()
