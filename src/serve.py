"""Try a trained experiment in the browser: upload the films of one study, see every finding's
probability, the tuned decision and a Grad-CAM heatmap; scripts use the JSON API (POST /api/predict).

    python src/serve.py --experiment experiments/demo_blend [--port 7860] [--host 127.0.0.1] [--folds 0,1]
"""
import argparse

from cxrlt.cli import run_stage


def run(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="experiment folder (a recipe's, a blend's or a second stage's)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (default: this one only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--folds", default=None, help="comma-separated fold numbers to load (bounds memory); default all")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default the GPU when there is one")
    p.add_argument("--max-upload-mb", type=float, default=64,
                   help="largest request body (all films of a study) in MB; larger is refused with HTTP 413 "
                        "before it is read (default 64)")
    p.add_argument("--max-concurrent", type=int, default=2,
                   help="API requests read and decoded at once; the others wait unread (default 2)")
    a = p.parse_args(argv)
    if a.max_upload_mb <= 0 or a.max_concurrent < 1:
        p.error("--max-upload-mb must be > 0 and --max-concurrent >= 1")
    from cxrlt.serve.app import serve

    folds = [int(f) for f in a.folds.split(",")] if a.folds else None
    serve(a.experiment, a.host, a.port, folds, a.device, int(a.max_upload_mb * 2**20), a.max_concurrent)


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
