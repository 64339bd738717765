"""Shared fixtures, the stage runners (in-process `stage`, subprocess `run_script`) and the test tiers.

Tiers (markers, assigned here at collection so that new tests get one without being told):
  e2e         test_e2e.py: run_all.sh on a tiny demo (minutes)
  bench       test_bench.py: the benchmark scripts
  browser     drives a real browser (selenium)
  subprocess  starts processes: calls run_script, subprocess.*, Popen or multiprocessing, directly or
              through a helper function of its module or of this file
  slow        trains, or needs a trained model (a fixture in SLOW_FIXTURES), or is named in SLOW_TESTS
  unit        everything else: the quick tier, `python -m pytest -m unit`
"""
import functools
import importlib.util
import inspect
import os
import shutil
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
    """Run a stage script in a new process; returns the CompletedProcess (text). For what needs a
    process of its own (kill -9, two processes, accelerate launch); else use the `stage` fixture."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def project_copy(tmp_path):
    """The project without data, outputs or git, its recipes only: what a user checks out."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT, proj, ignore=shutil.ignore_patterns(".git", ".venv", "input", "folds", "submissions",
                                                              "__pycache__", ".pytest_cache", "experiments"))
    (proj / "experiments").mkdir()
    for f in (ROOT / "experiments").glob("*.yaml"):
        shutil.copy(f, proj / "experiments")
    return proj


@functools.lru_cache(maxsize=None)
def stage_module(script):
    """A stage script (src/03_train.py, its path, or 03_train) imported as a module."""
    path = ROOT / "src" / (Path(str(script)).stem + ".py")
    spec = importlib.util.spec_from_file_location(f"stage_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stage(capsys, monkeypatch):
    """stage(script, *args): a stage script's main(argv) called in this process, in the project
    root as run_script does; returns a CompletedProcess with its exit status, stdout and stderr."""
    monkeypatch.chdir(ROOT)

    def call(script, *args):
        argv = [str(a) for a in args]
        capsys.readouterr()
        code, extra = 0, ""
        try:
            stage_module(script).main(argv)
        except SystemExit as e:
            code, extra = (e.code, "") if isinstance(e.code, int) else (0, "") if e.code is None else (1, f"{e.code}\n")
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([script, *argv], code, out, err + extra)

    return call


@pytest.fixture(scope="session")
def base(tiny_root, tmp_path_factory):
    """Overrides for tiny training runs: the tiny demo cached at 32 px, folds built, 3 short epochs."""
    from cxrlt.config import load_config
    from cxrlt.data.stages import build_folds
    from cxrlt.data.stages import prepare_dataset_cache

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


@pytest.fixture(scope="module")
def served(base, trained, tmp_path_factory):
    """A copy of the tiny trained experiment with stage 04 (no study aggregation) and stage 06 done:
    what the web page's tests serve (one copy per test module)."""
    import shutil

    from cxrlt.config import save_resolved
    from cxrlt.ensemble.thresholds import tune_thresholds
    from cxrlt.evaluate.predict import predict_experiment

    out = tmp_path_factory.mktemp("served") / "demo"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("features", "*.csv", "metrics.json", "*.npz"))
    cfg = cfg_at(base, out, "predict.study_aggregation=false", "predict.bootstrap=0")
    predict_experiment(cfg, progress=False)
    tune_thresholds(cfg)
    save_resolved(cfg, out / "config.yaml")
    return cfg, out


# ---- tiers -------------------------------------------------------------------------------------
TIERS = ("e2e", "bench", "browser", "subprocess", "slow")
# fixtures that train (base: the tiny demo cached and folded, for tests that train on it; trained, sl_run:
# trained experiments, shared but minutes on a first use; served: stage 04 over `trained`)
SLOW_FIXTURES = {"base", "trained", "served", "sl_run"}
# test functions (original names) that train or fit for long without such a fixture: 15-130 s each on a
# loaded 2-core machine (--durations), together half of the quick tier's time
SLOW_TESTS = {"test_kfold_scheme_on_a_multiclass_task_covers_the_training_csv",          # trains 3 folds
              "test_head_shapes_training_steps_and_reload_from_file_alone",             # trains each head
              "test_fold_figures_wins_and_patient_bootstrap_against_the_baseline",      # bootstraps
              "test_table_matches_sklearn",                                             # (compare)
              "test_real_recipes_build_their_backbones"}                                # full-size backbones
SPAWNS = ("subprocess.run(", "subprocess.Popen(", "subprocess.check_", "Popen(", "run_script(", ".Process(",
          "os.fork(")
TIMEOUTS = {"unit": 300, "slow": 1200, "subprocess": 1200, "browser": 600, "bench": 1800, "e2e": 3600}   # seconds


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _spawns(fn) -> bool:
    """Whether a test starts processes: its own source, or that of a function of its module (or
    of this file) that it names, says so."""
    if any(s in _source(fn) for s in SPAWNS):
        return True
    g = getattr(fn, "__globals__", {})
    for name in fn.__code__.co_names:
        helper = g.get(name)
        if inspect.isfunction(helper) and helper is not fn and any(s in _source(helper) for s in SPAWNS):
            return True
    return False


def tiers_of(item) -> list:
    """The tiers of a collected test: its explicit tier markers, else what its module, source and
    fixtures say; [] is the quick tier (unit)."""
    given = [t for t in TIERS if item.get_closest_marker(t)]
    if given:
        return given
    fn, module = getattr(item, "function", None), getattr(getattr(item, "module", None), "__name__", "")
    found = []
    if module.endswith("test_e2e"):
        found.append("e2e")
    if module.endswith("test_bench"):
        found.append("bench")
    if fn is not None and any(s in _source(fn) for s in ("webdriver", "selenium")):
        found.append("browser")
    if fn is not None and _spawns(fn):
        found.append("subprocess")
    if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or getattr(item, "originalname", "") in SLOW_TESTS:
        found.append("slow")
    return found


def pytest_collection_modifyitems(config, items):
    timeouts = config.pluginmanager.hasplugin("timeout")           # pytest-timeout (requirements.txt)
    for item in items:
        tiers = tiers_of(item) or ["unit"]
        for t in tiers:
            if not item.get_closest_marker(t):
                item.add_marker(getattr(pytest.mark, t))
        if timeouts and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(max(TIMEOUTS[t] for t in tiers)))
