"""Forward passes shared by validation (stage 03) and prediction (stage 04): the same accelerate,
autocast and channels_last path, data sharded over processes, each image gathered exactly once.

Test-time augmentation views (`predict.tta`), applied on the device to the normalised batch:

- `none`: the original image (always included);
- `hflip`: mirrored left-right (`torch.flip` on the width axis);
- `scale_<s>`: zoom by the factor s about the centre (`scale_1.1` magnifies and crops the border,
  `scale_0.9` shrinks the image inside a black border);
- `rotate_<d>`: rotation by d degrees about the centre, positive = counter-clockwise as displayed
  (row 0 at the top), the convention of `torch.rot90(x, 1, dims=(-2, -1))`, `np.rot90` and PIL.

Scale and rotation resample bilinearly (`F.affine_grid` + `F.grid_sample`) in pixel geometry (a
rotation of a non-square image is not sheared); what comes from outside the image is raw pixel 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxrlt.choices import TTA_MEANS
from cxrlt.choices import TTA_VIEW as _AFFINE  # the views predict.tta accepts (the schema checks with it)
from cxrlt.errors import CxrltError



def to_model_input(x: torch.Tensor, mean: float, std: float, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 1, H, W) on the device -> normalised float (B, 1, H, W)."""
    x = x.float().div_(255.0).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def parse_views(value, key: str = "predict.tta") -> list[str]:
    """The extra TTA views of a `predict.tta` value (`none`, `hflip` or a list of view names), in
    order and without repeats; `none` (the original view, always used) is not listed. An unknown
    view is a one-line CxrltError naming the key and the value."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise CxrltError(f"{key} must be none, hflip or a list of views, not '{value}'")
    out = []
    for v in items:
        m = _AFFINE.match(v) if isinstance(v, str) else None
        if not (v in ("none", "hflip") or (m and (m[1] == "rotate" or float(m[2]) > 0))):
            raise CxrltError(f"{key}: unknown view '{v}' in {value!r}; views are none, hflip, scale_<factor> "
                             f"(e.g. scale_0.9, scale_1.1) and rotate_<degrees> (e.g. rotate_5, rotate_-5)")
        if v != "none" and v not in out:
            out.append(v)
    return out


def apply_view(x: torch.Tensor, view: str, fill: float = 0.0) -> torch.Tensor:
    """The view `view` (see the module docstring) of a float batch (B, C, H, W); pixels from outside
    the image take the value `fill` (for a normalised batch, what raw 0 maps to: -mean / std)."""
    if view == "none":
        return x
    if view == "hflip":
        return torch.flip(x, dims=[3])
    kind, num = _AFFINE.match(view).groups()
    h, w = x.shape[-2:]
    if kind == "scale":      # output point p samples the input at p / s
        a = torch.eye(2, dtype=torch.float64) / float(num)
    else:                    # output point p samples the input at R(-d) p, in pixels (x right, y down)
        t = math.radians(float(num))
        rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
        to_pix = torch.diag(torch.tensor([w / 2, h / 2], dtype=torch.float64))
        a = torch.linalg.inv(to_pix) @ rot @ to_pix
    theta = torch.cat([a, torch.zeros(2, 1, dtype=torch.float64)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def image_input(mean: float, std: float, channels_last: bool):
    """(batch, view) -> the model's arguments, for a batch of uint8 images (B, 1, H, W)."""
    fill = -mean / std   # raw pixel 0 after normalisation

    def f(x, view="none"):
        x = apply_view(to_model_input(x, mean, std, False), view, fill)
        return (x.contiguous(memory_format=torch.channels_last) if channels_last else x,)
    return f


def study_input(mean: float, std: float, channels_last: bool):
    """(batch, view) -> the model's arguments, for a batch of studies ((B, V, 1, H, W) uint8, kinds,
    present) of data.loader.StudyDataset: every image of the study seen through the same view."""
    one = image_input(mean, std, channels_last)

    def f(x, view="none"):
        imgs, kinds, present = x
        return one(imgs.flatten(0, 1), view)[0].view(*imgs.shape[:2], *imgs.shape[2:]), kinds, present
    return f


@torch.no_grad()
def predict_loader(net, loader, accelerator, mean: float, std: float, channels_last: bool, hflip: bool = False,
                   views=(), to_input=None):
    """Logits (N, C), labels, dataset indices and the logits of the extra TTA views.

    `views` names extra views (see `parse_views`); `hflip=True` is short for `views=["hflip"]`.
    `to_input(batch, view)` gives the model's arguments (default: `image_input`; `study_input` for
    a study model, or the identity over cached features). Returns (logits, labels, idx, extra), all
    on the CPU; extra is None without extra views, else a dict view name -> logits (N, C) in the
    same row order as `logits`.
    """
    views = list(dict.fromkeys([*(["hflip"] if hflip else []), *views]))
    to_input = to_input or image_input(mean, std, channels_last)
    net.eval()
    outs, ys, ids, extra = [], [], [], {v: [] for v in views}
    for x, target, i in loader:
        with accelerator.autocast():
            logits = [net(*to_input(x, "none")).float()]
            for v in views:
                logits.append(net(*to_input(x, v)).float())
        target, i, *logits = accelerator.gather_for_metrics((target, i, *logits))
        outs.append(logits[0].cpu())
        for v, lv in zip(views, logits[1:]):
            extra[v].append(lv.cpu())
        ys.append(target.cpu())
        ids.append(i.cpu())
    extra = {v: torch.cat(t) for v, t in extra.items()} if views else None
    return torch.cat(outs), torch.cat(ys), torch.cat(ids), extra


def to_probs(logits: torch.Tensor, task: str = "multilabel") -> torch.Tensor:
    """Probabilities of logits (N, C): a sigmoid per class (multilabel) or a softmax over the
    classes (multiclass: one label per image)."""
    return torch.softmax(logits, -1) if task == "multiclass" else torch.sigmoid(logits)


def _log_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    return F.log_softmax(logits, -1) if task == "multiclass" else F.logsigmoid(logits)


def combine_tta(logits: torch.Tensor, extra=None, mean: str = "prob", task: str = "multilabel") -> torch.Tensor:
    """Probabilities from the original view's logits and those of extra views (None, one tensor, or
    a list / dict of tensors): the mean over all views of the probabilities (`prob`), of the logits
    before the sigmoid / softmax (`logit`), or the geometric mean of the probabilities (`gmean`)."""
    if extra is None:
        return to_probs(logits, task)
    extra = list(extra.values()) if isinstance(extra, dict) else [extra] if torch.is_tensor(extra) else list(extra)
    stack = torch.stack([logits, *extra])
    if mean == "logit":
        return to_probs(stack.mean(0), task)
    if mean == "prob":
        return to_probs(stack, task).mean(0)
    if mean == "gmean":
        return _log_probs(stack, task).mean(0).exp()
    raise ValueError(f"predict.tta_mean must be one of {', '.join(TTA_MEANS)}, not '{mean}'")
