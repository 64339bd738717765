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
    a = p.parse_args(argv)
    from cxrlt.serve.app import serve

    folds = [int(f) for f in a.folds.split(",")] if a.folds else None
    serve(a.experiment, a.host, a.port, folds, a.device)


def main(argv=None):
    run_stage(run, argv)


if __name__ == "__main__":
    main()
