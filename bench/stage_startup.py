"""Start-up time and peak memory of the stages without a model: `python src/05_blend.py --help`
and its siblings (06, 07, 08, the run summary) import everything a run imports, then stop.

Each command runs in a fresh process (best of --repeat); its peak RSS is read from a wrapper
process's children. --src points at another checkout's src/ to measure a before/after pair in the
same run.

    python bench/stage_startup.py [--src OTHER/src] [--repeat 3]
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"05 blend": ["05_blend.py"], "06 thresholds": ["06_thresholds.py"], "07 submission": ["07_make_submission.py"],
            "08 compare": ["08_compare.py"], "summary": ["-m", "cxrlt.ensemble.summary"]}
# time and peak RSS of one child, measured by a wrapper so that each figure is that child's alone
WRAP = ("import json, resource, subprocess, sys, time\nt = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
        "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")


def measure(src: Path, args: list[str], repeat: int) -> tuple[float, float, bool]:
    """(best seconds, peak MiB, whether torch got imported) of `python <args> --help` under src."""
    env = dict(os.environ, PYTHONPATH=str(src), NO_ALBUMENTATIONS_UPDATE="1")
    cmd = [sys.executable, *(args if args[0] == "-m" else [str(src / args[0])]), "--help"]
    runs = [json.loads(subprocess.run([sys.executable, "-c", WRAP, *cmd], env=env, capture_output=True, text=True,
                                      check=True).stdout) for _ in range(repeat)]
    probe = "import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    " + (
        f"runpy.run_module({args[1]!r}, run_name='__main__')" if args[0] == "-m" else
        f"runpy.run_path({str(src / args[0])!r}, run_name='__main__')") + \
        "\nexcept SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    out = subprocess.run([sys.executable, "-c", probe, "x", "--help"], env=env, capture_output=True, text=True).stdout
    return min(r[0] for r in runs), max(r[1] for r in runs), out.strip().endswith("TORCH") and "NO-TORCH" not in out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=None, help="another checkout's src/ to measure beside this one")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    trees = {"this": ROOT / "src", **({"other": a.src.resolve()} if a.src else {})}
    print(f"| command --help | {' | '.join(f'{t}: s, peak MiB, torch' for t in trees)} |")
    print("|---|" + "---|" * len(trees))
    for name, args in COMMANDS.items():
        cells = []
        for src in trees.values():
            s, mib, torch = measure(src, args, a.repeat)
            cells.append(f"{s:.2f}, {mib:.0f}, {'yes' if torch else 'no'}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
