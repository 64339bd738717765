"""Stage 02: patient-grouped, multilabel-stratified K folds of the training CSV -> folds/<dataset>_folds.csv
(folds.scheme=given: no folds; the validation CSV is the held-out part, summarised here)."""
import sys

from cxrlt.cli import config_from_args, run_stage, stage_parser
from cxrlt.experiment import given_split
from cxrlt.fileio import display_path


def run(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    cfg = config_from_args(args)
    if given_split(cfg):
        from cxrlt.data.experiment import Experiment
        from cxrlt.data.splits import given_summary

        r = given_summary(cfg, Experiment.of(cfg).spec)
        print(r["table"].to_string())
        print(f"folds.scheme=given: trains on the training CSV ({r['n_train']} images), picks the epoch on "
              f"{display_path(r['val_csv'])} ({r['n_val']} images); no folds file")
        if r["shared_patients"]:
            print(f"warning: {r['shared_patients']} patients have images in both CSVs", file=sys.stderr)
        return
    # the wing only now: --help and a bad recipe answer before torch & co. load
    from cxrlt.data.experiment import Experiment
    from cxrlt.data.stages import build_folds

    r = build_folds(cfg, force=args.force)
    spec = Experiment.of(cfg).spec
    if spec.val_csv is not None:
        print(f"note: folds.scheme=kfold leaves the validation CSV {display_path(spec.val_csv)} unused; the benchmark's "
              f"protocol is folds.scheme=given (the sl_* recipes)", file=sys.stderr)
    if r["skipped"]:
        print(f"{display_path(r['path'])}: already there for seed {cfg.folds.seed}, k={cfg.folds.k}; --force rebuilds it")
    print(r["table"].to_string())
    imb = r["imbalance"]
    if len(imb):
        worst = imb.ratio.idxmax()
        print(f"worst balance among classes with >= 5*k positives: {worst}, off even ({imb.even[worst]:.1f}) by "
              f"{imb.max_dev[worst]:.1f} images (allowed 1 + 10% = {imb.allowed[worst]:.1f})")
    else:
        print(f"no class has >= 5*k = {5 * int(cfg.folds.k)} positives: balance not measured")
    if not r["skipped"]:
        print(f"wrote {display_path(r['path'])} ({r['n_images']} images, {r['n_patients']} patients, k={cfg.folds.k})")


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
