import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata" / "covid_sample"
DEMO = ROOT / "experiments" / "demo.yaml"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A tiny demo dataset (input dir with demo/ inside), made once per test session."""
    from cxrlt.data.demo import make_demo

    root = tmp_path_factory.mktemp("input")
    make_demo(root / "demo", n_train=240, n_dev=40, n_test=40, max_side=96, seed=3, workers=1, progress=False)
    return root


@pytest.fixture
def tiny_cfg(tiny_root, tmp_path):
    """The demo recipe pointed at the tiny dataset, with cache and folds in this test's tmp dir."""
    from cxrlt.config import load_config

    return load_config(ROOT / "experiments" / "demo.yaml", [
        f"data.input_dir={tiny_root}", f"cache.dir={tmp_path / 'cache'}", "cache.size=64", "folds.k=5",
        f"folds.dir={tmp_path / 'folds'}", "cache.workers=1"])


def run_script(*args, cwd=ROOT):
    """Run a stage script; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="session")
def base(tiny_root, tmp_path_factory):
    """Overrides for tiny training runs: the tiny demo cached at 32 px, folds built, 3 short epochs."""
    from cxrlt.config import load_config
    from cxrlt.data.folds import build_folds
    from cxrlt.data.images import prepare_dataset_cache

    d = tmp_path_factory.mktemp("trainbase")
    ov = [f"data.input_dir={tiny_root}", f"cache.dir={d / 'cache'}", "cache.size=32", f"folds.dir={d / 'folds'}",
          "cache.workers=1", "train.epochs=3", "train.batch_size=16", "train.val_batch_size=16", "train.workers=0",
          "train.ema_decay=0.9", "train.lr=3e-3", "train.log_every=1", "predict.workers=0", "predict.batch_size=16", "folds.k=5"]
    cfg = load_config(DEMO, ov)
    prepare_dataset_cache(cfg, progress=False)
    build_folds(cfg)
    return ov


def cfg_at(base, out, *more):
    from cxrlt.config import load_config

    return load_config(DEMO, base + [f"output_dir={out}", *more])


@pytest.fixture(scope="session")
def trained(base, tmp_path_factory):
    """All five folds of the tiny demo trained (2 epochs each) into one experiment folder."""
    from cxrlt.train.fold import train_fold

    out = tmp_path_factory.mktemp("trained")
    cfg = cfg_at(base, out, "train.epochs=2")
    for k in range(5):
        train_fold(cfg, k, progress=False)
    return out
