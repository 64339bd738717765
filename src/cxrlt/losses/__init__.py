"""Losses wing: one registry, each loss a builder that checks its own keys. Imports only ground.

What the rest may use: `build_loss(lcfg, positives, n, epochs, task, labelled=None)`, `class_weights`,
`label_counts` (positives and labelled images per class of a target matrix with NaN = unlabelled),
`LOSSES` (names), and the loss classes. A NaN target entry is unlabelled: it adds exactly 0 to
loss and gradient (losses/base.py). Importing this package registers every loss module below.
"""
from cxrlt.losses import db, ldam, ral, softmax  # noqa: F401  (register themselves)
from cxrlt.losses.base import AsymmetricLoss, BCELoss, FocalLoss, MultiLabelLoss  # noqa: F401
from cxrlt.losses.registry import LOSSES, MULTICLASS_LOSSES, TrainStats, build_loss, register  # noqa: F401
from cxrlt.losses.weights import class_weights, label_counts  # noqa: F401
