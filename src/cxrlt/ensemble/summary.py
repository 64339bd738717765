"""The closing summary of run_all.sh: each experiment's OOF figures (pooled, mean ± std of per-fold
figures, development apart, per view group, the drift warning), the blend's mAP (fitted and
honest), mF1 at 0.5 and tuned, and the newest submission."""
from __future__ import annotations

import argparse
import json


from cxrlt.ensemble.leaderboard import track
from cxrlt.evaluate.validation import figure_lines
from cxrlt.fileio import display_path, project_path, read_table


def _load(path):
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipes", required=True, help="comma-separated experiment names")
    p.add_argument("--final", required=True, help="the experiment or blend that was submitted")
    a = p.parse_args(argv)
    exp = project_path("experiments")
    for name in a.recipes.split(","):
        m = _load(exp / name / "metrics.json")
        if not m:
            print(f"{name:>24s}: no metrics yet")
            continue
        print(f"{name:>24s}: OOF mAP {m['mAP']:.4f} pooled" + (f", {m['final']}" if "final" in m else ""))
        for line in figure_lines(m, indent=" " * 26):
            print(line)
    m = _load(exp / a.final / "metrics.json")
    if m and "mAP_honest" in m:
        print(f"{a.final:>24s}: OOF mAP {m['mAP']:.4f} fitted, {m['mAP_honest']:.4f} honest; weights "
              + ", ".join(f"{k} {v:.2f}" for k, v in m["weights"].items()))
    t = _load(exp / a.final / "thresholds.json")
    if t:
        print(f"{'mF1':>24s}: {t['mF1_at_0_5']:.4f} at 0.5, {t['mF1_tuned']:.4f} tuned (fitted), "
              f"{t['mF1_honest']:.4f} tuned (honest)")
    log = project_path("submissions") / "log.csv"
    if log.is_file():
        last = read_table(log).iloc[-1]
        print(f"{'submission':>24s}: {display_path(project_path('submissions') / last.file)} (sha256 {last.sha256[:12]}...)")
        for line in track(log)["lines"]:     # the leaderboard scores read back by --upload / --status
            print(f"{'':>24s}  {line}")
    print(f"{'try it':>24s}: python src/serve.py --experiment {display_path(exp / a.final)}   "
          f"(web page on http://127.0.0.1:7860/, JSON API POST /api/predict)")


if __name__ == "__main__":
    main()
