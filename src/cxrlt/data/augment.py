"""Training augmentation: an albumentations pipeline, and mosaic / MixUp / CutMix with their label rule.

Label rule for every image mix: a finding is positive if any visible source image has it (clip of
the sum, Nguyen-Mau et al. 2023), except the normal class (`No Finding` / `Normal`), which is positive only if
some source was normal and no finding other than the allowed ones (`Support Devices`) is present
in the result (docs/design.md, "Mixed labels").
"""
from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np


def combine_labels(ys: np.ndarray, normal: int | None = None, allowed: tuple[int, ...] = ()) -> np.ndarray:
    """ys: (n_sources, C) labels of the visible sources -> (C,) labels of the mix: a finding is in the
    mix when it is in a source, the normal class only when no other finding (but `allowed`) is.
    Hard 0/1 labels take the rule as it always was; soft targets (a teacher's probabilities) and
    unlabelled entries (NaN: an external set that does not label the finding) take `soft_union`."""
    ys = np.asarray(ys, np.float32)
    if np.isnan(ys).any() or ((ys != 0) & (ys != 1)).any():
        return soft_union(ys, normal, allowed)
    y = np.clip(ys.sum(0), 0, 1)
    if normal is not None:
        others = np.ones(len(y), bool)
        others[[normal, *allowed]] = False
        y[normal] = float(ys[:, normal].max() > 0 and y[others].max(initial=0) == 0)
    return y


def soft_union(ys: np.ndarray, normal: int | None = None, allowed: tuple[int, ...] = ()) -> np.ndarray:
    """The union rule for probabilities, sources independent: P(finding in the mix) = 1 - prod(1 - p).
    An entry no source labels positive for certain is unknown (NaN) when any source leaves it
    unlabelled; the normal class is P(some source normal) x P(no other finding), unknown when a
    factor is, 0 when no source can be normal. Equals the hard rule on 0/1 labels."""
    ys = np.asarray(ys, np.float64)
    known = ~np.isnan(ys)
    p = np.where(known, ys, 0.0)
    y = 1.0 - np.prod(1.0 - p, axis=0)
    y = np.where((y < 1.0) & ~known.all(0), np.nan, y)
    if normal is not None:
        others = np.ones(y.shape[0], bool)
        others[[normal, *allowed]] = False
        some_normal = y[normal]
        if ys[:, normal].max(initial=0) == 0 and known[:, normal].all():
            y[normal] = 0.0
        elif np.isnan(some_normal) or np.isnan(y[others]).any():
            y[normal] = np.nan
        else:
            y[normal] = some_normal * np.prod(1.0 - y[others])
    return y.astype(np.float32)




def mosaic(images: list[np.ndarray], size: int, variant: str, rng: random.Random):
    """Four square uint8 images -> (size x size mosaic, visible fraction of the canvas per source).

    variant "resize": each image shrunk into one quadrant. variant "crop": a random centre splits the
    canvas into four rectangles, each filled with a random crop of one image at full resolution.

    albumentations 2's A.Mosaic carries labels only as bbox/keypoint fields and does not report which
    sources stay visible, nor does it offer the quadrant-resize variant; both are needed for the label
    rule, hence this short version.
    """
    out = np.zeros((size, size), np.uint8)
    if variant == "resize":
        h = size // 2
        cells = [(0, 0, h, h), (0, h, h, size - h), (h, 0, size - h, h), (h, h, size - h, size - h)]
        for img, (y0, x0, ch, cw) in zip(images, cells):
            out[y0:y0 + ch, x0:x0 + cw] = cv2.resize(img, (cw, ch), interpolation=cv2.INTER_AREA)
        return out, np.full(4, 0.25)
    if variant != "crop":
        raise ValueError(f"augment.mosaic_variants: unknown variant '{variant}' (crop | resize)")
    cy, cx = (int(size * rng.uniform(0.25, 0.75)) for _ in range(2))
    cells = [(0, 0, cy, cx), (0, cx, cy, size - cx), (cy, 0, size - cy, cx), (cy, cx, size - cy, size - cx)]
    area = []
    for img, (y0, x0, ch, cw) in zip(images, cells):
        if ch > 0 and cw > 0:
            sy, sx = rng.randint(0, img.shape[0] - ch), rng.randint(0, img.shape[1] - cw)
            out[y0:y0 + ch, x0:x0 + cw] = img[sy:sy + ch, sx:sx + cw]
        area.append(ch * cw / size**2)
    return out, np.array(area)


def cutmix_box(size: int, lam: float, rng: random.Random) -> tuple[int, int, int, int]:
    """A box covering about 1 - lam of the image: (y0, y1, x0, x1)."""
    cut = int(size * np.sqrt(1 - lam))
    cy, cx = rng.randint(0, size - 1), rng.randint(0, size - 1)
    y0, y1 = max(cy - cut // 2, 0), min(cy + cut // 2, size)
    x0, x1 = max(cx - cut // 2, 0), min(cx + cut // 2, size)
    return y0, y1, x0, x1


def build_transform(acfg) -> A.Compose:
    """Per-image augmentation after any mix; probabilities come from the recipe (0 disables)."""
    ops = []
    if acfg.hflip:
        ops.append(A.HorizontalFlip(p=acfg.hflip))
    if acfg.affine:
        ops.append(A.Affine(scale=tuple(acfg.scale), translate_percent=(-acfg.translate, acfg.translate),
                            rotate=(-acfg.rotate, acfg.rotate), border_mode=cv2.BORDER_CONSTANT, fill=0,
                            p=acfg.affine))
    if acfg.brightness_contrast:
        ops.append(A.RandomBrightnessContrast(brightness_limit=acfg.brightness, contrast_limit=acfg.contrast,
                                              p=acfg.brightness_contrast))
    if acfg.dropout:
        ops.append(A.CoarseDropout(num_holes_range=tuple(acfg.dropout_holes),
                                   hole_height_range=tuple(acfg.dropout_size),
                                   hole_width_range=tuple(acfg.dropout_size), fill=0, p=acfg.dropout))
    return A.Compose(ops)
