"""Stage 03: train one fold of one recipe with HF accelerate (CPU, one or many GPUs, nodes).

Outputs in experiments/<name>/fold<k>/: last.pt (every epoch, everything a resume needs), best.pt
(weights that scored the best val mAP), log.csv, val_predictions.csv (best epoch), curve.png,
done.json (the fold is finished). Each epoch's randomness is a function of (seed, fold, epoch), and
everything that changes with the epoch is set by `set_epoch` at its top, so a resumed run continues
exactly as an uninterrupted one would.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import torch

from cxrlt.config import Config, save_resolved
from cxrlt.data.datasets import check_task
from cxrlt.data.experiment import Experiment
from cxrlt.data.loader import CxrDataset, class_balanced_weights, make_loader, repeat_factors
from cxrlt.data.splits import assignment_hash, current_assignment, current_full_assignment, full_assignment, training_data
from cxrlt.errors import CxrltError
from cxrlt.experiment import (
    FULL,
    best_checkpoint,
    check_fingerprint,
    done_marker,
    experiment_dir,
    fingerprint,
    fold_dir,
    fold_ids,
    given_split,
    last_checkpoint,
)
from cxrlt.fileio import display_path
from cxrlt.losses import build_loss
from cxrlt.models.factory import arch_record, check_init, create_model, input_stats
from cxrlt.models.text import CACHE_NAME as TEXT_CACHE
from cxrlt.models.text import label_embeddings
from cxrlt.models.transfer import init_from, source, use_input_stats
from cxrlt.progress import progress_bar
from cxrlt.runtime import is_main_process, make_accelerator
from cxrlt.stage import stage_frame
from cxrlt.train import tracking
from cxrlt.train.epochs import best_index, run_epochs
from cxrlt.train.loop import set_epoch, train_one_epoch, validate
from cxrlt.train.saver import CheckpointSaver

OUTPUTS = ("last.pt", "best.pt", "log.csv", "done.json", "val_predictions.csv", "curve.png", tracking.TB_FOLDER)


def cosine_with_warmup(total: int, warmup: int, min_ratio: float):
    """lr factor per scheduler step: linear warmup, then cosine down to min_ratio."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def full_fit_epochs(cfg: Config) -> int:
    """train.full_epochs, or the median best epoch of the finished folds (rounded, at least 1)."""
    if cfg.train.full_epochs:
        return int(cfg.train.full_epochs)
    best, missing = [], []
    for f in fold_ids(cfg):
        d = done_marker(cfg, f)
        (best.append(json.loads(d.read_text())["best_epoch"]) if d.is_file() else missing.append(f))
    if missing:
        raise CxrltError(f"full-data fit: its epochs come from the folds' best epochs, and fold(s) "
                         f"{', '.join(map(str, missing))} are not finished; train them first or set train.full_epochs")
    return max(1, int(round(float(np.median(best)))))


def _assignment(cfg, spec, fold, ids=None, fold_of=None) -> str:
    """What a checkpoint was trained without: the fold assignment, or `full:<ids>` for the full fit."""
    if fold == FULL:
        return current_full_assignment(cfg, spec) if ids is None else full_assignment(ids)
    return current_assignment(cfg, spec) if fold_of is None else assignment_hash(ids, fold_of)


def train_fold(cfg: Config, fold, force: bool = False, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or resume, or skip) one fold under its lock: a second trainer of the same fold stops at
    once, naming the first. fold = experiment.FULL: the full-data fit (every training image, no
    validation, best.pt = the last epoch's weights). stop_after: return after that many epochs (tests a kill)."""
    out = fold_dir(cfg, fold)
    with stage_frame(out, "done.json", f"fold {fold} of experiment '{cfg.name}'", force=force,
                     main=is_main_process(), lock=out / ".lock") as frame:
        return _train_fold(cfg, fold, frame, progress, stop_after)


def finished(cfg: Config, fold, frame, fp: dict) -> dict | None:
    """done.json of a fold finished for this recipe and these folds (None when not finished or
    --force); a fold finished under another recipe, or from weights the recipe does not accept (a
    random start under model.require_pretrained), is a one-line error."""
    done = frame.vouched(outputs=False)
    if done is None:
        return None
    check_fingerprint(done.get("fingerprint", {}), fp, frame.stamp, "use --force to retrain the fold")
    check_init(cfg.model, done.get("init", "unknown"), f"{display_path(frame.stamp)}: fold {fold}",
               "retrain it with --force")
    return done


def _train_fold(cfg: Config, fold: int, frame, progress: bool, stop_after: int | None) -> dict:
    import timm.optim
    from accelerate.utils import set_seed
    from timm.utils import ModelEmaV3

    tcfg = cfg.train
    k = int(cfg.folds.k)
    full = fold == FULL
    if full and given_split(cfg):
        raise CxrltError("--full / train.full_fit: folds.scheme=given trains one model on the training CSV already "
                         "(its epoch picked on data.val_csv); there is no full-data fit to add")
    if not full and fold not in fold_ids(cfg):
        raise CxrltError(f"--fold {fold}: folds are {', '.join(map(str, fold_ids(cfg)))}"
                         + (" (folds.scheme=given)" if given_split(cfg) else ""))
    out = frame.folder
    accelerator = make_accelerator(tcfg, "train.precision", int(tcfg.grad_accum), tracking.log_with(cfg, fold), out)
    main = accelerator.is_main_process
    spec = Experiment.of(cfg).spec
    check_task(cfg, spec)
    done = finished(cfg, fold, frame, fingerprint(cfg, spec, _assignment(cfg, spec, fold)))
    if done is not None:   # finished: only if for this recipe, these folds and an accepted start
        return dict(done, skipped=True, dir=out)
    resume = last_checkpoint(cfg, fold).is_file() and not frame.force   # --force sets the old run aside below

    spec, df, files, y, fold_of = training_data(cfg)
    tr, va = (np.arange(len(df)), np.zeros(0, int)) if full else (np.flatnonzero(fold_of != fold),
                                                                 np.flatnonzero(fold_of == fold))
    names = list(spec.labels)
    # the union rule's normal class (mosaic, union mixes) is a multilabel notion
    normal = names.index(spec.normal_label) if spec.normal_label and not spec.multiclass else None
    allowed = tuple(names.index(x) for x in spec.normal_allows)
    epochs = full_fit_epochs(cfg) if full else int(tcfg.epochs)
    base_seed = int(cfg.seed) + 1000 * (k if full else fold)
    text_emb = None      # before the seed: loading an encoder may draw random numbers, a cached file does not
    if cfg.model.get("head") == "ml_decoder" and cfg.model.get("class_queries") == "text":   # frozen, cached once
        text_emb = label_embeddings(cfg.model, names, experiment_dir(cfg) / TEXT_CACHE)
    set_seed(base_seed)

    init = cfg.model.get("init_from")
    src = source(init) if init else None      # built like the source model (a converted ViT's shape)
    net = create_model(Config(dict(cfg.model, pretrained=False, pretrained_path=None)) if init else cfg.model, len(names),
                       image_size=int(cfg.cache.size), timm_kwargs=src[2]["model"].get("timm_kwargs") if src else None,
                       text_emb=text_emb)
    if init:       # input statistics from the source even on resume (a resumed fold restores its weights)
        use_input_stats(net, src[2])
    if init and not resume:
        rep = init_from(net, src, cfg.model, names, int(cfg.cache.size))
        net.init_source = f"init_from:{rep['source']}"
        if main:
            print(f"fold {fold}: initialised from {rep['source']}: {len(rep['carried'])} of {len(names)} classes "
                  f"carried (" + ", ".join(a if a == b else f"{a} <- {b}" for a, b in rep["carried"]) + ")"
                  + (f"; fresh: {', '.join(rep['fresh'])}" if rep["fresh"] else ""))
    if tcfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    mean, std = input_stats(net)
    partners = None
    if cfg.augment.balanced_mixup:     # the partner's sampling: class-balanced for one label per image (the benchmark)
        partners = class_balanced_weights(y[tr]) if spec.multiclass else \
            repeat_factors(y[tr], float(tcfg.class_aware_t), float(tcfg.class_aware_cap))
    train_ds = CxrDataset([files[i] for i in tr], y[tr], cfg.augment, normal, allowed,
                          seed=base_seed, epochs=epochs, partner_weights=partners)
    val_ds = CxrDataset([files[i] for i in va], y[va])
    workers = int(tcfg.workers)
    train_loader, val_loader = accelerator.prepare(
        make_loader(train_ds, int(tcfg.batch_size), workers, True, tcfg),
        make_loader(val_ds, int(tcfg.val_batch_size), workers, False))
    if len(train_loader) == 0:
        raise CxrltError(f"fold {fold}: {len(tr)} training images make no full batch of train.batch_size={tcfg.batch_size}")
    accum = int(tcfg.grad_accum)
    batches = len(train_loader) if not tcfg.max_steps_per_epoch else min(len(train_loader), int(tcfg.max_steps_per_epoch) * accum)
    # A prepared scheduler steps num_processes times per optimizer step (accelerate, split_batches=False).
    per_epoch = math.ceil(batches / accum) * accelerator.num_processes
    net = net.to(accelerator.device)
    ema = ModelEmaV3(net, decay=float(tcfg.ema_decay)) if tcfg.ema else None
    optimizer = timm.optim.create_optimizer_v2(net, "adamw", lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(
        epochs * per_epoch, int(round(float(tcfg.warmup_epochs) * per_epoch)), float(tcfg.min_lr_ratio)))
    model, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)
    if tcfg.compile:  # `net` stays the plain module: its parameters are the ones trained
        model = torch.compile(model)
    criterion = build_loss(cfg.loss, y[tr].sum(0), len(tr), epochs, spec.task).to(accelerator.device)

    fp = fingerprint(cfg, spec, _assignment(cfg, spec, fold, df[spec.id_col], fold_of))
    saver = CheckpointSaver(last_checkpoint(cfg, fold), best_checkpoint(cfg, fold), fp, net, ema,
                            optimizer, scheduler, accelerator.scaler, mean, std, cfg.to_dict(),
                            arch=arch_record(cfg.model, names, cfg.cache.size, cfg.cache.resize, mean, std, net,
                                             task=spec.task))
    if frame.force:   # only now that model, loaders and optimizer are built: put back if this run fails
        frame.set_aside(OUTPUTS)
    accelerator.wait_for_everyone()
    start, history, best = saver.restore(advice="use --force to start the fold again") or (0, [], -1.0)
    check_init(cfg.model, saver.init, f"{display_path(saver.last)}: fold {fold}", "start it again with --force")
    if main:
        if start:
            print(f"fold {fold}: resuming after epoch {start} of {epochs} from {display_path(saver.last)}")
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, experiment_dir(cfg) / "config.yaml")
        if full:
            print(f"full-data fit: {epochs} epochs ({'train.full_epochs' if tcfg.full_epochs else 'median best epoch of the folds'})")
        print(f"fold {fold}: {len(tr)} train / {len(va)} val images, {cfg.model.name} at {cfg.cache.size}px, "
              f"{accelerator.num_processes} process(es) on {accelerator.device}, precision {accelerator.mixed_precision}")
    tracking.start(accelerator, cfg, start)

    def run_epoch(epoch: int):
        t0 = time.time()
        set_seed(base_seed + epoch)
        set_epoch(epoch, train_ds, train_loader, criterion, net)
        bar = progress_bar(batches, f"fold {fold} epoch {epoch + 1}/{epochs}", "batch", progress and main, leave=False)
        tr_stats = train_one_epoch(model, net, train_loader, criterion, optimizer, scheduler, accelerator, tcfg,
                                   mean, std, batches, ema, bar)
        bar.close()
        v = None if full else validate(saver.eval_net if ema is not None else model, val_loader, accelerator,
                                       mean, std, tcfg.channels_last, names, task=spec.task)
        nan = float("nan")
        return dict(epoch=epoch + 1, train_loss=tr_stats["train_loss"], val_loss=v["val_loss"] if v else nan,
                    val_mAP=v["val_mAP"] if v else nan, val_mAUC=v["val_mAUC"] if v else nan,
                    **({"val_bAcc": v["val_bAcc"] if v else nan} if spec.multiclass else {}),
                    val_score=v["score"] if v else nan,
                    lr=scheduler.get_last_lr()[0], img_s=tr_stats["img_s"],
                    mosaic=train_ds.mosaic_p, loss_weighted=bool(getattr(criterion, "weighted", False)),
                    time_s=time.time() - t0), v

    try:
        history, best, stopped = run_epochs(run_epoch, start=start, epochs=epochs, history=history, best=best,
                                            saver=saver, out=out, accelerator=accelerator,
                                            title=f"{cfg.name} fold {fold}", label=f"fold {fold}",
                                            val_ids=df[spec.id_col].iloc[va], names=names, stop_after=stop_after,
                                            patience=None if full else tcfg.get("patience"))
    except BaseException:
        tracking.finish(accelerator)   # its files closed before the frame puts back what --force set aside
        raise
    if stopped:
        tracking.finish(accelerator)
        return dict(stopped=True, epoch=len(history), dir=out)
    best_epoch = len(history) if full else best_index(history) + 1
    summary = dict(fold=fold, best_mAP=best if full else float(history[best_epoch - 1]["val_mAP"]), best_score=best,
                   score="val_bAcc" if spec.multiclass else "val_mAP", best_epoch=best_epoch, epochs=len(history),
                   init=saver.init, fingerprint=fp, skipped=False)
    if main and not full:
        tracking.log_best_ap(accelerator, out / "val_predictions.csv", df[spec.id_col], y, names, summary["best_epoch"])
    if main:   # the stamp, last: vouches for best.pt (stage 04 checks it)
        frame.seal(summary, outputs=[saver.best, saver.last])
    tracking.finish(accelerator)
    accelerator.wait_for_everyone()
    return dict(summary, dir=out)
