"""Stage 03: train a timm backbone per fold, or, for a recipe with `stage2.from`, a second stage
(cRT, tau-norm, multi-view fusion) over each fold's frozen first-stage backbone. Start it through
accelerate for several GPUs or nodes:

    accelerate launch src/03_train.py --config experiments/effv2s_768.yaml [--fold 0]
"""
from cxrlt.cli import config_from_args, run_stage, stage_parser
from cxrlt.errors import CxrltError
from cxrlt.experiment import FULL, fold_ids
from cxrlt.fileio import display_path


def run(argv=None):
    p = stage_parser(__doc__, fold=True)
    p.add_argument("--full", action="store_true", help="train only the full-data fit (every training image; "
                   "epochs: train.full_epochs or the folds' median best epoch)")
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    # the wing only now: --help and a bad recipe answer before torch & co. load
    from cxrlt.train.fold import is_second_stage, train_fold

    folds = [args.fold] if args.fold is not None else (cfg.train.folds or fold_ids(cfg))
    if args.full:
        if is_second_stage(cfg):
            raise CxrltError("--full: a second stage has no full-data fit (it trains over each fold's backbone)")
        folds = []
    results = [train_fold(cfg, int(f), force=args.force) for f in folds]
    if (args.full or (cfg.train.full_fit and args.fold is None)) and not is_second_stage(cfg):
        r = train_fold(cfg, FULL, force=args.force)
        print(f"full-data fit: {'already finished' if r.get('skipped') else 'trained'}, {r['epochs']} epochs "
              f"-> {display_path(r['dir'])}")
    for r in results:
        best = f"best val mAP {r['best_mAP']:.4f}" + (f", bAcc {r['best_score']:.4f}" if r.get("score") == "val_bAcc" else "")
        if r.get("skipped"):
            print(f"fold {r['fold']}: already finished ({best} at epoch {r['best_epoch']}); --force retrains it")
        else:
            print(f"fold {r['fold']}: {best} at epoch {r['best_epoch']} -> {display_path(r['dir'])}")


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
