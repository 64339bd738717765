"""The image-model strategy of the fold trainer (train.trainer): a timm backbone trained on the
image cache, one fold of a first stage or its full-data fit.

Outputs in experiments/<name>/fold<k>/: last.pt (every epoch, everything a resume needs), best.pt
(weights that scored the best val mAP), log.csv, val_predictions.csv (best epoch), curve.png,
done.json (the fold is finished). Each epoch's randomness is a function of (seed, fold, epoch), and
everything that changes with the epoch is set by `set_epoch` at its top, so a resumed run continues
exactly as an uninterrupted one would.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from cxrlt.config import Config
from cxrlt.data.external import extra_training_rows
from cxrlt.data.loader import CxrDataset, class_balanced_weights, make_loader, repeat_factors
from cxrlt.data.pseudo import pseudo_targets
from cxrlt.errors import CxrltError
from cxrlt.experiment import FULL, given_split
from cxrlt.fileio import display_path
from cxrlt.losses import label_counts
from cxrlt.models.factory import arch_record, check_init, create_model, input_stats
from cxrlt.models.text import CACHE_NAME as TEXT_CACHE
from cxrlt.models.text import label_embeddings
from cxrlt.models.transfer import init_from, source, use_input_stats
from cxrlt.train import tracking
from cxrlt.train.loop import validate
from cxrlt.train.trainer import FoldContext, Plan, Strategy, seed_of


def full_fit_epochs(cfg: Config, exp=None) -> int:
    """train.full_epochs, or the median best epoch of the finished folds (rounded, at least 1)."""
    if cfg.train.full_epochs:
        return int(cfg.train.full_epochs)
    from cxrlt.data.experiment import Experiment

    exp = exp or Experiment.of(cfg)
    best, missing = [], []
    for f in exp.fold_ids:
        d = exp.layout.done(f)
        (best.append(json.loads(d.read_text())["best_epoch"]) if d.is_file() else missing.append(f))
    if missing:
        raise CxrltError(f"full-data fit: its epochs come from the folds' best epochs, and fold(s) "
                         f"{', '.join(map(str, missing))} are not finished; train them first or set train.full_epochs")
    return max(1, int(round(float(np.median(best)))))


@dataclass
class TrainingRows:
    """What one fold of an image model trains on: its training part, then the external sets' films
    (data.extra: NaN where a set does not label a finding), then the films pseudo-labelled by the
    teacher's fold-k model (train.pseudo). None of the added films is ever held out or scored."""
    files: list
    y: np.ndarray
    weights: np.ndarray | None = None          # per-row loss weight; None: every row 1
    parts: dict = field(default_factory=dict)  # what was added: {"external": n, "pseudo": n, "distilled": n}

    def __len__(self) -> int:
        return len(self.files)

    def counts(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(positives, labelled) per class for the loss: over labelled entries once films were added
        (losses.label_counts); the fold's own hard labels alone keep the statistics as they always
        were (labelled None)."""
        if not self.parts:
            return self.y.sum(0), None
        return label_counts(self.y)

    def describe(self) -> str:
        words = {"external": "external", "pseudo": "pseudo-labelled", "distilled": "with distilled targets"}
        return "".join(f" + {n} {words[k]}" if k != "distilled" else f" ({n} {words[k]})" for k, n in self.parts.items())


def training_rows(ctx: FoldContext, tr: np.ndarray) -> TrainingRows:
    """The fold's training rows (TrainingRows): the teacher's fold-k logits are computed first if
    missing (train.teacher, cached beside the teacher), then read with the leak guards of data.pseudo."""
    cfg, exp, fold = ctx.cfg, ctx.exp, ctx.fold
    table = exp.training()
    rows = TrainingRows([table.files[i] for i in tr], table.y[tr])
    ps = cfg.train.pseudo
    if ps["from"] and exp.spec.multiclass:
        raise CxrltError("train.pseudo: soft targets are per-finding probabilities (multilabel); this dataset is multiclass")
    if ps["from"] and fold == FULL:
        raise CxrltError("train.pseudo: the teacher's targets come from its fold-k models; the full-data fit has none")
    films = list(ps.splits) + (["folder"] if ps.folder else [])
    splits = (["train"] if float(ps.distill) > 0 else []) + films
    soft = _teacher_rows(ctx, splits) if ps["from"] and splits else None     # one pass, one read, every split
    if soft is not None and float(ps.distill) > 0:    # distillation: the fold's own films, soft and hard mixed
        own = soft.splits == "train"
        if list(map(str, soft.ids[own])) != list(map(str, table.ids.iloc[tr])):
            raise CxrltError(f"train.pseudo.distill: the teacher's fold-{fold} targets cover other films than the "
                             f"fold's training part")
        a = np.float32(ps.distill)
        rows.y = np.where(np.isnan(soft.y[own]), rows.y, (1 - a) * rows.y + a * soft.y[own]).astype(np.float32)
        rows.parts["distilled"] = len(tr)
    extra = extra_training_rows(cfg)
    if len(extra):
        rows.files += list(extra.files)
        rows.y = np.concatenate([rows.y, extra.y]).astype(np.float32)
        rows.parts["external"] = len(extra)
    if soft is not None and films:
        pseudo = np.flatnonzero(soft.splits != "train")
        rows.files += [soft.files[i] for i in pseudo]
        rows.y = np.concatenate([rows.y, soft.y[pseudo]]).astype(np.float32)
        rows.weights = np.r_[np.ones(len(rows.y) - len(pseudo)), np.full(len(pseudo), float(ps.weight))].astype(np.float32)
        rows.parts["pseudo"] = len(pseudo)
    return rows


def _teacher_rows(ctx: FoldContext, splits: list[str]):
    """The teacher's fold-k soft targets for `splits`: its inference pass first where not cached."""
    from cxrlt.train.teacher import teacher_logits

    ps = ctx.cfg.train.pseudo
    teacher_logits(ctx.cfg, ps["from"], splits, folds=[ctx.fold], progress=ctx.progress, accelerator=ctx.accelerator)
    ctx.accelerator.wait_for_everyone()
    return pseudo_targets(ctx.cfg, ps["from"], splits, ctx.fold, float(ps.temperature))


class ImageModel(Strategy):
    def check(self, cfg, exp, fold) -> None:
        if fold == FULL and given_split(cfg):
            raise CxrltError("--full / train.full_fit: folds.scheme=given trains one model on the training CSV already "
                             "(its epoch picked on data.val_csv); there is no full-data fit to add")
        if fold != FULL and fold not in exp.fold_ids:
            raise CxrltError(f"--fold {fold}: folds are {', '.join(map(str, exp.fold_ids))}"
                             + (" (folds.scheme=given)" if given_split(cfg) else ""))

    def check_finished(self, done, frame, cfg, fold) -> None:
        """A fold finished from weights the recipe does not accept (a random start under
        model.require_pretrained) is not finished for it."""
        check_init(cfg.model, done.get("init", "unknown"), f"{display_path(frame.stamp)}: fold {fold}",
                   "retrain it with --force")

    def build(self, ctx: FoldContext) -> Plan:
        from accelerate.utils import set_seed

        cfg, exp, fold, accelerator = ctx.cfg, ctx.exp, ctx.fold, ctx.accelerator
        tcfg, spec, names = cfg.train, exp.spec, ctx.names
        full = fold == FULL
        table = exp.training()
        tr, va = table.split(fold)
        y, files = table.y, table.files
        rows = training_rows(ctx, tr)       # the fold's training part, plus external and pseudo-labelled films
        positives, labelled = rows.counts()
        # the union rule's normal class (mosaic, union mixes) is a multilabel notion
        normal = names.index(spec.normal_label) if spec.normal_label and not spec.multiclass else None
        allowed = tuple(names.index(x) for x in spec.normal_allows)
        epochs = full_fit_epochs(cfg, exp) if full else int(tcfg.epochs)
        base_seed = seed_of(cfg, fold)
        text_emb = None      # before the seed: loading an encoder may draw random numbers, a cached file does not
        if cfg.model.head == "ml_decoder" and cfg.model.class_queries == "text":   # frozen, cached once
            text_emb = label_embeddings(cfg.model, names, exp.dir / TEXT_CACHE)
        set_seed(base_seed)

        init = cfg.model.init_from
        src = source(init) if init else None      # built like the source model (a converted ViT's shape)
        net = create_model(Config(dict(cfg.model, pretrained=False, pretrained_path=None)) if init else cfg.model,
                           len(names), image_size=int(cfg.cache.size),
                           timm_kwargs=src[2]["model"].get("timm_kwargs") if src else None, text_emb=text_emb)
        if init:       # input statistics from the source even on resume (a resumed fold restores its weights)
            use_input_stats(net, src[2])
        if init and not ctx.resume:
            rep = init_from(net, src, cfg.model, names, int(cfg.cache.size))
            net.init_source = f"init_from:{rep['source']}"
            if ctx.main:
                print(f"fold {fold}: initialised from {rep['source']}: {len(rep['carried'])} of {len(names)} classes "
                      f"carried (" + ", ".join(a if a == b else f"{a} <- {b}" for a, b in rep["carried"]) + ")"
                      + (f"; fresh: {', '.join(rep['fresh'])}" if rep["fresh"] else ""))
        if tcfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        mean, std = input_stats(net)
        partners = None
        if cfg.augment.balanced_mixup:     # the partner's sampling: class-balanced for one label per image (the benchmark)
            partners = class_balanced_weights(rows.y) if spec.multiclass else \
                repeat_factors(rows.y, float(tcfg.class_aware_t), float(tcfg.class_aware_cap))
        train_ds = CxrDataset(rows.files, rows.y, cfg.augment, normal, allowed,
                              seed=base_seed, epochs=epochs, partner_weights=partners)
        val_ds = CxrDataset([files[i] for i in va], y[va])
        workers = int(tcfg.workers)
        train_loader, val_loader = accelerator.prepare(
            make_loader(train_ds, int(tcfg.batch_size), workers, True, tcfg),
            make_loader(val_ds, int(tcfg.val_batch_size), workers, False))
        if len(train_loader) == 0:
            raise CxrltError(f"fold {fold}: {len(rows)} training images make no full batch of train.batch_size={tcfg.batch_size}")
        accum = int(tcfg.grad_accum)
        batches = len(train_loader) if not tcfg.max_steps_per_epoch else min(len(train_loader),
                                                                             int(tcfg.max_steps_per_epoch) * accum)
        if ctx.main:
            if full:
                print(f"full-data fit: {epochs} epochs ({'train.full_epochs' if tcfg.full_epochs else 'median best epoch of the folds'})")
            print(f"fold {fold}: {len(tr)} train / {len(va)} val images{rows.describe()}, {cfg.model.name} at "
                  f"{cfg.cache.size}px, {accelerator.num_processes} process(es) on {accelerator.device}, "
                  f"precision {accelerator.mixed_precision}")

        def check(model):
            if full:
                return None
            return validate(model, val_loader, accelerator, mean, std, tcfg.channels_last, names, task=spec.task)

        def after(summary):
            if not full:
                tracking.log_best_ap(accelerator, ctx.frame.folder / "val_predictions.csv", table.ids, y, names,
                                     summary["best_epoch"])

        return Plan(module=net, train_ds=train_ds, train_loader=train_loader, validate=check,
                    val_ids=table.ids.iloc[va], epochs=epochs, batches=batches, counts=positives, n_items=len(rows),
                    labelled=labelled, row_weights=rows.weights,
                    arch=arch_record(cfg.model, names, cfg.cache.size, cfg.cache.resize, mean, std, net, task=spec.task),
                    mean=mean, std=std, loop_cfg=tcfg, lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay),
                    warmup_epochs=float(tcfg.warmup_epochs), label=f"fold {fold}", title=f"{cfg.name} fold {fold}",
                    grad_accum=accum, ema_decay=float(tcfg.ema_decay) if tcfg.ema else None, compile=bool(tcfg.compile),
                    check_init=True, patience=None if full else tcfg.patience,
                    row_extra=lambda criterion: dict(mosaic=train_ds.mosaic_p,
                                                     loss_weighted=bool(getattr(criterion, "weighted", False))),
                    after=after)
