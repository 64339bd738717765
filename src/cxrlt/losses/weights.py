"""Per-class weights from training frequencies, for every loss that takes weights.

For multi-label data n_c is the number of training images on which class c is positive. Every
scheme is normalised to mean 1, so switching weights on (or on at the DRW epoch) keeps the loss scale.

With partial labels (a NaN target: the image's set does not label the finding) a class's frequency
is over the images that label it: f_c = n_c / m_c, m_c the labelled images of class c
(`label_counts`); `n` may then be that (C,) array instead of one number.
"""
from __future__ import annotations

import numpy as np
import torch

from cxrlt.choices import CLASS_WEIGHTS as SCHEMES
from cxrlt.errors import CxrltError



def label_counts(y) -> tuple[np.ndarray, np.ndarray]:
    """(positives, labelled) per class of a (N, C) target matrix in which NaN means unlabelled:
    positives sums the labelled targets (a soft target counts its share), labelled counts the
    entries that are not NaN. Without NaN: (y.sum(0), N for every class)."""
    y = np.asarray(y, np.float64)
    known = ~np.isnan(y)
    return np.where(known, y, 0.0).sum(0), known.sum(0).astype(np.int64)


def class_weights(positives, n, mode: str | None, beta: float = 0.9999) -> torch.Tensor | None:
    """None for no weights; else a float32 (C,) tensor with mean 1. n: training images, or (C,)
    labelled images per class (partial labels).

    inverse: 1 / f_c; inverse_sqrt: 1 / sqrt(f_c) (f_c = n_c / n);
    cb: class-balanced by the effective number of samples (Cui et al., CVPR 2019): (1 - beta) / (1 - beta^n_c);
    rw: scikit-learn's `balanced` re-weighting n / (C n_c) (after the mean-1 normalisation it equals
    `inverse`; it is kept under its benchmark name, Holste et al. 2022).
    """
    if not mode:
        return None
    counts = np.clip(np.asarray(positives, np.float64), 1, None)  # a class with no positive weighs as one with 1
    if np.ndim(n):
        n = np.asarray(n, np.float64)
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
