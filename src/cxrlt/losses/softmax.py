"""The softmax forms of the losses, for data.task=multiclass (one label per image; the single-label
long-tail benchmark of Holste et al., MICCAI DALI 2022): cross-entropy, focal, LDAM, each with the
class weights (cb / rw) and deferred re-weighting of the registry.

Targets are rows of class probabilities (one-hot, or linear mixes from MixUp / Balanced-MixUp), so
every loss takes soft labels: l_i = -sum_c y_ic f(p_ic), label smoothing towards 1/C. With class
weights the batch loss is sum_i w_i l_i / sum_i w_i, w_i = sum_c w_c y_ic (the weight of the true
class): for one-hot targets exactly torch's `cross_entropy(weight=w)` mean, the benchmark's code
(torch has no focal or LDAM softmax loss with soft targets, hence these few lines).

Partial labels (NaN targets) have no meaning for one softmax over one label per image:
`build_loss(..., task="multiclass", labelled=...)` refuses them in one line before training.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrlt.errors import CxrltError
from cxrlt.losses.ldam import ldam_margins
from cxrlt.losses.registry import register


class MultiClassLoss(nn.Module):
    """Per-image loss l_i (B,) from `per_image`; class weights from epoch `drw_epoch` on."""

    def __init__(self, weight: torch.Tensor | None = None, drw_epoch: int = 0, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else torch.ones(0))
        self.drw_epoch, self.ls = int(drw_epoch), float(label_smoothing)
        self.weighted = self.drw_epoch <= 0

    def set_epoch(self, epoch: int) -> None:
        self.weighted = epoch >= self.drw_epoch

    def per_image(self, logits: torch.Tensor, target: torch.Tensor, smoothed: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        smoothed = target * (1 - self.ls) + self.ls / target.shape[1] if self.ls else target
        loss = self.per_image(logits, target, smoothed)
        if self.weighted and self.weight.numel():
            w = (target * self.weight).sum(1)
            return (w * loss).sum() / w.sum().clamp(min=1e-12)
        return loss.mean()


class CrossEntropy(MultiClassLoss):
    def per_image(self, logits, target, smoothed):
        return -(smoothed * F.log_softmax(logits, 1)).sum(1)


class SoftmaxFocal(MultiClassLoss):
    """Focal loss (Lin et al. 2017) over the softmax: -sum_c y_c (1 - p_c)^gamma log p_c."""

    def __init__(self, gamma: float = 2.0, **kw):
        super().__init__(**kw)
        self.gamma = float(gamma)

    def per_image(self, logits, target, smoothed):
        logp = F.log_softmax(logits, 1)
        return -(smoothed * (1 - logp.exp()) ** self.gamma * logp).sum(1)


class SoftmaxLDAM(MultiClassLoss):
    """LDAM (Cao et al. 2019) as in the paper: the true class's logit lowered by m_y = max_m n_y^(-1/4)
    (scaled so the rarest class gets max_m), times s, then cross-entropy; a mixed label lowers each
    logit by its share of the margin."""

    def __init__(self, margins: torch.Tensor, s: float = 30.0, **kw):
        super().__init__(**kw)
        self.register_buffer("margins", margins)
        self.s = float(s)

    def per_image(self, logits, target, smoothed):
        return -(smoothed * F.log_softmax(self.s * (logits - self.margins * target), 1)).sum(1)


@register("ce", keys=("label_smoothing",), task="multiclass")
def _ce(lcfg, stats, weight, drw):
    return CrossEntropy(weight, drw, float(lcfg.label_smoothing))


@register("focal", keys=("gamma", "label_smoothing"), task="multiclass")
def _focal(lcfg, stats, weight, drw):
    return SoftmaxFocal(float(lcfg.gamma), weight=weight, drw_epoch=drw, label_smoothing=float(lcfg.label_smoothing))


@register("ldam", keys=("ldam_max_m", "ldam_s", "label_smoothing"), task="multiclass")
def _ldam(lcfg, stats, weight, drw):
    max_m, s = float(lcfg.ldam_max_m), float(lcfg.ldam_s)
    if max_m < 0 or s <= 0:
        raise CxrltError(f"loss.ldam_max_m must be >= 0 and loss.ldam_s > 0 (got {max_m}, {s})")
    return SoftmaxLDAM(ldam_margins(stats.positives, max_m), s, weight=weight, drw_epoch=drw,
                       label_smoothing=float(lcfg.label_smoothing))
