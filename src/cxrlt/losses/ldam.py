"""LDAM (label-distribution-aware margin, Cao et al., NeurIPS 2019) in its multi-label form.

Each positive logit is lowered by a class margin m_c proportional to n_c^(-1/4), scaled so the
rarest class gets loss.ldam_max_m; the shifted logits are multiplied by loss.ldam_s and scored with
binary cross-entropy: BCE(s (z - m_c y), y~), y~ the label-smoothed target (the margin
uses the unsmoothed y; a soft, mixed label or a pseudo-label gets the proportional margin y m_c; an
unlabelled, NaN entry gets none and is left out, losses/base.py). LDAM-DRW is this loss with loss.class_weights (cb) and
loss.drw_epoch (the paper defers the weights to 80 % of training).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrlt.errors import CxrltError
from cxrlt.losses.base import MultiLabelLoss, smooth
from cxrlt.losses.registry import register


def ldam_margins(positives, max_m: float) -> torch.Tensor:
    """m_c = max_m * n_c^(-1/4) / max_c n_c^(-1/4) (classes without positives count as n_c = 1)."""
    m = 1.0 / np.sqrt(np.sqrt(np.clip(np.asarray(positives, np.float64), 1, None)))
    return torch.tensor(m * (max_m / m.max()), dtype=torch.float32)


class LDAMLoss(MultiLabelLoss):
    def __init__(self, margins: torch.Tensor, s: float = 30.0, label_smoothing: float = 0.0, weight=None,
                 drw_epoch: int = 0):
        super().__init__(weight, drw_epoch)
        self.register_buffer("margins", margins)
        self.s, self.ls = float(s), float(label_smoothing)

    def elementwise(self, logits, target):
        return F.binary_cross_entropy_with_logits(self.s * (logits - self.margins * target), smooth(target, self.ls),
                                                  reduction="none")


@register("ldam", keys=("ldam_max_m", "ldam_s", "label_smoothing"))
def _ldam(lcfg, stats, weight, drw):
    max_m, s = float(lcfg.ldam_max_m), float(lcfg.ldam_s)
    if max_m < 0 or s <= 0:
        raise CxrltError(f"loss.ldam_max_m must be >= 0 and loss.ldam_s > 0 (got {max_m}, {s})")
    return LDAMLoss(ldam_margins(stats.positives, max_m), s, float(lcfg.label_smoothing), weight, drw_epoch=drw)
