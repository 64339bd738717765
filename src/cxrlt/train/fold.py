"""Stage 03: train one fold of one recipe with HF accelerate (CPU, one or many GPUs, nodes).

Outputs in experiments/<name>/fold<k>/: last.pt (every epoch, everything a resume needs), best.pt
(weights that scored the best val mAP), log.csv, val_predictions.csv (best epoch), curve.png,
done.json (the fold is finished). Each epoch's randomness is a function of (seed, fold, epoch), so a
resumed run continues exactly as an uninterrupted one would.
"""
from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pandas as pd
import torch

from cxrlt.models.checkpoint import load, rng_state, save
from cxrlt.config import Config, experiment_dir, save_resolved
from cxrlt.data.datasets import label_matrix, read_split, resolve_dataset
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, write_csv, write_text
from cxrlt.data.folds import folds_path, read_folds
from cxrlt.data.images import Cache
from cxrlt.models.inference import predict_loader
from cxrlt.data.loader import CxrDataset, make_loader, to_model_input
from cxrlt.losses.binary import build_loss
from cxrlt.metrics import mean_ap
from cxrlt.models.factory import create_model, input_stats


def fold_dir(cfg: Config, fold: int):
    return experiment_dir(cfg) / f"fold{fold}"


def fingerprint(cfg: Config, spec) -> dict:
    """What must not change between a checkpoint and the code that resumes or uses it."""
    return dict(model=cfg.model.name, in_chans=int(cfg.model.in_chans), image_size=int(cfg.cache.size),
                resize=cfg.cache.resize, dataset=spec.name, labels=list(spec.labels))


def check_fingerprint(saved: dict, current: dict, path) -> None:
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v]
    if changed:
        raise CxrltError(f"{display_path(path)}: recipe changed since this checkpoint ({'; '.join(changed)[:300]}); "
                         f"use --force to start the fold again")


def training_data(cfg: Config):
    """Training table, cached files, labels and fold of every training image (checked)."""
    spec = resolve_dataset(cfg.data)
    df = read_split(spec, "train", labels="required")
    fpath = folds_path(cfg, spec)
    if not fpath.is_file():
        raise CxrltError(f"{display_path(fpath)}: no folds yet; run src/02_make_folds.py --config {display_path(cfg.recipe)}")
    folds = read_folds(fpath, spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
    files = Cache.from_config(cfg, spec.name).require(df[spec.id_col], spec.train_csv, cfg.recipe)
    return spec, df, files, label_matrix(spec, df), folds.loc[df[spec.id_col]].to_numpy()


def precision_mode(tcfg) -> str:
    p = "no" if tcfg.precision in (False, None) else str(tcfg.precision)  # YAML 1.1 reads a bare `no` as false
    if p not in ("no", "fp16", "bf16"):
        raise CxrltError(f"train.precision must be no, fp16 or bf16, not '{p}'")
    if p != "no" and not torch.cuda.is_available():
        return "no"  # CPU autocast is slower than fp32 on most CPUs
    return p


def cosine_with_warmup(total: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def train_fold(cfg: Config, fold: int, force: bool = False, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or resume, or skip) one fold. stop_after: return after that many epochs (tests a kill)."""
    import timm.optim
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from timm.utils import ModelEmaV3
    from tqdm import tqdm

    tcfg = cfg.train
    k = int(cfg.folds.k)
    if not 0 <= fold < k:
        raise CxrltError(f"--fold {fold}: folds are 0..{k - 1}")
    out = fold_dir(cfg, fold)
    done_file = out / "done.json"
    accelerator = Accelerator(mixed_precision=precision_mode(tcfg), gradient_accumulation_steps=int(tcfg.grad_accum),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    main = accelerator.is_main_process
    if done_file.is_file() and not force:
        return dict(json.loads(done_file.read_text()), skipped=True, dir=out)
    if force and main:
        for name in ("last.pt", "best.pt", "log.csv", "done.json", "val_predictions.csv", "curve.png"):
            (out / name).unlink(missing_ok=True)
    accelerator.wait_for_everyone()

    spec, df, files, y, fold_of = training_data(cfg)
    fp = fingerprint(cfg, spec)
    tr, va = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
    names = list(spec.labels)
    normal = names.index(spec.normal_label) if spec.normal_label else None
    allowed = tuple(names.index(x) for x in spec.normal_allows)
    base_seed = int(cfg.seed) + 1000 * fold
    set_seed(base_seed)

    net = create_model(cfg.model, len(names))
    if tcfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    mean, std = input_stats(net)
    train_ds = CxrDataset([files[i] for i in tr], y[tr], cfg.augment, normal, allowed)
    val_ds = CxrDataset([files[i] for i in va], y[va])
    workers = int(tcfg.workers)
    train_loader, val_loader = accelerator.prepare(
        make_loader(train_ds, int(tcfg.batch_size), workers, True, tcfg),
        make_loader(val_ds, int(tcfg.val_batch_size), workers, False))
    if len(train_loader) == 0:
        raise CxrltError(f"fold {fold}: {len(tr)} training images make no full batch of train.batch_size={tcfg.batch_size}")
    accum = int(tcfg.grad_accum)
    batches = len(train_loader) if not tcfg.max_steps_per_epoch else min(len(train_loader), int(tcfg.max_steps_per_epoch) * accum)
    opt_steps = math.ceil(batches / accum)
    epochs = int(tcfg.epochs)
    # A prepared scheduler steps num_processes times per optimizer step (accelerate, split_batches=False).
    per_epoch = opt_steps * accelerator.num_processes
    net = net.to(accelerator.device)
    ema = ModelEmaV3(net, decay=float(tcfg.ema_decay)) if tcfg.ema else None
    optimizer = timm.optim.create_optimizer_v2(net, "adamw", lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(
        epochs * per_epoch, int(round(float(tcfg.warmup_epochs) * per_epoch)), float(tcfg.min_lr_ratio)))
    model, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)
    if tcfg.compile:  # `net` stays the plain module: its parameters are the ones trained
        model = torch.compile(model)
    criterion = build_loss(cfg.loss, y[tr].sum(0), len(tr)).to(accelerator.device)

    start, history, best = 0, [], -1.0
    last = out / "last.pt"
    if last.is_file():
        ck = load(last)
        check_fingerprint(ck["fingerprint"], fp, last)
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        if accelerator.scaler is not None and ck.get("scaler"):
            accelerator.scaler.load_state_dict(ck["scaler"])
        start, history, best = ck["epoch"] + 1, ck["history"], ck["best"]
        if main:
            print(f"fold {fold}: resuming after epoch {start} of {epochs} from {display_path(last)}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, experiment_dir(cfg) / "config.yaml")
        print(f"fold {fold}: {len(tr)} train / {len(va)} val images, {cfg.model.name} at {cfg.cache.size}px, "
              f"{accelerator.num_processes} process(es) on {accelerator.device}, precision {accelerator.mixed_precision}")

    t_fold = time.time()
    for epoch in range(start, epochs):
        set_seed(base_seed + epoch)
        train_ds.mosaic_p = 0.0 if epoch >= epochs - int(cfg.augment.mosaic_off_last_epochs) else float(cfg.augment.mosaic)
        train_ds.reseed(base_seed + epoch)
        train_loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        seen = torch.zeros((), device=accelerator.device)
        t0 = time.time()
        bar = tqdm(total=batches, desc=f"fold {fold} epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not (progress and main), leave=False, file=sys.stdout)
        for step, (x, target, _) in enumerate(train_loader):
            if step >= batches:
                break
            with accelerator.accumulate(model):
                logits = model(to_model_input(x, mean, std, tcfg.channels_last))
                loss = criterion(logits.float(), target)
                accelerator.backward(loss)
                if accelerator.sync_gradients and tcfg.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), float(tcfg.grad_clip))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if ema is not None and accelerator.sync_gradients:
                ema.update(net)
            loss_sum += loss.detach() * len(x)
            seen += len(x)
            bar.update()
            if step % int(tcfg.log_every) == 0:  # the only host sync in the loop, every log_every steps
                bar.set_postfix(loss=f"{(loss_sum / seen).item():.4f}")
        bar.close()
        train_time = time.time() - t0
        train_loss = (accelerator.reduce(loss_sum, "sum") / accelerator.reduce(seen, "sum")).item()
        img_s = accelerator.reduce(seen, "sum").item() / train_time
        eval_net = ema.module if ema is not None else model
        logits, labels, idx, _ = predict_loader(eval_net, val_loader, accelerator, mean, std, tcfg.channels_last)
        val_loss = criterion(logits.to(accelerator.device), labels.to(accelerator.device)).item()
        probs = torch.sigmoid(logits).numpy()
        m = mean_ap(labels.numpy(), probs, names)
        row = dict(epoch=epoch + 1, train_loss=train_loss, val_loss=val_loss, val_mAP=m["mAP"], val_mAUC=m["mAUC"],
                   lr=scheduler.get_last_lr()[0], img_s=img_s, mosaic=train_ds.mosaic_p,
                   time_s=time.time() - t0)
        history.append(row)
        if main:
            if m["mAP"] > best:
                best = m["mAP"]
                save(dict(model=(ema.module if ema is not None else net).state_dict(), weights="ema" if ema else "raw",
                          epoch=epoch, metrics=row, fingerprint=fp, mean=mean, std=std), out / "best.pt")
                preds = pd.DataFrame(probs, columns=names)
                preds.insert(0, spec.id_col, df[spec.id_col].to_numpy()[va[idx.numpy()]])
                write_csv(out / "val_predictions.csv", preds)
            save(dict(model=net.state_dict(),
                      ema=ema.state_dict() if ema is not None else None, optimizer=optimizer.state_dict(),
                      scheduler=scheduler.state_dict(),
                      scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                      epoch=epoch, best=best, history=history, rng=rng_state(), fingerprint=fp,
                      config=cfg.to_dict()), last)
            write_csv(out / "log.csv", pd.DataFrame(history))
            from cxrlt.evaluate.report import plot_training_curve

            plot_training_curve(history, out / "curve.png", title=f"{cfg.name} fold {fold}")
            eta = (time.time() - t_fold) / (epoch + 1 - start) * (epochs - epoch - 1)
            print(f"fold {fold} epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                  f"val mAP {m['mAP']:.4f}, mAUC {m['mAUC']:.4f}, {img_s:.0f} img/s, {row['time_s']:.0f} s"
                  f"{f', fold ETA {eta / 60:.1f} min' if eta > 0 else ''}", flush=True)
        accelerator.wait_for_everyone()
        if stop_after is not None and epoch + 1 - start >= stop_after and epoch + 1 < epochs:
            return dict(stopped=True, epoch=epoch + 1, dir=out)
    summary = dict(fold=fold, best_mAP=best, best_epoch=int(np.argmax([h["val_mAP"] for h in history])) + 1,
                   epochs=epochs, skipped=False)
    if main:
        write_text(done_file, json.dumps(summary))
    accelerator.wait_for_everyone()
    return dict(summary, dir=out)
