"""Stage 05: blend member experiments' OOF and test predictions (mean, rank or fitted weights)."""
from cxrlt.cli import config_from_args, run_stage, stage_parser
from cxrlt.fileio import display_path


def run(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    cfg = config_from_args(args)
    # the wing only now: --help and a bad recipe answer before torch & co. load
    from cxrlt.ensemble.blend import blend_experiment

    r = blend_experiment(cfg, force=args.force)
    if r["skipped"]:
        print(f"{display_path(r['dir'])}: blend is up to date with its members; --force redoes it")
    for m, v in r["members"].items():
        if r["mode"] == "route":
            print(f"  member {m} ({r['views'][m]}): answers {r['routed'][m]} images, OOF mAP on them {v:.4f}")
        else:
            print(f"  member {m}: OOF mAP {v:.4f}, weight {r['weights'][m]:.3f}")
    print(f"blend ({r['mode']}): OOF mAP {r['mAP']:.4f} (fitted), {r['mAP_honest']:.4f} (honest: weights from the "
          f"other folds); mAUC {r['mAUC']:.4f}")
    print(f"wrote {display_path(r['dir'])}/: oof.csv, test.csv, metrics.json, weights.json")


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
