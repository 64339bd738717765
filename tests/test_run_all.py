"""What run_all.sh runs, in which order, with which arguments: every stage call recorded by a stand-in
for python (the recipe checks run for real), in seconds. The stages themselves: test_e2e.py (one real
pass and a second that redoes nothing) and each stage's own tests."""
import os
import subprocess
import sys

from conftest import project_copy

# python as run_all.sh calls it: `-c` (the recipe check) runs for real, every other call is recorded
FAKE = """#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exec "$REAL_PYTHON" "$@"; fi
printf '%s\\n' "$*" >> "$CALLS"
"""
TINY = ["cache.size=32", "train.epochs=2"]


def run_all(proj, *args, **env):
    calls = proj / "calls.txt"
    calls.unlink(missing_ok=True)
    fake = proj / "fake_python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    e = dict(os.environ, PYTHON=str(fake), LAUNCH=str(fake), REAL_PYTHON=sys.executable, CALLS=str(calls), **env)
    r = subprocess.run(["bash", "run_all.sh", *args], cwd=proj, capture_output=True, text=True, env=e, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, calls.read_text().splitlines()


def per_recipe(recipe, *ov):
    return [f"src/{s} --config experiments/{recipe}.yaml " + " ".join(ov)
            for s in ("01_prepare_images.py", "02_make_folds.py", "03_train.py", "04_predict.py")]


def test_demo_pass_runs_every_stage_in_order_with_the_overrides(tmp_path):
    proj = project_copy(tmp_path)
    r, calls = run_all(proj, *TINY, DEMO_ARGS="--n-train 300")
    ov = " ".join(TINY)
    assert "no competition data under input/" in r.stdout
    assert calls == ["src/00_make_demo_data.py --n-train 300", *per_recipe("demo", *TINY), *per_recipe("demo_effnet", *TINY),
                     f"src/05_blend.py --config experiments/demo_blend.yaml blend.members=[demo,demo_effnet] {ov}",
                     f"src/06_thresholds.py --config experiments/demo_blend.yaml {ov}",
                     f"src/07_make_submission.py --config experiments/demo_blend.yaml {ov}",
                     "-m cxrlt.ensemble.summary --recipes demo,demo_effnet --final demo_blend"]
    _, calls = run_all(proj, "--from", "04", "--force", *TINY)       # resume from a stage, redo its work
    assert calls[0] == f"src/04_predict.py --config experiments/demo.yaml --force {ov}" and len(calls) == 6


def test_compare_lists_second_stages_and_the_single_label_demo(tmp_path):
    """The three comparisons the e2e test used to run: a list file (comments and blank lines skipped,
    order kept), second stages after their first stage, the single-label benchmark's demo."""
    proj = project_copy(tmp_path)
    exp = proj / "experiments"
    (exp / "tiny_ldam_drw.yaml").write_text("base: demo_lt_cb_ldam_drw.yaml\nloss:\n  drw_epoch: 1\n")
    (exp / "lt_tiny.txt").write_text("# two methods\ndemo\n\ntiny_ldam_drw\n")
    r, calls = run_all(proj, "--compare", "lt_tiny", *TINY)
    assert "comparison of demo,tiny_ldam_drw" in r.stdout
    assert calls == ["src/00_make_demo_data.py", *per_recipe("demo", *TINY), *per_recipe("tiny_ldam_drw", *TINY),
                     "src/08_compare.py --recipes demo,tiny_ldam_drw --name lt_tiny " + " ".join(TINY)]
    s2 = [*TINY, "stage2.epochs=2", "stage2.grid=1"]
    _, calls = run_all(proj, "--compare", "demo,demo_crt,demo_fusion", *s2)
    assert calls == ["src/00_make_demo_data.py", *per_recipe("demo", *s2), *per_recipe("demo_crt", *s2),
                     *per_recipe("demo_fusion", *s2), "src/08_compare.py --recipes demo,demo_crt,demo_fusion " + " ".join(s2)]
    sl = ["demo_sl_ce", "demo_sl_rw_ce", "demo_sl_balanced_mixup", "demo_sl_crt", "demo_sl_tau_norm"]
    (exp / "sl_tiny.txt").write_text("\n".join(sl) + "\n")
    _, calls = run_all(proj, "--compare", "sl_tiny", *TINY, DEMO_SL_ARGS="--n-train 200 --max-side 64")
    assert calls == ["src/00_make_demo_data.py --single-label --n-train 200 --max-side 64",
                     *[c for name in sl for c in per_recipe(name, *TINY)],
                     f"src/08_compare.py --recipes {','.join(sl)} --name sl_tiny " + " ".join(TINY)]


def test_bad_arguments_stop_before_any_stage(tmp_path):
    proj = project_copy(tmp_path)
    for args, message in ((["--only", "9"], "stages are 00..08, not '9'"), (["--bogus"], "unknown argument '--bogus'"),
                          (["--recipes", "nope"], "no recipe experiments/nope.yaml")):
        calls = proj / "calls.txt"
        calls.unlink(missing_ok=True)
        r = subprocess.run(["bash", "run_all.sh", *args], cwd=proj, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHON=str(proj / "nothing"), CALLS=str(calls)))
        assert r.returncode == 2 and message in r.stderr and not calls.exists()
