"""Distribution-Balanced loss (Wu et al., ECCV 2020, "Distribution-Balanced Loss for Multi-Label
Classification in Long-Tailed Datasets"), in its DB-Focal form, the paper's best.

Re-balanced weighting. With n_i the training positives of class i, an instance x with labels y
would be drawn with P^I(x) = (1/C) sum_k y_k / n_k under class-aware sampling; class i alone
would give P^C_i = 1 / (C n_i). Every element of the row is weighted by the smoothed ratio
    r_i = P^C_i / P^I(x),    r_hat_i = alpha + sigmoid(beta (r_i - mu)),
positives and negatives alike. A row with no positive label has P^I = 0, r = inf, so
r_hat = alpha + 1 on every class: the limit, and what the official code computes (its division
gives inf); it is written out here so that beta = 0 gives no NaN.

Negative-tolerant regularisation. With the class prior p_i = n_i / N and b_i = -log(1/p_i - 1)
(the bias whose sigmoid is p_i), the logit is shifted to s = z - nu_i, nu_i = -(kappa / lambda) b_i
(so a rare class is pushed down while training), and negatives get a sharper, smaller loss:
    L = r_hat [ y log(1 + exp(-s)) + (1/lambda) (1 - y) log(1 + exp(lambda s)) ].
This is the official code (mllt/models/losses/resample_loss.py: logits += init_bias, with
init_bias = -log(N/n_i - 1) kappa / neg_scale, then negative logits * neg_scale and weights
/ neg_scale); the paper writes nu_i = kappa b_i, the 1/lambda and the sign are the code's.

Focal (DB-Focal, focal_gamma > 0): each term is multiplied by 2 (1 - p_t)^gamma, p_t being the
probability of the right answer under that term's own logit (sigmoid(s) for a positive,
sigmoid(-lambda s) for a negative); 2 is the official balance_param.

Parameters (official COCO-MLT config; VOC-MLT differs in mu = 0.3, lambda = 5):
alpha = 0.1 the weight floor, beta = 10 the steepness and mu = 0.2 the centre of the smoothing;
lambda = 2 the negative scale; kappa = 0.05 the prior-bias scale; focal_gamma = 2.
DB brings its own weighting, so it takes no loss.class_weights (nor DRW).
Classes with no (or only) positives count as having 1 (or N - 1), so every term stays finite.

Partial labels (NaN targets, losses/base.py): an unlabelled entry counts as not positive in its
row's P^I(x) (the instance is drawn for the classes it is known to show) and its own term is left
out; the prior p_i is over the images that label class i. Soft targets: P^I(x) sums y_k / n_k with
the soft y_k, and each term interpolates y pos + (1 - y) neg.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrlt.errors import CxrltError
from cxrlt.losses.base import MultiLabelLoss
from cxrlt.losses.registry import register

FOCAL_BALANCE = 2.0  # the official balance_param of DB-Focal


class DistributionBalancedLoss(MultiLabelLoss):
    """n: training images, or (C,) images that label each class (partial labels): the prior
    p_i = n_i / n is then over the images that label class i."""

    def __init__(self, positives, n, alpha=0.1, beta=10.0, mu=0.2, lam=2.0, kappa=0.05, focal_gamma=2.0):
        super().__init__()
        if np.ndim(n):
            n = np.asarray(n, np.float64)
            counts = np.clip(np.asarray(positives, np.float64), 1, np.maximum(n - 1, 1))
        else:
            counts = np.clip(np.asarray(positives, np.float64), 1, max(n - 1, 1))
        bias = -np.log(n / counts - 1)                      # b_i, sigmoid(b_i) = p_i
        self.register_buffer("inv_freq", torch.tensor(1 / counts, dtype=torch.float32))
        self.register_buffer("shift", torch.tensor(kappa * bias / lam, dtype=torch.float32))  # -nu_i
        self.alpha, self.beta, self.mu, self.lam = float(alpha), float(beta), float(mu), float(lam)
        self.gamma = float(focal_gamma or 0)

    def rebalance(self, target: torch.Tensor) -> torch.Tensor:
        """r_hat (B, C): alpha + sigmoid(beta (r - mu)); alpha + 1 on rows without positives."""
        rate = (target * self.inv_freq).sum(1, keepdim=True)            # C P^I(x)
        r = self.inv_freq / rate.clamp(min=torch.finfo(rate.dtype).tiny)  # P^C_i / P^I(x)
        r_hat = self.alpha + torch.sigmoid(self.beta * (r - self.mu))
        return torch.where(rate > 0, r_hat, torch.full_like(r_hat, self.alpha + 1))

    def elementwise(self, logits, target):
        s = logits + self.shift
        pos, neg = F.softplus(-s), F.softplus(self.lam * s) / self.lam
        if self.gamma:
            pos = FOCAL_BALANCE * (1 - torch.sigmoid(s)) ** self.gamma * pos
            neg = FOCAL_BALANCE * (1 - torch.sigmoid(-self.lam * s)) ** self.gamma * neg
        return self.rebalance(target.detach()) * (target * pos + (1 - target) * neg)


@register("db", keys=("db_alpha", "db_beta", "db_mu", "db_lambda", "db_kappa", "db_focal_gamma"), weights=False)
def _db(lcfg, stats, weight, drw):
    lam, gamma = float(lcfg.db_lambda), float(lcfg.db_focal_gamma or 0)
    if lam <= 0 or gamma < 0 or stats.n < 2:
        raise CxrltError(f"loss.db_lambda must be > 0 and loss.db_focal_gamma >= 0, with >= 2 training images "
                         f"(got {lam}, {gamma}, n={stats.n})")
    return DistributionBalancedLoss(stats.positives, stats.per_class, float(lcfg.db_alpha), float(lcfg.db_beta),
                                    float(lcfg.db_mu), lam, float(lcfg.db_kappa), gamma)
