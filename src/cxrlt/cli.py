"""What every numbered stage script shares: arguments, config loading, one-line errors.

Torch-free on purpose: a stage script parses its arguments and loads (checks) the recipe with
this module alone, then imports its wing (torch, timm, albumentations ...), so `--help` and a bad
key or value answer in about a second. Each script has `main(argv=None)`: tests call it in-process."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

from cxrlt.config import Config, load_config
from cxrlt.errors import CxrltError


def stage_parser(description: str, fold: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="recipe, e.g. experiments/demo.yaml")
    if fold:
        p.add_argument("--fold", type=int, default=None, help="only this fold (default: all)")
    p.add_argument("--force", action="store_true", help="redo work whose outputs are already complete")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe keys, e.g. train.lr=3e-4")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def run_stage(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a stage's body main(argv) (argv None: the command line); a CxrltError becomes
    'error: ...' on stderr and SystemExit(2), an interrupt exit status 130."""
    t0 = time.time()
    try:
        main(argv)
    except CxrltError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; completed outputs are kept, re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    print(f"done in {time.time() - t0:.1f} s")
