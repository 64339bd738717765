"""Training throughput: the real training loop (cached images, the recipe's augmentations and
mosaic, loss, optimizer, accelerate) against the bare model's step rate on synthetic tensors,
measured in the same run on the same device. Also the CPU loader's img/s per worker.

    python bench/train_throughput.py --model tf_efficientnetv2_s --size 768 --batch-size 32 --workers 12 [--compile]
"""
import argparse
import math
import time

from _common import add_common_args, bench_config, device_line


def bare_rate(cfg, args, compile_model: bool) -> float:
    """img/s of stage 03's own training step (train_one_epoch: the recipe's loss, AdamW, scheduler,
    clipping, accumulation, EMA) on random uint8 batches already on the device: no loader, no decode."""
    import torch
    from timm.utils import ModelEmaV3

    from cxrlt.losses import build_loss
    from cxrlt.models.factory import create_model
    from cxrlt.runtime import make_accelerator
    from cxrlt.train.loop import train_one_epoch
    from cxrlt.train.optim import Schedule, create_optimizer

    tcfg = cfg.train
    acc = make_accelerator(tcfg, "train.precision", int(tcfg.grad_accum))
    net = create_model(cfg.model, 26).to(acc.device).to(memory_format=torch.channels_last)
    ema = ModelEmaV3(net, decay=float(tcfg.ema_decay)) if tcfg.ema else None
    opt = create_optimizer(net, tcfg.optimizer, tcfg.lr, tcfg.weight_decay, tcfg.momentum)   # stage 03's
    sched = Schedule(opt, tcfg.scheduler, epochs=int(tcfg.epochs), updates_per_epoch=1000,
                     warmup_epochs=float(tcfg.warmup_epochs), min_lr_ratio=float(tcfg.min_lr_ratio))
    model, opt = acc.prepare(net, opt)
    if compile_model:
        model = torch.compile(model)
    loss_fn = build_loss(cfg.loss, torch.ones(26).numpy() * 10, 100, int(tcfg.epochs)).to(acc.device)
    x = torch.randint(0, 255, (args.batch_size, 1, args.size, args.size), dtype=torch.uint8, device=acc.device)
    y = (torch.rand(args.batch_size, 26, device=acc.device) < 0.1).float()
    idx = torch.arange(args.batch_size, device=acc.device)

    def run(steps: int) -> float:
        return train_one_epoch(model, net, [(x, y, idx)] * steps, loss_fn, opt, sched, acc, tcfg, 0.45, 0.23,
                               steps, ema)["img_s"]

    run(args.warmup)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return run(args.steps)  # the loss is read back at the end of the epoch: the device has finished


def real_rate(cfg, args) -> float:
    """img/s of stage 03's own loop (train_fold), second epoch, so warm-up and compile are excluded."""
    import pandas as pd

    from cxrlt.config import load_config
    from cxrlt.train.fold import train_fold

    c = load_config(cfg.recipe, [f"{k}={v}" for k, v in _flat(cfg.to_dict())] +
                    ["train.epochs=2", f"train.max_steps_per_epoch={args.steps}"])
    train_fold(c, 0, force=True, progress=False)
    return float(pd.read_csv(c.output_dir + "/fold0/log.csv").img_s.iloc[-1])


def loader_rate(cfg, args) -> tuple[float, int]:
    """img/s of the training loader alone (cache decode + augmentation + mosaic), and its workers."""
    from cxrlt.data.loader import CxrDataset, make_loader
    from cxrlt.data.experiment import Experiment

    exp = Experiment.of(cfg)
    spec, files, y = exp.spec, exp.training().files, exp.training().y
    ds = CxrDataset(files, y, cfg.augment, spec.labels.index(spec.normal_label), ())
    loader = make_loader(ds, args.batch_size, args.workers, True, cfg.train)
    n, t, it = 0, None, iter(loader)
    batches = min(len(loader), max(8, args.steps // 4))
    for i in range(batches):
        x, _, _ = next(it)
        if i == 1:  # skip the workers' start-up
            t, n = time.perf_counter(), 0
        n += len(x)
    return n / (time.perf_counter() - t), max(args.workers, 1)


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        elif k != "recipe" and v is not None and not isinstance(v, (list, dict)):
            yield f"{prefix}{k}", v


def main():
    p = add_common_args(argparse.ArgumentParser(description=__doc__))
    p.add_argument("--both-compile", action="store_true", help="measure the bare model with compile off and on")
    args = p.parse_args()
    cfg, work = bench_config(args)
    print(f"device: {device_line()}; model {args.model} at {args.size}px, batch {args.batch_size}, "
          f"workers {args.workers}, precision {args.precision}, compile {args.compile}")
    bare = {c: bare_rate(cfg, args, c) for c in ({False, True} if args.both_compile else {args.compile})}
    for c, r in sorted(bare.items()):
        print(f"bare model (synthetic tensors, compile {'on' if c else 'off'}): {r:.1f} img/s")
    load, workers = loader_rate(cfg, args)
    print(f"loader alone (decode + augment + mosaic): {load:.1f} img/s = {load / workers:.1f} img/s per worker")
    real = real_rate(cfg, args)
    ref = bare[args.compile]
    print(f"real training loop: {real:.1f} img/s")
    print(f"ratio real / bare (compile {'on' if args.compile else 'off'}): {real / ref:.3f}")
    print(f"CPU workers needed to feed the bare rate: {math.ceil(ref / (load / workers))}")


if __name__ == "__main__":
    main()
