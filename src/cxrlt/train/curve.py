"""The training curve of one fold (matplotlib PNG next to log.csv)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cxrlt.fileio import save_figure  # noqa: E402


def plot_training_curve(history: list[dict], path: str | Path, best: int, title: str = "") -> Path:
    """Train/val loss and val mAP/mAUC (and balanced accuracy for a multiclass task) per epoch;
    `best`: the index of the best epoch (train.epochs.best_index), annotated."""
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val loss")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [h["val_mAP"] for h in history], "o-", label="val mAP")
    b.plot(ep, [h["val_mAUC"] for h in history], "o-", label="val mAUC")
    key = "val_bAcc" if "val_bAcc" in history[-1] else "val_mAP"    # what picks the best epoch
    if key == "val_bAcc":
        b.plot(ep, [h["val_bAcc"] for h in history], "o-", label="val balanced accuracy")
    b.annotate(f"best {history[best][key]:.3f}", (ep[best], history[best][key]),
               textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    b.set_xlabel("epoch"), b.set_ylim(0, 1), b.legend(), b.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(path, fig)
