"""The shape every multi-label loss here shares, and the classic ones: BCE, weighted BCE, focal, ASL.

A loss computes a per-element loss (B, C); the base class multiplies it by per-class weights, from
epoch `drw_epoch` on (deferred re-weighting, Cao et al., NeurIPS 2019; 0 = from the start), and
returns the mean over batch and classes, so the loss scale (hence the right lr) does not depend on
batch size or class count. The weighting is a function of the epoch set by `set_epoch` at the top of
each epoch, never a counter carried across epochs, so a resumed run is exact.

Unlabelled entries (partial labels, docs/external_data.md). A target entry that is NaN means "this
image's set does not label this finding": it is neither positive nor negative. The element loss is
computed with that entry read as 0 (so every term stays finite), then left out, and the batch loss is

    sum over labelled entries of w_c l_ic  /  number of labelled entries   (0 when none is labelled)

so a masked entry contributes exactly 0 to the loss and to the gradient. With no NaN in the batch this
is the plain mean over batch and classes, and the value returned is that mean itself, computed by
the same operations as before masking existed (bit for bit; chosen on the device, no host sync).
Soft targets in [0, 1] (pseudo-labels, distillation, MixUp) are used as they are by every loss here:
each interpolates its positive and negative terms by the target (y l+ + (1 - y) l-). An optional
per-row weight r_i (`forward(logits, target, row_weight)`, e.g. pseudo-labelled films at a lower
weight) multiplies row i's terms: sum r_i w_c l_ic / number of labelled entries.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss


class MultiLabelLoss(nn.Module):
    def __init__(self, weight: torch.Tensor | None = None, drw_epoch: int = 0):
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else torch.ones(0))
        self.drw_epoch = int(drw_epoch)
        self.weighted = self.drw_epoch <= 0

    def set_epoch(self, epoch: int) -> None:
        """Epochs count from 0: weights apply in every epoch >= drw_epoch."""
        self.weighted = epoch >= self.drw_epoch

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor, row_weight: torch.Tensor | None = None) -> torch.Tensor:
        """row_weight: (B,) weights of the rows (e.g. a pseudo-label weight), multiplying their element
        losses; the divisor stays the number of labelled entries, so a weight scales a row's share."""
        labelled = ~torch.isnan(target)
        loss = self.elementwise(logits, torch.where(labelled, target, torch.zeros_like(target)))
        if self.weighted and self.weight.numel():
            loss = loss * self.weight
        if row_weight is not None:
            loss = loss * row_weight.reshape(-1, 1).to(loss.dtype)
        n = labelled.sum()
        masked = torch.where(labelled, loss, torch.zeros_like(loss)).sum() / n.clamp(min=1)
        # every entry labelled: the plain mean, exactly the value of the unmasked formula
        return torch.where(n == labelled.numel(), loss.mean(), masked)


def smooth(target: torch.Tensor, ls: float) -> torch.Tensor:
    """Label smoothing towards 0.5."""
    return target * (1 - ls) + 0.5 * ls if ls else target


class BCELoss(MultiLabelLoss):
    def __init__(self, label_smoothing=0.0, weight=None, pos_weight=None, drw_epoch=0):
        super().__init__(weight, drw_epoch)
        self.ls = float(label_smoothing)
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else torch.ones(0))

    def elementwise(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, smooth(target, self.ls), reduction="none",
                                                  pos_weight=self.pos_weight if self.pos_weight.numel() else None)


class FocalLoss(MultiLabelLoss):
    """Binary focal loss (Lin et al., ICCV 2017): alpha_t (1 - p_t)^gamma BCE, on label-smoothed targets.

    torchvision's sigmoid_focal_loss does the arithmetic; this adds smoothing, class weights and DRW.
    """

    def __init__(self, alpha=0.25, gamma=2.0, label_smoothing=0.0, weight=None, drw_epoch=0):
        super().__init__(weight, drw_epoch)
        self.alpha, self.gamma, self.ls = alpha, float(gamma), float(label_smoothing)

    def elementwise(self, logits, target):
        return sigmoid_focal_loss(logits, smooth(target, self.ls), alpha=self.alpha if self.alpha is not None else -1,
                                  gamma=self.gamma, reduction="none")


class AsymmetricLoss(MultiLabelLoss):
    """Asymmetric loss (Ridnik et al., ICCV 2021): timm's AsymmetricLossMultiLabel per element, then
    this module's weights/DRW and mean. timm's default reduction sums over classes ('batchmean'; older
    timm summed over the batch too), so the loss scale, hence the right lr, changed with the number of
    classes (and batch size); the mean over elements does not. Smoothing and class weights are honoured.
    """

    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, label_smoothing=0.0, weight=None, drw_epoch=0):
        super().__init__(weight, drw_epoch)
        from timm.loss import AsymmetricLossMultiLabel

        self.asl = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip,
                                            smoothing=float(label_smoothing), reduction="none")

    def elementwise(self, logits, target):
        return self.asl(logits, target)
