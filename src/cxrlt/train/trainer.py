"""Stage 03's one fold trainer, for first and second stages alike.

`run_fold(cfg, fold, strategy)` runs a fold under its stage frame (lock, stamp-vouched skip, --force set
aside and restored on failure), checks a finished fold against the recipe, and trains what the
recipe's strategy builds:

- `train.image.ImageModel`: a timm backbone on the image cache (a first stage, or its full-data fit);
- `train.second_stage.FeatureHead`: cRT or multi-view fusion over cached features of a frozen
  first-stage fold;
- `train.second_stage.TauNorm`: no epochs; the classifier re-scaled in closed form.

A strategy builds the model, data and loaders (`build(ctx) -> Plan`); everything around them is
written once here: optimizer and schedule from timm's factories (`train.optim`), loss from the
registry, EMA, checkpoints (`CheckpointSaver`: last.pt every epoch, one writer of best.pt), exact
resume, the epoch runner, the summary sealed into done.json last (stage 04 checks it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cxrlt.config import Config, save_resolved
from cxrlt.data.datasets import check_task
from cxrlt.data.experiment import Experiment
from cxrlt.experiment import FULL, check_fingerprint
from cxrlt.fileio import display_path
from cxrlt.losses import build_loss
from cxrlt.progress import progress_bar
from cxrlt.runtime import is_main_process, make_accelerator
from cxrlt.stage import stage_frame
from cxrlt.train import tracking
from cxrlt.train.epochs import best_index, run_epochs
from cxrlt.train.loop import set_epoch, train_one_epoch
from cxrlt.train.optim import Schedule, create_optimizer
from cxrlt.train.saver import CheckpointSaver

OUTPUTS = ("last.pt", "best.pt", "log.csv", "done.json", "val_predictions.csv", "curve.png", tracking.TB_FOLDER)


@dataclass
class FoldContext:
    """What every strategy starts from: the recipe, its Experiment, the fold, its frame and process."""
    cfg: Config
    exp: Experiment
    fold: Any
    frame: Any
    accelerator: Any
    progress: bool
    resume: bool                 # last.pt is there and --force was not given
    fingerprint: dict            # what the fold's checkpoints must agree on (Experiment.fingerprint)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def names(self) -> list[str]:
        return list(self.exp.spec.labels)


@dataclass
class Plan:
    """What a strategy built for the epochs: the trained module and the data it sees."""
    module: Any                  # the parameters the optimizer trains
    train_ds: Any
    train_loader: Any            # prepared
    validate: Callable           # validate(eval_model) -> validation dict (train.epochs.run_epochs) or None
    val_ids: Any                 # ids of the held-out rows, in the order validation returns them
    epochs: int
    batches: int                 # batches per epoch
    counts: np.ndarray           # positives per class of the training items (class weights, DRW)
    n_items: int
    arch: dict
    mean: float
    std: float
    loop_cfg: Any                # grad_clip, log_every, channels_last of train_one_epoch
    lr: float
    weight_decay: float
    warmup_epochs: float
    label: str                   # "fold 0", "fold 0 crt": progress bars and log lines
    title: str                   # the training curve's title
    grad_accum: int = 1
    ema_decay: float | None = None
    compile: bool = False
    filter_bias_and_bn: bool = True
    to_input: Callable | None = None
    best_state: Callable | None = None        # whole-model state for best.pt when `module` is a part
    to_device: tuple = ()                     # further modules to move (a frozen backbone)
    resume_fingerprint: dict | None = None
    init: str | None = None                   # where the weights started, when not the module's own record
    check_init: bool = False                  # refuse a random start under model.require_pretrained
    row_extra: Callable | None = None         # extra log columns after img_s
    patience: int | None = None
    summary_extra: dict = field(default_factory=dict)
    seconds: dict | None = None               # time spent before the epochs (a feature cache), reported
    after: Callable | None = None             # after(summary), main process, before done.json is sealed
    labelled: np.ndarray | None = None        # (C,) items labelling each class, when some targets are NaN
    row_weights: np.ndarray | None = None     # (n_items,) loss weight of each training item; None: all 1


class Strategy:
    """What differs between the models a fold can train (see the module's docstring)."""
    title = "fold"

    def check(self, cfg: Config, exp: Experiment, fold) -> None:
        """Refuse a fold this strategy cannot train, before anything is read."""

    def grad_accum(self, cfg: Config) -> int:
        return int(cfg.train.grad_accum)

    def check_finished(self, done: dict, frame, cfg: Config, fold) -> None:
        """More checks of a finished fold's done.json (the fingerprint is checked already)."""

    def build(self, ctx: FoldContext) -> Plan | dict:
        """The Plan of the epochs, or (a strategy without epochs) the finished fold's summary."""
        raise NotImplementedError


def run_fold(cfg: Config, fold, strategy: Strategy, force: bool = False, progress: bool = True,
             stop_after: int | None = None) -> dict:
    """Train (or resume, or skip) one fold with `strategy` under its lock: a second trainer of the
    same fold stops at once, naming the first. stop_after: return after that many epochs (tests a kill)."""
    exp = Experiment.of(cfg)
    out = exp.layout.fold(fold)
    with stage_frame(out, "done.json", f"fold {fold} of experiment '{cfg.name}'", force=force,
                     main=is_main_process(), lock=out / ".lock") as frame:
        strategy.check(cfg, exp, fold)
        check_task(cfg, exp.spec)
        fp = exp.fingerprint(fold)
        done = frame.vouched(outputs=False)
        if done is not None:     # finished: only if for this recipe, these folds and an accepted start
            check_fingerprint(done.get("fingerprint", {}), fp, frame.stamp, "use --force to retrain the fold")
            strategy.check_finished(done, frame, cfg, fold)
            return dict(done, skipped=True, dir=out)
        resume = exp.layout.last(fold).is_file() and not frame.force   # --force sets the old run aside below
        accelerator = make_accelerator(cfg.train, "train.precision", strategy.grad_accum(cfg),
                                       tracking.log_with(cfg, fold), out)
        ctx = FoldContext(cfg, exp, fold, frame, accelerator, progress, resume, fp)
        t_start = time.time()
        plan = strategy.build(ctx)
        if isinstance(plan, dict):           # trained in closed form (tau-norm)
            summary = dict(plan, fingerprint=fp, skipped=False)
            if "seconds" in summary:
                summary["seconds"] = dict(summary["seconds"], total=round(time.time() - t_start, 1))
        else:
            t_epochs = time.time()
            summary = _epochs(ctx, plan, stop_after)
            if summary.get("stopped"):
                return summary
            summary.update(plan.summary_extra)
            if plan.seconds is not None:
                summary["seconds"] = dict(plan.seconds, train=round(time.time() - t_epochs, 1),
                                          total=round(time.time() - t_start, 1))
            if ctx.main and plan.after is not None:
                plan.after(summary)
        if ctx.main:   # the stamp, last: vouches for best.pt (stage 04 checks it)
            frame.seal(summary, outputs=[exp.layout.best(fold), exp.layout.last(fold)])
        tracking.finish(accelerator)
        accelerator.wait_for_everyone()
        return dict(summary, dir=out)


def _epochs(ctx: FoldContext, plan: Plan, stop_after: int | None) -> dict:
    """The epochs of a Plan: optimizer, schedule, loss, EMA, checkpoints, exact resume."""
    from accelerate.utils import set_seed
    from timm.utils import ModelEmaV3

    import torch

    cfg, exp, fold, accelerator, main = ctx.cfg, ctx.exp, ctx.fold, ctx.accelerator, ctx.main
    spec, names = exp.spec, ctx.names
    module = plan.module.to(accelerator.device)
    for m in plan.to_device:
        m.to(accelerator.device)
    ema = ModelEmaV3(module, decay=float(plan.ema_decay)) if plan.ema_decay is not None else None
    tcfg = cfg.train
    optimizer = create_optimizer(module, tcfg.optimizer, plan.lr, plan.weight_decay, tcfg.momentum,
                                 filter_bias_and_bn=plan.filter_bias_and_bn)
    # updates per epoch: a prepared loader yields each process its share of the batches
    schedule = Schedule(optimizer, tcfg.scheduler, epochs=plan.epochs,
                        updates_per_epoch=-(-plan.batches // plan.grad_accum),
                        warmup_epochs=plan.warmup_epochs, min_lr_ratio=float(tcfg.min_lr_ratio))
    model, optimizer = accelerator.prepare(module, optimizer)
    if plan.compile:  # `module` stays the plain module: its parameters are the ones trained
        model = torch.compile(model)
    criterion = build_loss(cfg.loss, plan.counts, plan.n_items, plan.epochs, spec.task,
                           labelled=plan.labelled).to(accelerator.device)
    row_weights = None if plan.row_weights is None else torch.as_tensor(plan.row_weights).to(accelerator.device)
    saver = CheckpointSaver(exp.layout.last(fold), exp.layout.best(fold), plan.resume_fingerprint or ctx.fingerprint, module, ema,
                            optimizer, schedule, accelerator.scaler, plan.mean, plan.std, cfg.to_dict(),
                            arch=plan.arch, best_state=plan.best_state)
    if plan.init is not None:
        saver.init = plan.init
    if ctx.frame.force:   # only now that model, loaders and optimizer are built: put back if this run fails
        ctx.frame.set_aside(OUTPUTS)
    accelerator.wait_for_everyone()
    start, history, best = saver.restore(advice="use --force to start the fold again") or (0, [], -1.0)
    if plan.check_init:
        from cxrlt.models.factory import check_init

        check_init(cfg.model, saver.init, f"{display_path(saver.last)}: fold {fold}", "start it again with --force")
    if main:
        if start:
            print(f"{plan.label}: resuming after epoch {start} of {plan.epochs} from {display_path(saver.last)}")
        ctx.frame.folder.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, exp.dir / "config.yaml")
    tracking.start(accelerator, cfg, start)
    base_seed = seed_of(cfg, fold)

    def run_epoch(epoch: int):
        t0 = time.time()
        set_seed(base_seed + epoch)
        set_epoch(epoch, plan.train_ds, plan.train_loader, criterion, module)
        bar = progress_bar(plan.batches, f"{plan.label} epoch {epoch + 1}/{plan.epochs}", "batch", ctx.progress and main,
                           leave=False)
        st = train_one_epoch(model, module, plan.train_loader, criterion, optimizer, schedule, accelerator,
                             plan.loop_cfg, plan.mean, plan.std, plan.batches, ema, bar, plan.to_input, row_weights)
        bar.close()
        v = plan.validate(saver.eval_net if ema is not None else model)
        nan = float("nan")
        return dict(epoch=epoch + 1, train_loss=st["train_loss"], val_loss=v["val_loss"] if v else nan,
                    val_mAP=v["val_mAP"] if v else nan, val_mAUC=v["val_mAUC"] if v else nan,
                    **({"val_bAcc": v["val_bAcc"] if v else nan} if spec.multiclass else {}),
                    val_score=v["score"] if v else nan, lr=schedule.lr, img_s=st["img_s"],
                    **(plan.row_extra(criterion) if plan.row_extra else {}), time_s=time.time() - t0), v

    try:
        history, best, stopped = run_epochs(run_epoch, start=start, epochs=plan.epochs, history=history, best=best,
                                            saver=saver, out=ctx.frame.folder, accelerator=accelerator,
                                            title=plan.title, label=plan.label, val_ids=plan.val_ids, names=names,
                                            stop_after=stop_after, patience=plan.patience)
    except BaseException:
        tracking.finish(accelerator)   # its files closed before the frame puts back what --force set aside
        raise
    if stopped:
        tracking.finish(accelerator)
        return dict(stopped=True, epoch=len(history), dir=ctx.frame.folder)
    full = len(plan.val_ids) == 0
    best_epoch = len(history) if full else best_index(history) + 1
    return dict(fold=fold, best_mAP=best if full else float(history[best_epoch - 1]["val_mAP"]), best_score=best,
                score="val_bAcc" if spec.multiclass else "val_mAP", best_epoch=best_epoch, epochs=len(history),
                init=saver.init, fingerprint=ctx.fingerprint, skipped=False)


def seed_of(cfg: Config, fold) -> int:
    """The seed of a fold's run (each epoch adds its number): the full-data fit counts as fold k."""
    return int(cfg.seed) + 1000 * (int(cfg.folds.k) if fold == FULL else int(fold))
