import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata" / "covid_sample"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A tiny demo dataset (input dir with demo/ inside), made once per test session."""
    from cxrlt.demo import make_demo

    root = tmp_path_factory.mktemp("input")
    make_demo(root / "demo", n_train=240, n_dev=40, n_test=40, max_side=96, seed=3, workers=1, progress=False)
    return root


@pytest.fixture
def tiny_cfg(tiny_root, tmp_path):
    """The demo recipe pointed at the tiny dataset, with cache and folds in this test's tmp dir."""
    from cxrlt.config import load_config

    return load_config(ROOT / "experiments" / "demo.yaml", [
        f"data.input_dir={tiny_root}", f"cache.dir={tmp_path / 'cache'}", "cache.size=64",
        f"folds.dir={tmp_path / 'folds'}", "cache.workers=1"])


def run_script(*args, cwd=ROOT):
    """Run a stage script; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
