"""Stage 03's entry: one fold of a recipe, trained by the strategy its recipe calls for."""
from __future__ import annotations

from cxrlt.config import Config
from cxrlt.train.trainer import Strategy, run_fold


def is_second_stage(cfg) -> bool:
    return bool((cfg.get("stage2") or {}).get("from"))


def strategy_of(cfg: Config) -> Strategy:
    """A second stage over a first stage's frozen folds (stage2.from), else an image model."""
    if is_second_stage(cfg):
        from cxrlt.train.second_stage import second_stage_strategy

        return second_stage_strategy(cfg)
    from cxrlt.train.image import ImageModel

    return ImageModel()


def train_fold(cfg: Config, fold, force: bool = False, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or resume, or skip) one fold under its lock. fold = experiment.FULL: the full-data
    fit of a first stage (every training image, no validation, best.pt = the last epoch's weights).
    stop_after: return after that many epochs (tests a kill)."""
    return run_fold(cfg, fold, strategy_of(cfg), force=force, progress=progress, stop_after=stop_after)
