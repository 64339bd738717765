"""Stage 07: write and validate the leaderboard CSV + zip of an experiment or blend, or check a file;
upload it to the leaderboard and read its score back (docs/leaderboard.md).

    python src/07_make_submission.py --config experiments/blend.yaml [--binary]
    python src/07_make_submission.py --config experiments/blend.yaml --check submissions/blend.zip
    python src/07_make_submission.py --config experiments/blend.yaml --upload [--dry-run] submit.phase=<id>
    python src/07_make_submission.py --config experiments/blend.yaml --upload --zip submissions/old.zip submit.phase=<id>
    python src/07_make_submission.py --config experiments/blend.yaml --status      # resume an interrupted poll

Credentials for --upload come from the environment (CODABENCH_TOKEN or CODABENCH_USERNAME/
CODABENCH_PASSWORD; CODALAB_USERNAME/CODALAB_PASSWORD) or ~/.netrc (machine = the platform's host).
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
    p.add_argument("--upload", action="store_true",
                   help="after writing the submission (or --zip FILE as it is), send it to the leaderboard of "
                        "submit.* / the preset and wait for its score")
    p.add_argument("--zip", metavar="FILE", help="with --upload: send this zip (checked first) instead of writing one")
    p.add_argument("--dry-run", action="store_true", help="with --upload: print what would be sent; send nothing")
    p.add_argument("--status", action="store_true",
                   help="poll the uploads of submit.platform / phase still waiting for a score (an interrupted poll)")
    p.add_argument("--force", action="store_true",
                   help="--upload: send a zip whose sha256 was already sent to that phase (a submission is always rewritten)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.overrides)
    if (a.zip or a.dry_run) and not a.upload:
        p.error("--zip and --dry-run go with --upload")
    if a.status:
        from cxrlt.ensemble.leaderboard import status

        status(cfg)
        return
    # the wing only now: --help and a bad recipe answer before torch & co. load
    from cxrlt.ensemble.submission import check_file, make_submission

    if a.check:
        n = check_file(cfg, a.check)
        print(f"{a.check}: OK ({n} rows, columns and ids as the leaderboard expects)")
        return
    if not a.zip:
        r = make_submission(cfg, binary=a.binary, name=a.name)
        oof = f"{r['oof_mAP']:.4f}" if r["oof_mAP"] is not None else "n/a"
        print(f"wrote {display_path(r['zip'])} ({r['size']} bytes, {r['rows']} rows) and {display_path(r['csv'])}")
        print(f"sha256 {r['sha256']}; OOF mAP {oof}; members {r['members']}; logged in submissions/log.csv")
    if a.upload:
        from cxrlt.ensemble.leaderboard import upload

        upload(cfg, a.zip or r["zip"], force=a.force, dry_run=a.dry_run)


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
