"""Experiment tracking through accelerate's trackers (`train.trackers`, default [tensorboard]).

TensorBoard event files go to experiments/<name>/fold<k>/tb/, so `tensorboard --logdir experiments/`
shows every run and fold. Each trained epoch logs the scalars of its log.csv row (step = epoch,
1-based); the end of the fold logs the best epoch's per-class AP as `val_AP/<label>`. A resumed
fold logs only the epochs it trains, and its TensorBoard writer purges any step from the resumed
epoch on that a killed run had logged, so every epoch shows exactly once.
"""
from __future__ import annotations

import importlib.util
import re

import numpy as np
import pandas as pd

from cxrlt.choices import TRACKERS
from cxrlt.errors import CxrltError
from cxrlt.fileio import read_table
from cxrlt.metrics import mean_ap

EPOCH_SCALARS = ("train_loss", "val_loss", "val_mAP", "val_mAUC", "val_bAcc", "lr", "img_s")
TB_FOLDER = "tb"  # inside the fold's folder


def tracker_names(tcfg) -> list[str]:
    """train.trackers as a list of known trackers whose package is installed (else a one-line error)."""
    names = tcfg.get("trackers") or []
    names = [names] if isinstance(names, str) else list(names)
    for n in names:
        if n not in TRACKERS:
            raise CxrltError(f"train.trackers: unknown tracker '{n}' (use {', '.join(TRACKERS)}, or [] for none)")
        if importlib.util.find_spec(n) is None:
            raise CxrltError(f"train.trackers: {n} needs the '{n}' package: pip install {n} (or drop it from train.trackers)")
    return names


def log_with(cfg, fold: int) -> list:
    """What the fold's Accelerator gets as `log_with`. TensorBoard by name: its folder is the
    Accelerator's project_dir (the fold's folder) joined with TB_FOLDER. wandb and mlflow as tracker
    objects, so their project is `cxrlt` and each fold a run named `<experiment>-fold<k>`."""
    from accelerate.tracking import MLflowTracker, WandBTracker

    run = f"{cfg.name}-fold{fold}"
    make = {"tensorboard": lambda: "tensorboard",
            "wandb": lambda: WandBTracker("cxrlt", name=run, group=cfg.name),
            "mlflow": lambda: MLflowTracker("cxrlt", run_name=run)}
    return [make[n]() for n in tracker_names(cfg.train)]


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested recipe as dotted keys with scalar values (what every tracker's config accepts)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
    return out


def start(accelerator, cfg, resumed_after: int) -> None:
    """Open the trackers (main process only); after a resume, TensorBoard hides steps a killed run
    logged beyond `resumed_after`. wandb / mlflow also get the recipe (TensorBoard has config.yaml)."""
    accelerator.init_trackers(TB_FOLDER, init_kwargs={"tensorboard": {"purge_step": resumed_after + 1}})
    for t in accelerator.trackers:
        if t.name != "tensorboard":
            t.store_init_configuration(_flat(cfg.to_dict()))


def log_epoch(accelerator, row: dict) -> None:
    """One epoch's scalars from its log.csv row, at step = its 1-based epoch."""
    accelerator.log({k: float(row[k]) for k in EPOCH_SCALARS if k in row}, step=int(row["epoch"]))


def log_best_ap(accelerator, preds_csv, ids: pd.Series, y: np.ndarray, names, best_epoch: int) -> None:
    """Per-class AP of the best epoch as `val_AP/<label>` at step best_epoch, from the fold's
    val_predictions.csv (written at that epoch, so a resumed fold logs it too); `ids` (the id column)
    and `y` are the training table's. Classes without a validation positive have no AP: left out."""
    if not accelerator.trackers:
        return
    preds = read_table(preds_csv, ids.name)
    truth = pd.DataFrame(y, index=ids.astype(str)).loc[preds[ids.name]].to_numpy()
    ap = mean_ap(truth, preds[list(names)].to_numpy(), names)["ap"]
    tag = {n: "val_AP/" + re.sub(r"[^\w.-]", "_", n) for n in names}  # TensorBoard tags: no spaces
    accelerator.log({tag[n]: a for n, a in ap.items() if np.isfinite(a)}, step=int(best_epoch))


def finish(accelerator) -> None:
    """Close the trackers. Not accelerator.end_training(): that also destroys the process group,
    which the next fold of a multi-GPU run still needs."""
    for t in accelerator.trackers:
        t.finish()
