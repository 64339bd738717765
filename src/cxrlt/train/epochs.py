"""The epochs of one fold, shared by first and second stages: after each epoch's training and
validation (the caller's `run_epoch`), keep best.pt and val_predictions.csv when validation mAP
improved, log to the trackers, rewrite last.pt, log.csv and curve.png, print one line with the ETA."""
from __future__ import annotations

import time

import pandas as pd

from cxrlt.fileio import write_csv
from cxrlt.train import tracking


def run_epochs(run_epoch, *, start: int, epochs: int, history: list, best: float, saver, out, accelerator,
               title: str, label: str, val_ids, names, stop_after: int | None = None,
               patience: int | None = None) -> tuple[list, float, bool]:
    """run_epoch(epoch) -> (log row with epoch, train_loss, val_loss, val_mAP, val_mAUC, val_score, img_s,
    time_s, validation dict with `probs`, `idx` (positions in val_ids) and `score` (what picks the best
    epoch: val mAP, or balanced accuracy for a multiclass task), or None without a held-out part: then
    best.pt is the last epoch's weights). patience: stop early when `score` has not improved for that
    many epochs (counted from the log, so a resumed run stops where an uninterrupted one would).
    Returns (history, best, stopped): stopped when `stop_after` epochs ran before the last one (tests a kill)."""
    from cxrlt.train.curve import plot_training_curve

    main = accelerator.is_main_process
    t_run = time.time()
    if patience and history and start < epochs and epochs_since_best(history) >= patience:
        return history, best, False     # a resumed run that had already stopped early
    for epoch in range(start, epochs):
        row, v = run_epoch(epoch)
        history.append(row)
        if main:
            if v is None:             # full-data fit: nothing held out, the final weights are kept
                saver.save_best(epoch, row)
            elif v["score"] > best:
                best = v["score"]
                saver.save_best(epoch, row)
                preds = pd.DataFrame(v["probs"], columns=names)
                preds.insert(0, val_ids.name, val_ids.to_numpy()[v["idx"]])
                write_csv(out / "val_predictions.csv", preds)
            tracking.log_epoch(accelerator, row)  # before last.pt: a kill in between is purged on resume
            saver.save_last(epoch, best, history)
            write_csv(out / "log.csv", pd.DataFrame(history))
            plot_training_curve(history, out / "curve.png", best_index(history), title=title)
            eta = (time.time() - t_run) / (epoch + 1 - start) * (epochs - epoch - 1)
            val = (f"val loss {row['val_loss']:.4f}, val mAP {row['val_mAP']:.4f}, mAUC {row['val_mAUC']:.4f}, "
                   + (f"bAcc {v['val_bAcc']:.4f}, " if "val_bAcc" in v else "") if v is not None else "")
            print(f"{label} epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f}, {val}"
                  f"{row['img_s']:.0f} img/s, {row['time_s']:.0f} s"
                  f"{f', ETA {eta / 60:.1f} min' if eta > 0 else ''}", flush=True)
        accelerator.wait_for_everyone()
        if patience and v is not None and epochs_since_best(history) >= patience and epoch + 1 < epochs:
            if main:
                print(f"{label}: no better validation score for {patience} epochs: stopping early after epoch "
                      f"{epoch + 1} (train.patience)", flush=True)
            return history, best, False
        if stop_after is not None and epoch + 1 - start >= stop_after and epoch + 1 < epochs:
            return history, best, True
    return history, best, False


def best_index(history: list) -> int:
    """Index of the best epoch of a log, the first of ties: its `val_score` (val_mAP in rows written
    before it existed)."""
    return max(range(len(history)), key=lambda i: (history[i].get("val_score", history[i]["val_mAP"]), -i))


def epochs_since_best(history: list) -> int:
    return len(history) - 1 - best_index(history)
