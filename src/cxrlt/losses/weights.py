"""Per-class weights from training frequencies, for every loss that takes weights.

For multi-label data n_c is the number of training images on which class c is positive. Every
scheme is normalised to mean 1, so switching weights on (or on at the DRW epoch) keeps the loss scale.
"""
from __future__ import annotations

import numpy as np
import torch

from cxrlt.choices import CLASS_WEIGHTS as SCHEMES
from cxrlt.errors import CxrltError



def class_weights(positives, n: int, mode: str | None, beta: float = 0.9999) -> torch.Tensor | None:
    """None for no weights; else a float32 (C,) tensor with mean 1.

    inverse: 1 / f_c; inverse_sqrt: 1 / sqrt(f_c) (f_c = n_c / n);
    cb: class-balanced by the effective number of samples (Cui et al., CVPR 2019): (1 - beta) / (1 - beta^n_c);
    rw: scikit-learn's `balanced` re-weighting n / (C n_c) (after the mean-1 normalisation it equals
    `inverse`; it is kept under its benchmark name, Holste et al. 2022).
    """
    if not mode:
        return None
    counts = np.clip(np.asarray(positives, np.float64), 1, None)  # a class with no positive weighs as one with 1
    if mode == "inverse":
        w = n / counts
    elif mode == "inverse_sqrt":
        w = np.sqrt(n / counts)
    elif mode == "cb":
        if not 0 <= beta < 1:
            raise CxrltError(f"loss.cb_beta must be in [0, 1), not {beta}")
        w = (1 - beta) / (1 - np.power(beta, counts))
    elif mode == "rw":
        w = n / (len(counts) * counts)
    else:
        raise CxrltError(f"loss.class_weights must be null or one of {', '.join(SCHEMES)}, not '{mode}'")
    return torch.tensor(w / w.mean(), dtype=torch.float32)
