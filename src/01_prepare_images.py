"""Stage 01: decode every referenced image once, resize to cache.size, write the cache under input/."""
from cxrlt.cli import config_from_args, run_stage, stage_parser
from cxrlt.fileio import display_path


def run(argv=None):
    args = stage_parser(__doc__).parse_args(argv)
    cfg = config_from_args(args)
    # the wing only now: --help and a bad recipe answer before torch & co. load
    from cxrlt.data.stages import prepare_dataset_cache

    r = prepare_dataset_cache(cfg, force=args.force)
    for note in r["notes"]:
        print(note)
    splits = ", ".join(f"{k} {v}" for k, v in r["splits"].items())
    if r["written"] == 0:
        print(f"{display_path(r['folder'])}: all {r['total']} images already cached ({splits}); --force redoes it")
    else:
        print(f"{display_path(r['folder'])}: cached {r['written']} images, {r['skipped']} were already there ({splits})")
    for kind, key in (("external set", "extra"), ("pseudo-label folder", "pseudo")):   # data.extra, train.pseudo.folder
        for x in r.get(key, ()):
            print(f"{display_path(x['folder'])}: {kind} {x['name']}: cached {x['written']} images, "
                  f"{x['skipped']} were already there ({x['total']} films)")


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
