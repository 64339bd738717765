"""Stage 00: write the synthetic CXR-LT-shaped demo dataset to input/demo/ (or, with --single-label,
the NIH-CXR-LT-shaped single-label demo to input/demo-single-label/; with --extra, an external
labelled set with partial labels to input/demo_extra/)."""
import argparse

from cxrlt.cli import run_stage
from cxrlt.fileio import display_path, project_path


def run(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=None, help="output folder (default: input/demo, input/demo-single-label)")
    p.add_argument("--n-train", type=int, default=None, help="training images (default 3000; single-label: 1000)")
    p.add_argument("--n-dev", type=int, default=500, help="development images (labelled)")
    p.add_argument("--n-test", type=int, default=500, help="test images (no labels)")
    p.add_argument("--max-side", type=int, default=None, help="largest image side in pixels (default 384; "
                   "single-label: 192)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--force", action="store_true", help="regenerate even if a complete demo is there")
    p.add_argument("--relabelled", action="store_true", help="instead write input/demo_relabelled/: demo fold 0's "
                   "training images under 2026-style names (the model.init_from example; needs the demo's folds)")
    p.add_argument("--extra", action="store_true", help="instead write input/demo_extra/: an external labelled set "
                   "of --n-train new films (default 600) labelled for 8 findings, some cells uncertain or blank (the "
                   "data.extra example, experiments/demo_extra.yaml)")
    p.add_argument("--single-label", action="store_true", help="instead write input/demo-single-label/: the "
                   "single-label long-tail benchmark's four CSVs (train, balanced-val, test, balanced-test), "
                   "--n-train images (default 1000), 10 and 20 per class in the balanced sets")
    p.add_argument("--tiny-text-encoder", action="store_true", help="instead write "
                   "input/text_encoders/tiny_random_bert/: a tiny BERT with RANDOM weights (vocabulary: the CXR-LT label "
                   "words) for the offline zero-shot demo (experiments/demo_zero_shot.yaml); NOT a language model, its "
                   "label embeddings carry no meaning. With internet, download a real encoder instead (README)")
    a = p.parse_args(argv)
    if a.tiny_text_encoder:
        from cxrlt.data.labels import LABELS_2023, LABELS_2024, LABELS_2026, ZERO_SHOT_2024_TASK3, ZERO_SHOT_2026_TASK2
        from cxrlt.models.text import write_random_bert

        words = ["chest x-ray showing {label}", *LABELS_2023, *LABELS_2024, *LABELS_2026, *ZERO_SHOT_2024_TASK3,
                 *ZERO_SHOT_2026_TASK2]
        out = write_random_bert(project_path("input/text_encoders/tiny_random_bert"), words, seed=a.seed)
        print(f"wrote {display_path(out)}: a tiny BERT with random weights; set model.text_encoder={display_path(out)}")
        return
    if a.single_label:
        from cxrlt.data.demo import make_single_label_demo

        out = project_path(a.out or "input/demo-single-label")
        r = make_single_label_demo(out, n_train=a.n_train or 1000, max_side=a.max_side or 192, seed=a.seed,
                                   workers=a.workers, force=a.force)
        if r["skipped"]:
            print(f"{display_path(out)}: single-label demo already complete (seed {a.seed}); --force regenerates it")
        else:
            print(f"wrote {display_path(out)}: " + ", ".join(f"{k} {v} images" for k, v in r["images"].items())
                  + "; training images per class: " + ", ".join(f"{k} {v}" for k, v in r["train_counts"].items()))
        return
    if a.extra:
        from cxrlt.data.demo import make_external

        out = project_path(a.out or "input/demo_extra")
        r = make_external(out, n=a.n_train or 600, max_side=a.max_side or 384, seed=101 + a.seed, workers=a.workers,
                          force=a.force)
        if r["skipped"]:
            print(f"{display_path(out)}: demo external set already complete; --force regenerates it")
        else:
            print(f"wrote {display_path(out)}: {r['images']} films, labels {', '.join(r['labels'])} (every other "
                  f"finding unlabelled)")
        return
    if a.relabelled:
        from cxrlt.data.demo import make_relabelled

        r = make_relabelled(project_path(a.out or "input/demo"), project_path("folds/demo_folds.csv"), project_path("input/demo_relabelled"))
        print(f"wrote input/demo_relabelled/: {r['train']} training images, labels {', '.join(r['labels'])}")
        return
    from cxrlt.data.demo import make_demo

    out = project_path(a.out or "input/demo")
    r = make_demo(out, a.n_train or 3000, a.n_dev, a.n_test, a.max_side or 384, a.seed, a.workers, a.force)
    if r["skipped"]:
        print(f"{display_path(out)}: demo already complete (seed {a.seed}); --force regenerates it")
        return
    print(f"wrote {display_path(out)}: " + ", ".join(f"{k} {v} images" for k, v in r["images"].items()))
    print(f"contact sheet: {display_path(out / 'contact_sheet.png')}")


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
