"""Losses wing: one registry, each loss a builder that checks its own keys. Imports only ground.

What the rest may use: `build_loss(lcfg, positives, n, epochs, task)`, `class_weights`, `LOSSES` (names),
and the loss classes. Importing this package registers every loss module below.
"""
from cxrlt.losses import db, ldam, ral, softmax  # noqa: F401  (register themselves)
from cxrlt.losses.base import AsymmetricLoss, BCELoss, FocalLoss, MultiLabelLoss  # noqa: F401
from cxrlt.losses.registry import LOSSES, MULTICLASS_LOSSES, TrainStats, build_loss, register  # noqa: F401
from cxrlt.losses.weights import class_weights  # noqa: F401
