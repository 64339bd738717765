"""Stage 08: compare experiments over the same folds -> experiments/compare_<name>/table.md, table.csv, PNG.

Pooled and per-fold (mean ± std) OOF figures per recipe; against the baseline, differences with a
95 % interval from a paired bootstrap over patients (compare.bootstrap, compare.seed) and the folds won.

  python src/08_compare.py --recipes demo,demo_effnet,demo_blend [--name NAME] [--baseline demo]
"""
import argparse

from cxrlt.cli import run_stage
from cxrlt.experiment import recipe_config
from cxrlt.fileio import display_path


def run(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", required=True,
                   help="comma-separated experiment names (experiments/<r>.yaml) or recipe paths")
    p.add_argument("--name", default=None, help="output folder compare_<name>; default the recipe names joined by '-'")
    p.add_argument("--baseline", default=None, help="recipe the d_* columns and intervals are against; default the first")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override keys of every recipe")
    args = p.parse_args(argv)
    recipes = [s.strip() for s in args.recipes.split(",") if s.strip()]
    for recipe in recipes:              # every recipe loads (and is checked) before the wing is imported
        recipe_config(recipe, args.overrides)
    from cxrlt.ensemble.compare import compare_recipes

    r = compare_recipes(recipes, args.name, args.baseline, args.overrides)
    print(r["markdown"])
    print("wrote " + ", ".join(display_path(f) for f in r["files"]))


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
