"""Datasets and loaders over the image cache. Batches are uint8 (B, 1, H, W): a quarter of the
bytes of float32 through the loader and the host-to-device copy; `models.inference.to_model_input`
normalises them on the device."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from cxrlt.choices import MOSAIC_VARIANTS, SAMPLERS
from cxrlt.data.augment import build_transform, combine_labels, cutmix_box, mosaic
from cxrlt.data.images import read_cached
from cxrlt.errors import CxrltError


class CxrDataset(Dataset):
    """Cached films with labels; with an augment section, the training view: mixes, then per-image
    augmentation. seed/epochs: set_epoch(e) reseeds with seed + e and switches mosaic off for the
    last augment.mosaic_off_last_epochs epochs. partner_weights: sampling weights of the
    Balanced-MixUp partner (class-aware repeat factors)."""

    def __init__(self, files, labels=None, acfg=None, normal=None, allowed=(), seed: int = 0, epochs: int | None = None,
                 partner_weights=None):
        self.files = [str(f) for f in files]
        self.labels = None if labels is None else np.asarray(labels, np.float32)
        self.acfg = acfg
        self.normal, self.allowed = normal, tuple(allowed)
        self.seed, self.epochs = int(seed), epochs
        self.transform = build_transform(acfg) if acfg is not None else None
        self.mosaic_p = float(acfg.mosaic) if acfg is not None else 0.0
        if self.mosaic_p and not set(acfg.mosaic_variants) <= set(MOSAIC_VARIANTS):
            raise CxrltError(f"augment.mosaic_variants {list(acfg.mosaic_variants)}: each must be one of "
                             f"{', '.join(MOSAIC_VARIANTS)}")
        self.linear = acfg is not None and acfg.mix_labels == "linear"     # checked at load (schema)
        self.partner_cum = None
        if acfg is not None and acfg.get("balanced_mixup"):
            if partner_weights is None:
                raise CxrltError("augment.balanced_mixup needs the class-aware partner weights (train.class_aware_t/cap)")
            self.partner_cum = np.cumsum(np.asarray(partner_weights, np.float64)).tolist()
        self.rng = random.Random(0)

    def set_epoch(self, epoch: int) -> None:
        a = self.acfg
        if a is not None:
            off = self.epochs is not None and epoch >= self.epochs - int(a.mosaic_off_last_epochs)
            self.mosaic_p = 0.0 if off else float(a.mosaic)
        self.reseed(self.seed + epoch)

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

    def _labels(self, idx, weights) -> np.ndarray:
        """Labels of a mix of sources idx with pixel shares `weights` (augment.mix_labels): union =
        the visible sources' union under the normal-class rule; linear = the share-weighted mean."""
        if self.linear:
            return (np.asarray(weights, np.float32)[:, None] * self.labels[idx]).sum(0)
        return combine_labels(self.labels[idx], self.normal, self.allowed)

    def _mix(self, i):
        a, rng = self.acfg, self.rng
        img = read_cached(self.files[i])
        size = img.shape[0]
        if self.partner_cum is not None and rng.random() < a.balanced_mixup:
            # Balanced-MixUp (Galdran et al., MICCAI 2021): this instance-sampled image mixed with a
            # class-aware-sampled partner, lambda ~ Beta(alpha, 1) on the instance
            j = rng.choices(range(len(self)), cum_weights=self.partner_cum)[0]
            lam = np.random.default_rng(rng.getrandbits(32)).beta(a.balanced_mixup_alpha, 1.0)
            return mix_pixels(img, read_cached(self.files[j]), lam), self._labels([i, j], [lam, 1 - lam])
        if self.mosaic_p and rng.random() < self.mosaic_p:
            idx = [i] + [rng.randrange(len(self)) for _ in range(3)]
            img, visible = mosaic([img] + [read_cached(self.files[j]) for j in idx[1:]], size,
                                  rng.choice(list(a.mosaic_variants)), rng)
            if self.linear:
                return img, self._labels(idx, visible / visible.sum())
            keep = [j for j, v in zip(idx, visible) if v > float(a.mosaic_min_visible)]
            return img, self._labels(keep, None)
        if a.mixup and rng.random() < a.mixup:
            j = self._other(i)
            lam = np.random.default_rng(rng.getrandbits(32)).beta(a.mixup_alpha, a.mixup_alpha)
            other = read_cached(self.files[j])
            img = mix_pixels(img, other, lam)
            return img, self._labels([i, j], [lam, 1 - lam])
        if a.cutmix and rng.random() < a.cutmix:
            j = self._other(i)
            y0, y1, x0, x1 = cutmix_box(size, rng.uniform(0.3, 0.8), rng)
            img = img.copy()
            img[y0:y1, x0:x1] = read_cached(self.files[j])[y0:y1, x0:x1]
            share = (y1 - y0) * (x1 - x0) / size**2
            return img, self._labels([i, j], [1 - share, share])
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
    # an unlabelled entry (NaN) counts neither way; a soft target counts as its share
    f = (np.nanmean(labels, 0) if np.isnan(labels).any() else labels.mean(0)).clip(1e-12)
    r = np.maximum(1.0, np.sqrt(t / f))
    per_image = np.where(labels >= 0.5, r[None, :], 1.0).max(1)
    return np.minimum(per_image, cap)


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Class-balanced sampling weights (Kang et al. 2020, the benchmark's cRT and Balanced-MixUp):
    an image weighs 1 / n_c of its class (the max over its positive classes), so every class is
    drawn equally often; images without a positive weigh as a class of their own."""
    n = np.clip(np.nansum(labels, 0) if np.isnan(labels).any() else labels.sum(0), 1, None)
    per_image = np.where(labels >= 0.5, 1.0 / n[None, :], 0.0).max(1)   # a soft target counts from 0.5; NaN never
    none = per_image == 0
    return np.where(none, 1.0 / max(int(none.sum()), 1), per_image)




def make_loader(ds: CxrDataset, batch_size: int, workers: int, train: bool, tcfg=None) -> DataLoader:
    sampler = None
    if train and tcfg is not None and tcfg.sampler in ("class_aware", "class_balanced"):
        w = (repeat_factors(ds.labels, float(tcfg.class_aware_t), float(tcfg.class_aware_cap))
             if tcfg.sampler == "class_aware" else class_balanced_weights(ds.labels))
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), num_samples=len(ds), replacement=True)
    elif train and tcfg is not None and tcfg.sampler != "random":
        raise CxrltError(f"train.sampler must be one of {', '.join(SAMPLERS)}, not '{tcfg.sampler}'")
    return DataLoader(ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=train,
                      worker_init_fn=_worker_init if workers > 0 else None,
                      # fresh workers each epoch: their seeds follow the epoch seed (exact resume)
                      # and per-epoch dataset settings (mosaic off for the last epochs) reach them
                      persistent_workers=False, prefetch_factor=4 if workers > 0 else None)



class StudyDataset(Dataset):
    """Studies as stacks of their cached images for a study-level model: item i is ((images
    (V, 1, H, W) uint8 padded with zeros to max_views, view kinds (V,), present (V,) bool), study
    labels (or an empty vector), i). At most max_views images per study (data.studies.pick_views)."""

    def __init__(self, files, groups, kinds, max_views: int, labels=None):
        self.files, self.groups, self.kinds = [str(f) for f in files], list(groups), np.asarray(kinds, np.int64)
        self.max_views = int(max_views)
        self.labels = None if labels is None else np.asarray(labels, np.float32)

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, i):
        from cxrlt.data.studies import pick_views

        rows = pick_views(self.groups[i], self.max_views)
        imgs = [read_cached(self.files[r]) for r in rows]
        x = np.zeros((self.max_views, 1, *imgs[0].shape), np.uint8)
        kinds, present = np.zeros(self.max_views, np.int64), np.zeros(self.max_views, bool)
        for j, (r, img) in enumerate(zip(rows, imgs)):
            x[j, 0], kinds[j], present[j] = img, self.kinds[r], True
        y = self.labels[i] if self.labels is not None else np.zeros(0, np.float32)
        return (torch.from_numpy(x), torch.from_numpy(kinds), torch.from_numpy(present)), torch.as_tensor(y), i
