"""Stage 07: write and validate the leaderboard CSV + zip of an experiment or blend, or check a file.

    python src/07_make_submission.py --config experiments/blend.yaml [--binary]
    python src/07_make_submission.py --config experiments/blend.yaml --check submissions/blend.zip
"""
import argparse

from cxrlt.cli import run_stage
from cxrlt.config import load_config
from cxrlt.fileio import display_path


def run(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--binary", action="store_true", help="0/1 with tuned thresholds (for F1 leaderboards)")
    p.add_argument("--check", metavar="FILE",
                   help="only validate FILE (CSV or zip); exit 2 with a one-line reason if bad or unreadable")
    p.add_argument("--name", help="submission file name (default: the experiment name)")
    p.add_argument("--force", action="store_true", help="accepted for symmetry with the other stages; a submission is always rewritten")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.overrides)
    # the wing only now: --help and a bad recipe answer before torch & co. load
    from cxrlt.ensemble.submission import check_file, make_submission

    if a.check:
        n = check_file(cfg, a.check)
        print(f"{a.check}: OK ({n} rows, columns and ids as the leaderboard expects)")
        return
    r = make_submission(cfg, binary=a.binary, name=a.name)
    oof = f"{r['oof_mAP']:.4f}" if r["oof_mAP"] is not None else "n/a"
    print(f"wrote {display_path(r['zip'])} ({r['size']} bytes, {r['rows']} rows) and {display_path(r['csv'])}")
    print(f"sha256 {r['sha256']}; OOF mAP {oof}; members {r['members']}; logged in submissions/log.csv")


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
