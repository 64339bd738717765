"""Stage 03: train a timm backbone per fold. Start it through accelerate for several GPUs or nodes:

    accelerate launch src/03_train.py --config experiments/effv2s_768.yaml [--fold 0]
"""
from cxrlt.cli import config_from_args, run_stage, stage_parser
from cxrlt.fileio import display_path
from cxrlt.train.fold import train_fold


def main():
    args = stage_parser(__doc__, fold=True).parse_args()
    cfg = config_from_args(args)
    folds = [args.fold] if args.fold is not None else (cfg.train.folds or list(range(int(cfg.folds.k))))
    results = [train_fold(cfg, int(f), force=args.force) for f in folds]
    for r in results:
        if r.get("skipped"):
            print(f"fold {r['fold']}: already finished (best val mAP {r['best_mAP']:.4f} at epoch {r['best_epoch']}); "
                  f"--force retrains it")
        else:
            print(f"fold {r['fold']}: best val mAP {r['best_mAP']:.4f} at epoch {r['best_epoch']} -> {display_path(r['dir'])}")


if __name__ == "__main__":
    run_stage(main)
