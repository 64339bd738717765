"""Stage 04: out-of-fold, development and test predictions with flip-TTA and study aggregation
(and fold normalisation with predict.oof_normalise), metrics.json (pooled OOF figures beside the
mean and std of per-fold ones, a drift warning, figures per view group, development apart) and
report plots. Through accelerate for several GPUs:

    accelerate launch src/04_predict.py --config experiments/effv2s_768.yaml
"""
from cxrlt.cli import config_from_args, run_stage, stage_parser
from cxrlt.fileio import display_path


def run(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    cfg = config_from_args(args)
    # the wing only now: --help and a bad recipe answer before torch & co. load
    from cxrlt.evaluate.predict import predict_experiment, summary_lines

    r = predict_experiment(cfg, force=args.force)
    if "mAP" not in r:  # a non-main process
        return
    if r["skipped"]:
        print(f"{display_path(r['dir'])}: predictions are up to date with the checkpoints; --force redoes them")
    for line in summary_lines(r):
        print(line)
    print(f"wrote {display_path(r['dir'])}/: oof.csv, test.csv, metrics.json, per_class_ap.png, pr_rarest.png")


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
