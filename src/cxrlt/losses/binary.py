"""Multi-label losses, chosen by `loss.name` in the recipe: focal | bce | weighted_bce | asl."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from cxrlt.errors import CxrltError


def class_weights(positives: np.ndarray, n: int, mode: str | None) -> torch.Tensor | None:
    """Per-class weights from training frequencies, normalised to mean 1 (None: no weights)."""
    if not mode:
        return None
    freq = np.clip(np.asarray(positives, np.float64), 1, None) / n
    w = {"inverse": 1 / freq, "inverse_sqrt": 1 / np.sqrt(freq)}[mode]
    return torch.tensor(w / w.mean(), dtype=torch.float32)


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al.): alpha_t (1 - p_t)^gamma BCE, on label-smoothed targets.

    torchvision's sigmoid_focal_loss does the arithmetic; this adds smoothing and class weights.
    """

    def __init__(self, alpha=0.25, gamma=2.0, label_smoothing=0.0, weight=None):
        super().__init__()
        self.alpha, self.gamma, self.ls = alpha, gamma, label_smoothing
        self.register_buffer("weight", weight if weight is not None else torch.ones(0))

    def forward(self, logits, target):
        t = target * (1 - self.ls) + 0.5 * self.ls
        loss = sigmoid_focal_loss(logits, t, alpha=self.alpha if self.alpha is not None else -1,
                                  gamma=self.gamma, reduction="none")
        if self.weight.numel():
            loss = loss * self.weight
        return loss.mean()


class BCELoss(nn.Module):
    def __init__(self, label_smoothing=0.0, weight=None, pos_weight=None):
        super().__init__()
        self.ls = label_smoothing
        self.register_buffer("weight", weight if weight is not None else torch.ones(0))
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else torch.ones(0))

    def forward(self, logits, target):
        t = target * (1 - self.ls) + 0.5 * self.ls
        loss = F.binary_cross_entropy_with_logits(
            logits, t, reduction="none", pos_weight=self.pos_weight if self.pos_weight.numel() else None)
        if self.weight.numel():
            loss = loss * self.weight
        return loss.mean()


def build_loss(lcfg, positives: np.ndarray, n: int) -> nn.Module:
    """The recipe's loss; positives/n (training counts) feed optional class weights."""
    name = lcfg.name
    weight = class_weights(positives, n, lcfg.get("class_weights"))
    if name == "focal":
        return FocalLoss(lcfg.alpha, lcfg.gamma, lcfg.label_smoothing, weight)
    if name == "bce":
        return BCELoss(lcfg.label_smoothing, weight)
    if name == "weighted_bce":  # positives up-weighted by their negative/positive ratio, capped
        pos = np.clip(np.asarray(positives, np.float64), 1, None)
        pw = np.clip((n - pos) / pos, 1, lcfg.get("max_pos_weight", 50))
        return BCELoss(lcfg.label_smoothing, weight, torch.tensor(pw, dtype=torch.float32))
    if name == "asl":
        from timm.loss import AsymmetricLossMultiLabel

        return AsymmetricLossMultiLabel(gamma_neg=lcfg.gamma_neg, gamma_pos=lcfg.gamma_pos, clip=lcfg.clip)
    raise CxrltError(f"loss.name must be focal, bce, weighted_bce or asl, not '{name}'")
