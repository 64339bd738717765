"""Forward passes shared by validation (stage 03) and prediction (stage 04): the same accelerate,
autocast and channels_last path, data sharded over processes, each image gathered exactly once."""
from __future__ import annotations

import torch

from cxrlt.data.loader import to_model_input


@torch.no_grad()
def predict_loader(net, loader, accelerator, mean: float, std: float, channels_last: bool, hflip: bool = False):
    """Logits (N, C), labels, dataset indices; with hflip also the logits of the mirrored images.

    Returns (logits, labels, idx, flipped_logits or None), all on the CPU.
    """
    net.eval()
    outs, flips, ys, ids = [], [], [], []
    for x, target, i in loader:
        x = to_model_input(x, mean, std, channels_last)
        with accelerator.autocast():
            logits = net(x).float()
            flipped = net(torch.flip(x, dims=[3])).float() if hflip else logits[:0]
        logits, flipped, target, i = accelerator.gather_for_metrics((logits, flipped, target, i))
        outs.append(logits.cpu())
        flips.append(flipped.cpu())
        ys.append(target.cpu())
        ids.append(i.cpu())
    return torch.cat(outs), torch.cat(ys), torch.cat(ids), torch.cat(flips) if hflip else None


def combine_tta(logits: torch.Tensor, flipped: torch.Tensor | None, mean: str = "prob") -> torch.Tensor:
    """Probabilities: the original view alone, or the mean of original and mirrored views taken over
    probabilities (`prob`) or over logits before the sigmoid (`logit`)."""
    if flipped is None:
        return torch.sigmoid(logits)
    if mean == "logit":
        return torch.sigmoid((logits + flipped) / 2)
    if mean == "prob":
        return (torch.sigmoid(logits) + torch.sigmoid(flipped)) / 2
    raise ValueError(f"predict.tta_mean must be prob or logit, not '{mean}'")
