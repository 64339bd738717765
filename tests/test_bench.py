"""Both benchmarks run end to end on CPU at a tiny size (a smoke test of the scripts, not a timing)."""
import re
import subprocess
import sys

import pytest
from conftest import ROOT

SMALL = ["--model", "test_resnet", "--size", "32", "--batch-size", "8", "--workers", "1", "--steps", "4",
         "--warmup", "1", "--precision", "no", "--images", "80", "--recipe", "experiments/demo.yaml"]


@pytest.mark.parametrize("script,ratio", [("bench/train_throughput.py", r"ratio real / bare .*: (\d+\.\d+)"),
                                          ("bench/infer_throughput.py", r"ratio real / \(bare / 2\): (\d+\.\d+)")])
def test_bench_runs_on_cpu(script, ratio):
    r = subprocess.run([sys.executable, script, *SMALL], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(ratio, r.stdout)
    assert m and float(m.group(1)) > 0, r.stdout
    assert "device: CPU" in r.stdout


def test_serve_latency_bench_runs_on_cpu():
    pytest.importorskip("gradio")
    r = subprocess.run([sys.executable, "bench/serve_latency.py", "--size", "32", "--film-size", "256", "--repeats", "2",
                        "--folds", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"ratio (\d+\.\d+)x", r.stdout)
    assert m and float(m.group(1)) > 0 and "2 fold model(s)" in r.stdout, r.stdout


def test_eval_scaling_bench_runs_small():
    """bench/eval_scaling.py end to end at a tiny size: every row printed, the reference checks
    (AP equal, bootstrap identical to the bit) hold."""
    r = subprocess.run([sys.executable, "bench/eval_scaling.py", "--rows", "1500", "--patients", "600", "--boot", "40",
                        "--steps", "3", "--ref-boot", "10"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for what in ("mAP (fast AP vs sklearn)", "bootstrap 40 resamples", "blend fit", "stage 08 figures",
                 "stage 04 non-model work", "read_split(train) incl. label check"):
        assert f"| {what}" in r.stdout, r.stdout
