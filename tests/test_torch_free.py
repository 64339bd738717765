"""Stages without a model (05 blend, 06 thresholds, 07 submission and its --check, 08 compare, the
run summary) import no torch, timm or albumentations: they start in a second, not in several, and
at a fraction of the memory."""
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# what src/05-08 and `python -m cxrlt.ensemble.summary` import, at the top and inside the functions they run
MODULES = ["cxrlt.cli", "cxrlt.config", "cxrlt.runtime", "cxrlt.metrics", "cxrlt.data.datasets", "cxrlt.data.splits",
           "cxrlt.evaluate.bootstrap", "cxrlt.evaluate.predictions", "cxrlt.evaluate.validation",
           "cxrlt.evaluate.report", "cxrlt.ensemble.blend", "cxrlt.ensemble.thresholds", "cxrlt.ensemble.submission",
           "cxrlt.ensemble.compare", "cxrlt.ensemble.summary", "cxrlt.sizes"]


def test_stages_without_a_model_import_no_torch():
    code = (f"import importlib, sys\nfor m in {MODULES!r}:\n    importlib.import_module(m)\n"
            "print(sorted(k for k in ('torch', 'timm', 'albumentations', 'accelerate') if k in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(SRC), NO_ALBUMENTATIONS_UPDATE="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
