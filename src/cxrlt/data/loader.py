"""Datasets and loaders over the image cache. Batches are uint8 (B, 1, H, W): a quarter of the
bytes of float32 through the loader and the host-to-device copy; `to_model_input` normalises on
the device."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from cxrlt.data.augment import MOSAIC_VARIANTS, build_transform, combine_labels, cutmix_box, mosaic
from cxrlt.errors import CxrltError
from cxrlt.data.images import read_cached


class CxrDataset(Dataset):
    def __init__(self, files, labels=None, acfg=None, normal=None, allowed=()):
        self.files = [str(f) for f in files]
        self.labels = None if labels is None else np.asarray(labels, np.float32)
        self.acfg = acfg
        self.normal, self.allowed = normal, tuple(allowed)
        self.transform = build_transform(acfg) if acfg is not None else None
        self.mosaic_p = float(acfg.mosaic) if acfg is not None else 0.0
        if self.mosaic_p and not set(acfg.mosaic_variants) <= set(MOSAIC_VARIANTS):
            raise CxrltError(f"augment.mosaic_variants {list(acfg.mosaic_variants)}: each must be one of "
                             f"{', '.join(MOSAIC_VARIANTS)}")
        self.rng = random.Random(0)

    def __len__(self):
        return len(self.files)

    def reseed(self, seed: int) -> None:
        """Make this copy's randomness a function of seed (per epoch, per loader worker)."""
        self.rng.seed(seed)
        if self.transform is not None:
            self.transform.set_random_seed(seed % 2**32)

    def _other(self, i: int) -> int:
        """A random index other than i (a partner for MixUp/CutMix)."""
        j = self.rng.randrange(len(self) - 1)
        return j + (j >= i)

    def _mix(self, i):
        a, rng = self.acfg, self.rng
        img = read_cached(self.files[i])
        size = img.shape[0]
        if self.mosaic_p and rng.random() < self.mosaic_p:
            idx = [i] + [rng.randrange(len(self)) for _ in range(3)]
            img, visible = mosaic([img] + [read_cached(self.files[j]) for j in idx[1:]], size,
                                  rng.choice(list(a.mosaic_variants)), rng)
            keep = [j for j, v in zip(idx, visible) if v > float(a.mosaic_min_visible)]
            return img, combine_labels(self.labels[keep], self.normal, self.allowed)
        if a.mixup and rng.random() < a.mixup:
            j = self._other(i)
            lam = np.random.default_rng(rng.getrandbits(32)).beta(a.mixup_alpha, a.mixup_alpha)
            other = read_cached(self.files[j])
            img = mix_pixels(img, other, lam)
            return img, combine_labels(self.labels[[i, j]], self.normal, self.allowed)
        if a.cutmix and rng.random() < a.cutmix:
            j = self._other(i)
            y0, y1, x0, x1 = cutmix_box(size, rng.uniform(0.3, 0.8), rng)
            img = img.copy()
            img[y0:y1, x0:x1] = read_cached(self.files[j])[y0:y1, x0:x1]
            return img, combine_labels(self.labels[[i, j]], self.normal, self.allowed)
        return img, self.labels[i]

    def __getitem__(self, i):
        if self.acfg is not None and self.labels is not None:
            img, y = self._mix(i)
            img = self.transform(image=img)["image"]
        else:
            img = read_cached(self.files[i])
            y = self.labels[i] if self.labels is not None else np.zeros(0, np.float32)
        return torch.from_numpy(np.ascontiguousarray(img))[None], torch.as_tensor(y, dtype=torch.float32), i


def mix_pixels(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    return np.clip(a.astype(np.float32) * lam + b.astype(np.float32) * (1 - lam), 0, 255).astype(np.uint8)


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32  # base seed of this epoch's loader + worker id
    np.random.seed(seed)
    random.seed(seed)
    ds = info.dataset
    while hasattr(ds, "dataset"):  # unwrap Subset-like wrappers
        ds = ds.dataset
    if hasattr(ds, "reseed"):
        ds.reseed(seed)


def repeat_factors(labels: np.ndarray, t: float, cap: float) -> np.ndarray:
    """Class-aware sampling weights: r(c) = max(1, sqrt(t / f(c))); an image takes the max over its
    positive classes, capped (the repeat-factor rule of the CXR-LT 2026 winner)."""
    f = labels.mean(0).clip(1e-12)
    r = np.maximum(1.0, np.sqrt(t / f))
    per_image = np.where(labels > 0, r[None, :], 1.0).max(1)
    return np.minimum(per_image, cap)


def make_loader(ds: CxrDataset, batch_size: int, workers: int, train: bool, tcfg=None) -> DataLoader:
    sampler = None
    if train and tcfg is not None and tcfg.sampler == "class_aware":
        w = repeat_factors(ds.labels, float(tcfg.class_aware_t), float(tcfg.class_aware_cap))
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), num_samples=len(ds), replacement=True)
    elif train and tcfg is not None and tcfg.sampler != "random":
        raise CxrltError(f"train.sampler must be random or class_aware, not '{tcfg.sampler}'")
    return DataLoader(ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=train,
                      worker_init_fn=_worker_init if workers > 0 else None,
                      # fresh workers each epoch: their seeds follow the epoch seed (exact resume)
                      # and per-epoch dataset settings (mosaic off for the last epochs) reach them
                      persistent_workers=False, prefetch_factor=4 if workers > 0 else None)


def to_model_input(x: torch.Tensor, mean: float, std: float, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 1, H, W) on the device -> normalised float (B, 1, H, W)."""
    x = x.float().div_(255.0).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
