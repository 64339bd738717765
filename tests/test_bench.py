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


def test_serve_latency_bench_compares_a_student_with_its_teacher(tmp_path):
    """Several experiments in one run, on one film: a table with one row each in the order given
    (the first the reference, its ratios 1.00; the others' ratios their own figures over the
    reference's), the models served and the parameters of one model and of every served model, as
    loaded and as cxrlt.sizes counts them (no WARNING). Timings are not asserted."""
    pytest.importorskip("gradio")
    import json

    from cxrlt.config import load_config
    from cxrlt.data.datasets import LABELS_2023
    from cxrlt.models.factory import create_model

    sys.path.insert(0, str(ROOT / "bench"))
    from serve_latency import make_experiment

    def params(model):
        net = create_model(load_config(ROOT / "experiments" / "demo.yaml", [f"model.name={model}"]).model, len(LABELS_2023))
        return sum(p.numel() for p in net.parameters())

    big, small = make_experiment(tmp_path, "test_resnet", 32, 2), make_experiment(tmp_path, "test_efficientnet", 32, 1)
    teacher = tmp_path / "teacher"                   # a blend of both; a member with weight 0 is not served
    teacher.mkdir()
    (teacher / "weights.json").write_text(json.dumps(dict(mode="fit", weights={str(big): 0.6, str(small): 0.4,
                                                                              str(tmp_path / "unused"): 0.0})))
    r = subprocess.run([sys.executable, "bench/serve_latency.py", "--experiment", f"{teacher},{small}", "--experiment",
                        str(big), "--film-size", "256", "--repeats", "2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" not in r.stdout and "reference: teacher;" in r.stdout, r.stdout
    lines = [line for line in r.stdout.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["experiment", "models", "params/model", "params served", "API ms/film", "API x ref", "bare ms",
                    "bare x ref", "API / bare", "heatmap ms"]
    rows = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[2:])}
    assert list(rows) == ["teacher", "test_efficientnet", "test_resnet"]
    pb, ps = params("test_resnet"), params("test_efficientnet")
    assert pb > 3 * ps
    want = {"teacher": (3, pb + ps, 2 * pb + ps), "test_efficientnet": (1, ps, ps), "test_resnet": (2, pb, 2 * pb)}
    for name, (models, one, served) in want.items():
        row = rows[name]
        assert (int(row[1]), int(row[2].replace(",", "")), int(row[3].replace(",", ""))) == (models, one, served), row
        api, bare = float(row[4]), float(row[6])
        assert api > 0 and bare > 0 and float(row[8]) == pytest.approx(api / bare, abs=0.01 + 0.06 * api / bare)
        ref_api, ref_bare = float(rows["teacher"][4]), float(rows["teacher"][6])
        assert float(row[5]) == pytest.approx(api / ref_api, abs=0.01 + 0.06 * api / ref_api)
        assert float(row[7]) == pytest.approx(bare / ref_bare, abs=0.01 + 0.06 * bare / ref_bare)
    assert rows["teacher"][5] == rows["teacher"][7] == "1.00"
