"""One registry of losses, chosen by `loss.name`. Each builder receives the loss section, the
training class counts and the number of epochs, and declares the keys it reads: a key it does not
read, set to anything but its default or off (0 / null / false), is refused instead of silently
doing nothing.

    @register("focal", keys=("alpha", "gamma", "label_smoothing"))
    def _focal(lcfg, stats, weight, drw_epoch): ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


from cxrlt.config import Config
from cxrlt.schema import defaults as recipe_defaults
from cxrlt.errors import CxrltError
from cxrlt.losses.base import AsymmetricLoss, BCELoss, FocalLoss, MultiLabelLoss
from cxrlt.losses.weights import class_weights

WEIGHT_KEYS = ("class_weights", "cb_beta", "drw_epoch")


@dataclass(frozen=True)
class TrainStats:
    """What a loss may know about its training data: positives per class, images, epochs, and the
    images that label each class (`labelled`, (C,); None = all n: no partial labels)."""
    positives: np.ndarray
    n: int
    epochs: int
    labelled: np.ndarray | None = None

    @property
    def per_class(self):
        """Images a class's frequency is over: n, or the (C,) labelled counts with partial labels."""
        return self.n if self.labelled is None else self.labelled


@dataclass(frozen=True)
class _Entry:
    build: Callable
    keys: tuple
    weights: bool


LOSSES: dict[str, _Entry] = {}               # multilabel (data.task=multilabel)
MULTICLASS_LOSSES: dict[str, _Entry] = {}    # their softmax forms (data.task=multiclass, losses/softmax.py)


def register(name: str, keys=(), weights: bool = True, task: str = "multilabel"):
    """Register a builder `(lcfg, stats, weight, drw_epoch) -> loss module` under `name` for `task`.
    weights: the loss takes per-class weights (and so DRW)."""
    def deco(fn):
        (MULTICLASS_LOSSES if task == "multiclass" else LOSSES)[name] = _Entry(fn, tuple(keys), weights)
        return fn
    return deco


def _defaults() -> dict:
    return recipe_defaults()["loss"]


def _check_keys(lcfg, name: str, entry: _Entry) -> None:
    reads = {"name", *entry.keys, *(WEIGHT_KEYS if entry.weights else ())}
    defaults = _defaults()
    for key, value in lcfg.items():
        if key not in reads and key in defaults and value != defaults[key] and value not in (None, False, 0):
            raise CxrltError(f"loss.{key}={value!r} has no effect with loss.name={name} (it reads "
                             f"{', '.join(sorted(reads - {'name'})) or 'no other key'}); remove it or pick another loss")


def build_loss(lcfg, positives, n: int, epochs: int = 1, task: str = "multilabel", labelled=None) -> MultiLabelLoss:
    """The recipe's loss; positives (C,) and n (training counts) feed class weights and margins.
    task=multiclass picks the softmax form (one label per image).

    labelled: (C,) training images that label each class, when some targets are NaN (partial
    labels: external sets, losses/base.py); None = n for every class, as before. Class frequencies
    (class weights, weighted_bce's ratio, DB's prior) are then over labelled images only; positives
    must count labelled entries only too (`losses.weights.label_counts(y)` gives both)."""
    lcfg = Config({**_defaults(), **lcfg})     # a partial section (a test, a tool) takes the defaults
    name = lcfg.name
    table = MULTICLASS_LOSSES if task == "multiclass" else LOSSES
    if name not in table:
        other = LOSSES if task == "multiclass" else MULTICLASS_LOSSES
        why = f" (a {'multilabel' if task == 'multiclass' else 'multiclass'} loss)" if name in other else ""
        raise CxrltError(f"loss.name must be one of {', '.join(sorted(table))} with data.task={task}, "
                         f"not '{name}'{why}")
    entry = table[name]
    _check_keys(lcfg, name, entry)
    if labelled is not None:
        labelled = np.asarray(labelled, np.int64)
        if labelled.shape != np.shape(positives) or (labelled > int(n)).any() or (labelled < 0).any():
            raise CxrltError(f"build_loss: labelled counts must be one per class in [0, n={int(n)}], "
                             f"got shape {labelled.shape} for {np.shape(positives)} classes")
        if task == "multiclass" and (labelled < int(n)).any():
            raise CxrltError("data.task=multiclass: a softmax over one label per image has no unlabelled "
                             "entries; partial labels (NaN targets, data.extra) need data.task=multilabel")
        if (labelled == int(n)).all():
            labelled = None              # nothing is unlabelled: exactly the statistics without partial labels
    stats = TrainStats(np.asarray(positives, np.float64), int(n), int(epochs), labelled)
    weight = class_weights(stats.positives, stats.per_class, lcfg.class_weights,
                           float(lcfg.cb_beta)) if entry.weights else None
    drw = int(lcfg.drw_epoch or 0) if entry.weights else 0
    if drw and weight is None:
        raise CxrltError(f"loss.drw_epoch={drw} defers class weights, but loss.class_weights is null")
    if not 0 <= drw < max(stats.epochs, 1):
        raise CxrltError(f"loss.drw_epoch={drw} must be in [0, train.epochs={stats.epochs})")
    return entry.build(lcfg, stats, weight, drw)


@register("bce", keys=("label_smoothing",))
def _bce(lcfg, stats, weight, drw):
    return BCELoss(float(lcfg.label_smoothing), weight, drw_epoch=drw)


@register("weighted_bce", keys=("label_smoothing", "max_pos_weight"))
def _weighted_bce(lcfg, stats, weight, drw):
    """Positives up-weighted by their negative/positive ratio (among labelled images), capped at loss.max_pos_weight."""
    pos = np.clip(stats.positives, 1, None)
    pw = np.clip((stats.per_class - pos) / pos, 1, float(lcfg.max_pos_weight))
    return BCELoss(float(lcfg.label_smoothing), weight, torch.tensor(pw, dtype=torch.float32), drw_epoch=drw)


@register("focal", keys=("alpha", "gamma", "label_smoothing"))
def _focal(lcfg, stats, weight, drw):
    return FocalLoss(lcfg.alpha, float(lcfg.gamma), float(lcfg.label_smoothing), weight, drw_epoch=drw)


@register("asl", keys=("gamma_neg", "gamma_pos", "clip", "label_smoothing"))
def _asl(lcfg, stats, weight, drw):
    return AsymmetricLoss(float(lcfg.gamma_neg), float(lcfg.gamma_pos), float(lcfg.clip),
                          float(lcfg.label_smoothing), weight, drw_epoch=drw)
