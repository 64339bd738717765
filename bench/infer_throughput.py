"""Inference throughput with flip-TTA: stage 04's prediction path over cached images against half
the bare model's inference rate (TTA runs two forwards per image), same device, same run.

    python bench/infer_throughput.py --model tf_efficientnetv2_s --size 768 --batch-size 64 --workers 12
"""
import argparse
import time

from _common import add_common_args, bench_config, device_line


def main():
    args = add_common_args(argparse.ArgumentParser(description=__doc__)).parse_args()
    cfg, work = bench_config(args)
    import torch
    from accelerate import Accelerator

    from cxrlt.data.loader import CxrDataset, make_loader
    from cxrlt.data.experiment import Experiment
    from cxrlt.models.factory import create_model
    from cxrlt.models.inference import predict_loader, to_model_input
    from cxrlt.runtime import precision_mode

    acc = Accelerator(mixed_precision=precision_mode(cfg.predict, "predict.precision"))
    net = create_model(cfg.model, 26).to(acc.device).to(memory_format=torch.channels_last).eval()
    if args.compile:
        net = torch.compile(net)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    x = torch.randint(0, 255, (args.batch_size, 1, args.size, args.size), dtype=torch.uint8, device=acc.device)
    with torch.no_grad(), acc.autocast():
        for _ in range(args.warmup):
            net(to_model_input(x, 0.45, 0.23, True))
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            net(to_model_input(x, 0.45, 0.23, True)).float().cpu()
        sync()
    bare = args.steps * args.batch_size / (time.perf_counter() - t)
    files = Experiment.of(cfg).training().files
    n = min(len(files), args.steps * args.batch_size)
    loader = acc.prepare(make_loader(CxrDataset(files[:n]), args.batch_size, args.workers, False))
    predict_loader(net, loader, acc, 0.45, 0.23, True, hflip=True)  # warm-up pass (workers, kernels)
    sync()
    t = time.perf_counter()
    logits, _, _, _ = predict_loader(net, loader, acc, 0.45, 0.23, True, hflip=True)
    sync()
    real = len(logits) / (time.perf_counter() - t)
    print(f"device: {device_line()}; model {args.model} at {args.size}px, batch {args.batch_size}, "
          f"workers {args.workers}, precision {args.precision}, compile {args.compile}")
    print(f"bare model inference (synthetic tensors): {bare:.1f} img/s; half of it (2 TTA views): {bare / 2:.1f} img/s")
    print(f"prediction path with hflip TTA: {real:.1f} img/s")
    print(f"ratio real / (bare / 2): {real / (bare / 2):.3f}")


if __name__ == "__main__":
    main()
