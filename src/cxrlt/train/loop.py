"""One training epoch and one validation pass, as functions (the shape of timm's train.py)."""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from cxrlt.metrics import mean_ap
from cxrlt.models.inference import image_input, predict_loader, to_probs


def set_epoch(epoch: int, *objs) -> None:
    """Tell every object that changes with the epoch (dataset, sampler/loader, loss, model) which
    epoch starts. Training state stays a function of (seed, fold, epoch): resume is exact."""
    for o in objs:
        if o is not None and hasattr(o, "set_epoch"):
            o.set_epoch(epoch)


def train_one_epoch(model, net, loader, criterion, optimizer, scheduler, accelerator, tcfg, mean: float, std: float,
                    batches: int, ema=None, bar=None, to_input=None, row_weights=None) -> dict:
    """Forward/backward over `batches` batches with accumulation, clipping, schedule and EMA updates.
    `to_input(batch, view)` gives the model's arguments (default: uint8 images normalised with
    mean/std; a second stage passes cached features). row_weights: a loss weight per dataset item
    (a mix takes its first source's). Returns train_loss (mean over items, all
    processes) and img_s (items per second)."""
    to_input = to_input or image_input(mean, std, tcfg.channels_last)
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device)
    seen = torch.zeros((), device=accelerator.device)
    t0 = time.time()
    for step, (x, target, idx) in enumerate(loader):
        if step >= batches:
            break
        with accelerator.accumulate(model):
            logits = model(*to_input(x))
            if row_weights is None:
                loss = criterion(logits.float(), target)
            else:    # per-item loss weights (pseudo-labelled films), looked up by dataset index
                loss = criterion(logits.float(), target, row_weight=row_weights[idx.to(row_weights.device)])
            accelerator.backward(loss)
            if accelerator.sync_gradients and tcfg.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), float(tcfg.grad_clip))
            optimizer.step()
            if accelerator.sync_gradients and not optimizer.step_was_skipped:
                scheduler.update()      # train.optim.Schedule: the lr of the next update
            optimizer.zero_grad(set_to_none=True)
        if ema is not None and accelerator.sync_gradients:
            ema.update(net)
        loss_sum += loss.detach() * len(target)
        seen += len(target)
        if bar is not None:  # postfix first: a plain progress line printed by update() shows this loss
            if step % int(tcfg.log_every) == 0:  # the only host sync in the loop, every log_every steps
                bar.set_postfix(loss=f"{(loss_sum / seen).item():.4f}")
            bar.update()
    total = accelerator.reduce(seen, "sum")
    return dict(train_loss=(accelerator.reduce(loss_sum, "sum") / total).item(), img_s=total.item() / (time.time() - t0))


def validate(net, loader, accelerator, mean: float, std: float, channels_last: bool, names, to_input=None,
             task: str = "multilabel") -> dict:
    """Every held-out item once (`val_figures`); probabilities and dataset indices returned."""
    logits, labels, idx, _ = predict_loader(net, loader, accelerator, mean, std, channels_last, to_input=to_input)
    return dict(val_figures(logits, labels.numpy(), names, task), idx=np.asarray(idx.numpy()))


def val_figures(logits: torch.Tensor, y: np.ndarray, names, task: str = "multilabel", expand=None) -> dict:
    """val_loss: plain unweighted BCE (multilabel) or cross-entropy (multiclass), comparable across
    recipes and epochs whatever the training loss; mAP and mAUC; `score`, what picks the best epoch:
    val_mAP, or for multiclass the balanced accuracy (`val_bAcc`, the benchmark's early-stopping figure).
    `expand` maps rows of y to rows of logits (a study model: its images get the study's probabilities,
    taken once per study so they are bit-identical)."""
    probs = to_probs(logits, task).numpy()
    if expand is not None:
        logits, probs = logits[expand], probs[expand]
    t = torch.as_tensor(y, dtype=torch.float64)
    if task == "multiclass":
        val_loss = F.cross_entropy(logits.double(), t.argmax(1)).item()
    else:
        val_loss = F.binary_cross_entropy_with_logits(logits.double(), t).item()
    m = mean_ap(y, probs, names)
    out = dict(val_loss=val_loss, val_mAP=m["mAP"], val_mAUC=m["mAUC"], probs=probs, score=m["mAP"])
    if task == "multiclass":
        from sklearn.metrics import balanced_accuracy_score

        out["val_bAcc"] = out["score"] = float(balanced_accuracy_score(y.argmax(1), probs.argmax(1)))
    return out
