"""RAL, the Robust Asymmetric Loss (Park et al., ICCV 2023 CVAMD workshop, arXiv 2308.05542,
"Robust Asymmetric Loss for Multi-Label Long-Tailed Learning"; a top-5 entry of CXR-LT 2023).

An asymmetric polynomial loss (ASL's focusing and probability margin on a Taylor-expanded BCE)
whose negative term is damped by the Hill loss factor (lambda - p) p^2 (Zhang et al. 2021), which
makes it less sensitive to its many hyper-parameters. With p = sigmoid(z) and the shifted
probability p_m = max(p - clip, 0):
    L+ = -(1 - p)^gamma_pos [log p + eps1 (1 - p) + (eps2 / 2) (1 - p)^2]
    L- = -p_m^gamma_neg (lambda - p) p^2 (lambda - 1 + p_m) log(1 - p_m)
    L  = y L+ + (1 - y) L-
as in the authors' code (kalelpark/RAL, models/get_optimizer.py, class Ralloss, built with
gamma_neg=4, gamma_pos=0, clip=0.05, lamb=1.5, epsilon_pos=1, epsilon_neg=0, epsilon_pos_pow=-2.5;
the code's negative term carries the second factor (lambda - (1 - p_m)) too, and its epsilon_neg
term is 0, so it is left out). The focusing factors are not detached (the code's choice).
Unlike the code, log p is computed as logsigmoid(z) rather than log(clamp(p, 1e-8)), so a very
wrong positive keeps its gradient; with clip = 0, log(1 - p) is logsigmoid(-z).

Parameters: gamma_pos = 0, gamma_neg = 4 the focusing exponents; clip = 0.05 the probability
margin; lambda = 1.5 the Hill factor; eps1 = 1, eps2 = -2.5 the first- and second-order
polynomial coefficients. Per-class weights (loss.class_weights, DRW) multiply the elements.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrlt.errors import CxrltError
from cxrlt.losses.base import MultiLabelLoss
from cxrlt.losses.registry import register


class RobustAsymmetricLoss(MultiLabelLoss):
    def __init__(self, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, lam=1.5, eps1=1.0, eps2=-2.5, weight=None,
                 drw_epoch=0):
        super().__init__(weight, drw_epoch)
        self.gamma_pos, self.gamma_neg, self.clip = float(gamma_pos), float(gamma_neg), float(clip)
        self.lam, self.eps1, self.eps2 = float(lam), float(eps1), float(eps2)

    def elementwise(self, logits, target):
        logits = logits.float()
        p = torch.sigmoid(logits)
        q = 1 - p                                                   # 1 - p
        pos = -(q ** self.gamma_pos) * (F.logsigmoid(logits) + self.eps1 * q + 0.5 * self.eps2 * q ** 2)
        if self.clip > 0:
            p_m = (p - self.clip).clamp(min=0)
            log_neg = torch.log1p(-p_m)
        else:
            p_m, log_neg = p, F.logsigmoid(-logits)
        hill = (self.lam - p) * p ** 2 * (self.lam - 1 + p_m)
        neg = -(p_m ** self.gamma_neg) * hill * log_neg
        return target * pos + (1 - target) * neg


@register("ral", keys=("ral_gamma_pos", "ral_gamma_neg", "ral_clip", "ral_lambda", "ral_eps1", "ral_eps2"))
def _ral(lcfg, stats, weight, drw):
    clip, lam = float(lcfg.ral_clip), float(lcfg.ral_lambda)
    if not 0 <= clip < 1 or lam < 1 or lcfg.ral_gamma_pos < 0 or lcfg.ral_gamma_neg < 0:
        raise CxrltError(f"loss.ral_clip must be in [0, 1), loss.ral_lambda >= 1 and the ral gammas >= 0 "
                         f"(got clip={clip}, lambda={lam}, gammas={lcfg.ral_gamma_pos}, {lcfg.ral_gamma_neg})")
    return RobustAsymmetricLoss(float(lcfg.ral_gamma_pos), float(lcfg.ral_gamma_neg), clip, lam,
                                float(lcfg.ral_eps1), float(lcfg.ral_eps2), weight, drw_epoch=drw)
