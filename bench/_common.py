"""Shared set-up for the benchmarks: a synthetic demo cached at the benchmark size, in a temp dir."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def bench_config(args, work: Path | None = None):
    """The recipe with the benchmark's model/size/batch, pointed at a small demo made for the run."""
    from cxrlt.config import load_config
    from cxrlt.data.demo import make_demo
    from cxrlt.data.stages import build_folds
    from cxrlt.data.stages import prepare_dataset_cache

    work = Path(work or tempfile.mkdtemp(prefix="cxrlt-bench-"))
    n = max(args.images, 5 * 2 * args.batch_size)
    make_demo(work / "input" / "demo", n_train=n, n_dev=8, n_test=8, max_side=max(args.size, 64), seed=0,
              workers=min(os.cpu_count() or 1, 8), progress=False)
    cfg = load_config(ROOT / args.recipe, [
        "data.preset=demo", f"data.input_dir={work / 'input'}", f"cache.dir={work / 'cache'}", f"cache.size={args.size}",
        f"folds.dir={work / 'folds'}", f"output_dir={work / 'exp'}", f"model.name={args.model}", "model.pretrained=false",
        f"train.batch_size={args.batch_size}", f"train.workers={args.workers}", f"predict.workers={args.workers}",
        f"predict.batch_size={args.batch_size}", f"train.compile={str(args.compile).lower()}", "train.ema=false",
        f"train.precision={args.precision}", f"predict.precision={args.precision}", f"train.log_every={args.steps}"])
    prepare_dataset_cache(cfg, progress=False)
    build_folds(cfg)
    return cfg, work


def add_common_args(p):
    p.add_argument("--recipe", default="experiments/effv2s_768.yaml", help="augmentations, loss, optimizer from here")
    p.add_argument("--model", default="tf_efficientnetv2_s")
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16))
    p.add_argument("--steps", type=int, default=200, help="measured steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--precision", default="bf16", help="no | fp16 | bf16 (CPU runs use fp32)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--images", type=int, default=1000, help="demo images to cache for the real loop")
    return p


def device_line():
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}"
