"""Stage 06: per-class F1-optimal thresholds from OOF predictions -> thresholds.json (+ calibration)."""
from cxrlt.cli import config_from_args, run_stage, stage_parser
from cxrlt.fileio import display_path


def run(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    cfg = config_from_args(args)
    # the wing only now: --help and a bad recipe answer before torch & co. load
    from cxrlt.ensemble.thresholds import tune_thresholds

    r = tune_thresholds(cfg, force=args.force)
    if r["skipped"]:
        print(f"{display_path(r['dir'])}/thresholds.json is up to date; --force redoes it")
    print(f"mF1 at 0.5 {r['mF1_at_0_5']:.4f}; tuned {r['mF1_tuned']:.4f} (fitted on all OOF), "
          f"{r['mF1_honest']:.4f} (honest: thresholds from the other folds)")
    if r.get("calibration", "none") != "none":
        print(f"{r['calibration']} calibration: ECE {r['ECE_before']:.4f} -> {r['ECE_after']:.4f} (fitted on all OOF), "
              f"{r['ECE_honest']:.4f} (honest: calibrators from the other folds)")
        if r["no_calibrator"]:
            print(f"no calibrator (no positive in OOF; left as is): {', '.join(r['no_calibrator'])}")
    if not r["skipped"]:
        print(f"wrote {display_path(r['dir'])}/thresholds.json, f1_per_class.png")


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
