"""The one post-processing path from model outputs to the probabilities a user sees, shared by stage
04 (evaluate.predict), the route blend (ensemble.blend) and the web page (serve.predictor):

    TTA combine (per model)  ->  study aggregation, then normal gating (per model when the fold
    models are normalised, else after their mean)  ->  fold normalisation and the mean over models

as pure functions over arrays. Stage 04's figures are made by exactly these calls in exactly this
order (the order of the floating-point operations included), so the page's answer for a film is
stage 04's test row for it, whatever the `predict.*` settings.

`Settings.of(predict, spec)` checks the `predict` section once (a bad value is a one-line CxrltError
naming the key); the fold normaliser (evaluate.normalise) is the one stage 04 fitted on the OOF and
saved beside oof.csv (`NORMALISER`), loaded by the page rather than refitted: refitting from
oof.csv would fit on the CSV's 8 significant digits, not on the scores stage 04 fitted on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cxrlt.errors import CxrltError
from cxrlt.evaluate.normalise import FoldNormaliser, check_method
from cxrlt.evaluate.predictions import aggregate_studies, normal_gating
from cxrlt.models.inference import TTA_MEANS, combine_tta, parse_views

NORMALISER = "normaliser.npz"     # stage 04's fitted fold maps, beside oof.csv (predict.oof_normalise != none)


@dataclass(frozen=True)
class Settings:
    """The post-processing settings of one experiment (its `predict` section and dataset preset)."""
    views: list = field(default_factory=list)   # extra TTA views, besides the original
    tta_mean: str = "prob"
    task: str = "multilabel"
    study_aggregation: bool = True
    view_weights: dict = field(default_factory=dict)
    other_view_weight: float = 5.0
    gate: tuple | None = None      # (normal column, columns kept, alpha) or None
    normalise: str = "none"

    @classmethod
    def of(cls, pc, spec) -> "Settings":
        views, gate = check_settings(pc, spec)
        return cls(views=views, tta_mean=pc.tta_mean, task=spec.task, study_aggregation=bool(pc.study_aggregation),
                   view_weights=dict(pc.view_weights), other_view_weight=float(pc.other_view_weight), gate=gate,
                   normalise=check_method(pc.oof_normalise))


def check_settings(pc, spec):
    """(extra TTA views, gating) from `predict`, gating being None or (normal column, kept columns,
    alpha); a bad value is a one-line CxrltError naming the key."""
    views = parse_views(pc.tta)
    if pc.tta_mean not in TTA_MEANS:
        raise CxrltError(f"predict.tta_mean must be one of {', '.join(TTA_MEANS)}, not '{pc.tta_mean}'")
    alpha = pc.normal_gating
    if alpha is None:
        return views, None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 <= alpha < math.inf):
        raise CxrltError(f"predict.normal_gating must be null or a number >= 0, not '{alpha}'")
    names = list(spec.labels)
    if spec.normal_label not in names:
        raise CxrltError(f"predict.normal_gating={alpha}: dataset preset '{spec.name}' has no normal label to gate "
                         f"with; set predict.normal_gating: null")
    return views, (names.index(spec.normal_label), [names.index(x) for x in spec.normal_allows], float(alpha))


def combine_views(by_view: dict, s: Settings) -> np.ndarray:
    """One model's probabilities from its logits of each TTA view ({"none": ..., view: ...})."""
    return combine_tta(by_view["none"], [by_view[v] for v in s.views] or None, s.tta_mean, s.task).numpy()


def aggregate(probs: np.ndarray, studies, views, s: Settings) -> np.ndarray | None:
    """Study aggregation when asked for and possible (`studies` None: no study column), else None."""
    if not s.study_aggregation or studies is None:
        return None
    return aggregate_studies(probs, studies, views, dict(s.view_weights), float(s.other_view_weight))


def gate(probs: np.ndarray, s: Settings) -> np.ndarray:
    return normal_gating(probs, *s.gate) if s.gate else probs


def study_level(probs: np.ndarray, studies, views, s: Settings) -> np.ndarray:
    """Study aggregation (when asked for and possible), then normal gating (when set)."""
    agg = aggregate(probs, studies, views, s)
    return gate(agg if agg is not None else probs, s)


def over_models(per_model: dict, studies, views, s: Settings, norm: FoldNormaliser | None = None) -> np.ndarray:
    """The final probabilities from each model's TTA-combined probabilities ({fold: (n, C)}, folds in
    order, the full-data fit last): without fold normalisation, the mean over the models, then
    aggregation and gating; with it, each model's aggregated and gated scores through its own map,
    then the mean."""
    if not per_model:
        raise CxrltError("no model to predict with")
    if s.normalise == "none":
        return study_level(sum(per_model.values()) / len(per_model), studies, views, s)
    if norm is None:
        raise CxrltError(f"predict.oof_normalise={s.normalise}: no fitted fold normaliser")
    return sum(norm.apply(study_level(p, studies, views, s), k) for k, p in per_model.items()) / len(per_model)


def route_settings(pc) -> Settings:
    """A route blend's post-processing (its recipe's `predict`): study aggregation after routing;
    its members' outputs are already TTA-combined, gated and normalised by their own settings."""
    return Settings(study_aggregation=bool(pc.study_aggregation), view_weights=dict(pc.view_weights),
                    other_view_weight=float(pc.other_view_weight))


def routed_studies(probs: np.ndarray, studies, views, s: Settings) -> np.ndarray:
    """A route blend's answer: each image's routed probabilities, aggregated over its study when asked."""
    agg = aggregate(probs, studies, views, s)
    return agg if agg is not None else probs
