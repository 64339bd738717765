"""A trained experiment, loaded once, that answers for uploaded films: every finding's probability
with the experiment's tuned threshold, its head/medium/tail group and OOF AP, and a Grad-CAM
heatmap for a chosen finding.

Any experiment folder works: one recipe's fold ensemble, a blend (its members' fold ensembles,
weighted by the blend's weights.json; a `rank` blend averages probabilities, since one film has no
ranks), or a second stage (a study-fusion model reads all the uploaded images of the study at once).
Every fold model is rebuilt from its best.pt alone (models.checkpoint.load_model). Films are
decoded and resized with the image cache's own functions (data.images), in memory.

Grad-CAM (Selvaraju et al., ICCV 2017) is computed from timm's own split of every model into
`forward_features` and `forward_head`: the gradient of the class logit with respect to the last
feature map weighs its channels. That needs no per-architecture target layer (what the grad-cam
package asks for), works the same for the linear, ML-Decoder, CSRA and fusion heads, and averages
over the fold models like the prediction does.
"""
from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import torch

from cxrlt.config import Config, load_yaml
from cxrlt.data.images import MAX_PIXELS, decode_gray, resize_square
from cxrlt.data.studies import view_kinds
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predictions import aggregate_studies, normal_gating, route_rows
from cxrlt.experiment import experiment_path
from cxrlt.fileio import display_path, project_path
from cxrlt.models.checkpoint import load, load_model
from cxrlt.models.heads import to_tokens
from cxrlt.models.inference import combine_tta, image_input, parse_views


class InputError(ValueError):
    """A bad upload: the message goes back to the user (HTTP 4xx / the page), the server goes on."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, name: str, max_pixels: int = MAX_PIXELS, size_hint: int | None = None) -> np.ndarray:
    """An uploaded file's bytes -> 2-D uint8 film (PNG, JPEG 8/16-bit gray/RGB/RGBA, DICOM), decoded
    as the image cache decodes it (a JPEG at the reduced DCT scale that still covers `size_hint`)."""
    if not data:
        raise InputError(f"{name}: empty file")
    try:
        img = decode_gray(io.BytesIO(data), size_hint=size_hint, max_pixels=max_pixels)
    except InputError:
        raise
    except Exception as e:   # PIL/pydicom say what is wrong; one line of it goes back
        msg = re.sub(r"\s*<[^>]* object at 0x[0-9a-f]+>", "", str(e).splitlines()[0])[:200] if str(e) else type(e).__name__
        too_big = "max_image_pixels" in msg or "DecompressionBomb" in type(e).__name__
        raise InputError(f"{name}: cannot read it as a chest film ({msg})", 413 if too_big else 422) from None
    if img.ndim != 2 or min(img.shape) < 8:
        raise InputError(f"{name}: {img.shape} is not a film", 422)
    return img


class _Member:
    """One experiment's fold models (a blend member, or the experiment itself)."""

    def __init__(self, folder: Path, folds, device):
        self.dir = folder
        # the prediction settings stage 04 used (predict_config.yaml), else the training recipe's
        cfg_file = next((f for f in (folder / "predict_config.yaml", folder / "config.yaml") if f.is_file()), None)
        self.cfg = Config(load_yaml(cfg_file.read_text())) if cfg_file else None
        pc = (self.cfg or {}).get("predict") or {}
        done = sorted(folder.glob("fold*/done.json"), key=lambda p: int(p.parent.name[4:]))
        paths = [d.parent / "best.pt" for d in done if (d.parent / "best.pt").is_file()]  # finished folds only
        if folds is not None:
            paths = [p for p in paths if int(p.parent.name[4:]) in set(folds)]
        use_full = pc.get("use_full_fit", "none")
        if use_full != "none":
            full = folder / "full"
            if not (full / "done.json").is_file():
                raise CxrltError(f"{display_path(folder)}: predict.use_full_fit={use_full} but its full-data fit is "
                                 f"not finished (no {display_path(full / 'done.json')})")
            paths = ([] if use_full == "alone" else paths) + [full / "best.pt"]
        if not paths:
            raise CxrltError(f"{display_path(folder)}: no finished fold<k>/best.pt to serve (train it first)")
        self.models = []
        for p in paths:
            ck = load(p)
            net, arch = load_model(ck)
            self.models.append((net.to(device).eval(), arch))
        self.arch = self.models[0][1]
        gate, labels = pc.get("normal_gating"), list(self.arch["labels"])
        self.gate = None
        if gate is not None and self.cfg is not None:    # the preset's normal class, as stage 04 gates
            from cxrlt.data.datasets import resolve_dataset

            spec = resolve_dataset(self.cfg.data)
            if spec.normal_label in labels:
                self.gate = (labels.index(spec.normal_label), [labels.index(x) for x in spec.normal_allows], float(gate))
        self.views = parse_views(pc.get("tta", "hflip"))
        self.tta_mean = pc.get("tta_mean", "prob")
        self.study_aggregation = bool(pc.get("study_aggregation", True))
        self.view_weights = dict(pc.get("view_weights") or {})
        self.other_weight = float(pc.get("other_view_weight", 5))

    @property
    def labels(self):
        return list(self.arch["labels"])

    def batch(self, films: list[np.ndarray], arch: dict, device) -> torch.Tensor:
        size = int(arch["image_size"])
        return torch.from_numpy(np.stack([resize_square(f, size, arch.get("resize", "stretch")) for f in films]))[
            :, None].to(device)

    @torch.no_grad()
    def predict(self, films: list[np.ndarray], views: list[str | None], device) -> np.ndarray:
        """(n_images, C) probabilities: mean over fold models of the TTA-combined output."""
        out = []
        for net, arch in self.models:
            to_input = image_input(arch["mean"], arch["std"], False)
            x = self.batch(films, arch, device)
            if arch["kind"] == "study_fusion":
                kinds, present = _kinds(views, arch), torch.ones(1, len(films), dtype=torch.bool, device=device)
                m = int(arch.get("max_views", len(films)))
                xs = x[None, :m]
                logits = [net(to_input(xs.flatten(0, 1), v)[0].view(*xs.shape), kinds[:, :m].to(device),
                              present[:, :m]).float().cpu() for v in ["none", *self.views]]
                probs = combine_tta(logits[0], logits[1:] or None, self.tta_mean, arch.get("task", "multilabel")).numpy()
                out.append(np.repeat(probs, len(films), 0))
            else:
                logits = [net(*to_input(x, v)).float().cpu() for v in ["none", *self.views]]
                probs = combine_tta(logits[0], logits[1:] or None, self.tta_mean, arch.get("task", "multilabel")).numpy()
                out.append(probs)
        probs = np.mean(out, 0)      # as stage 04: mean over the models, then aggregation, then gating
        if self.study_aggregation and len(films) > 1 and self.arch["kind"] != "study_fusion":
            probs = aggregate_studies(probs, ["study"] * len(films), views, self.view_weights, self.other_weight)
        return normal_gating(probs, *self.gate) if self.gate else probs

    def gradcam(self, film: np.ndarray, others: list[np.ndarray], views, c: int, device) -> np.ndarray:
        """Grad-CAM map (h, w), >= 0, of class c on `film`, mean over fold models."""
        maps = []
        for net, arch in self.models:
            to_input = image_input(arch["mean"], arch["std"], False)
            x = self.batch([film, *others], arch, device)
            with torch.enable_grad():
                if arch["kind"] == "study_fusion":
                    m = int(arch.get("max_views", len(x)))
                    x = x[:m]
                    present = torch.ones(1, len(x), dtype=torch.bool, device=device)
                    feats = net.forward_features(to_input(x)[0][None], present).detach().requires_grad_(True)
                    logit = net.forward_head(feats, _kinds(views[:m], arch).to(device), present)[0, c]
                    fmt_net = net.backbone
                else:
                    feats = net.forward_features(to_input(x[:1])[0]).detach().requires_grad_(True)
                    logit = net.forward_head(feats)[0, c]
                    fmt_net = net
                (grad,) = torch.autograd.grad(logit, feats)
            a, g = _as_map(feats[:1].detach(), fmt_net), _as_map(grad[:1], fmt_net)
            maps.append(torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))[0].cpu().numpy())
        shape = max(m.shape for m in maps)
        import cv2

        return np.mean([cv2.resize(m, shape[::-1], interpolation=cv2.INTER_LINEAR) for m in maps], 0)


def _kinds(views, arch) -> torch.Tensor:
    """(1, V) view kinds of a study's films, as the fusion model was trained (data.studies)."""
    return torch.from_numpy(view_kinds(views, arch.get("view_kinds") or []))[None]


def _as_map(feats: torch.Tensor, net) -> torch.Tensor:
    """Features as an NCHW map (CNN maps as they are; NHWC maps and ViT tokens reshaped)."""
    fmt = getattr(net, "output_fmt", "NCHW")
    if feats.ndim == 4 and fmt != "NHWC":
        return feats
    tok = net.tokens(feats) if hasattr(net, "tokens") else to_tokens(feats, fmt, getattr(net, "num_prefix_tokens", 0))
    side = int(round(tok.shape[1] ** 0.5))
    return tok[:, : side * side].transpose(1, 2).reshape(len(tok), -1, side, side)


class Predictor:
    """Loads an experiment once; `predict(files)` and `heatmap(files, label)` are thread-safe (one
    forward pass at a time: the cores are shared anyway)."""

    def __init__(self, experiment: str | Path, folds=None, device: str | None = None,
                 max_pixels: int = MAX_PIXELS):
        self.dir = project_path(experiment)
        if not self.dir.is_dir():
            raise CxrltError(f"--experiment {display_path(self.dir)}: no such experiment folder")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_pixels = int(max_pixels)
        self.lock = threading.Lock()
        weights_file = self.dir / "weights.json"
        self.route = None
        if weights_file.is_file():     # a blend: its members' fold ensembles, with its weights
            wj = json.loads(weights_file.read_text())
            w = wj["weights"]
            self.members = [(_Member(self._member_dir(m), folds, self.device), float(v)) for m, v in w.items() if v > 0]
            if wj.get("mode") == "route":   # each film answered by the member trained on its view
                self.route = {m.dir.name: (None if v == "all" else v) for (m, _), v in zip(self.members, wj["views"].values())}
        else:
            self.members = [(_Member(self.dir, folds, self.device), 1.0)]
        own = self.dir / "config.yaml"
        self.cfg = Config(load_yaml(own.read_text())) if own.is_file() else None
        self.labels = self.members[0][0].labels
        for m, _ in self.members[1:]:
            if m.labels != self.labels:
                raise CxrltError(f"{display_path(m.dir)}: its labels differ from {display_path(self.members[0][0].dir)}")
        self.name = self.dir.name
        self.thresholds = self._read("thresholds.json").get("thresholds") or {}
        self.per_class = self._read("metrics.json").get("per_class") or {}
        self.n_models = sum(len(m.models) for m, _ in self.members)

    def _member_dir(self, name: str) -> Path:
        return experiment_path(name)

    def _read(self, name: str) -> dict:
        p = self.dir / name
        return json.loads(p.read_text()) if p.is_file() else {}

    def decode(self, uploads: list[tuple[str, bytes]]) -> list[np.ndarray]:
        if not uploads:
            raise InputError("no file uploaded")
        hint = max(int(a["image_size"]) for m, _ in self.members for _, a in m.models)
        return [decode_upload(data, name, self.max_pixels, hint) for name, data in uploads]

    def predict(self, uploads: list[tuple[str, bytes]], views=None) -> dict:
        """uploads: (file name, bytes) of the images of one study -> the findings, sorted by probability."""
        t0 = time.time()
        films = self.decode(uploads)
        views = _check_views(views, len(films))
        with self.lock:
            if self.route is not None:
                probs = self._routed(films, views)
            else:
                total = sum(w for _, w in self.members)
                probs = sum(w * m.predict(films, views, self.device) for m, w in self.members) / total
        study = probs.mean(0)   # image models without aggregation: the study is the mean of its images
        findings = []
        for c, label in enumerate(self.labels):
            t = self.thresholds.get(label)
            info = self.per_class.get(label, {})
            findings.append(dict(label=label, probability=float(study[c]), threshold=None if t is None else float(t),
                                 positive=None if t is None else bool(study[c] >= t), group=info.get("group"),
                                 oof_ap=info.get("AP")))
        findings.sort(key=lambda f: -f["probability"])
        return dict(findings=findings, images=len(films), models=self.n_models, seconds=round(time.time() - t0, 3))

    def _routed(self, films, views) -> np.ndarray:
        """Route mode: each film from the member trained on its view, then the blend's study aggregation."""
        pick = route_rows(views, self.route)
        probs = np.zeros((len(films), len(self.labels)))
        for i, (m, _) in enumerate(self.members):
            rows = np.flatnonzero(pick == i)
            if len(rows):
                probs[rows] = m.predict([films[r] for r in rows], [views[r] for r in rows], self.device)
        pc = (self.cfg or {}).get("predict") or {}
        if len(films) > 1 and pc.get("study_aggregation", True):
            probs = aggregate_studies(probs, ["study"] * len(films), views, dict(pc.get("view_weights") or {}),
                                      float(pc.get("other_view_weight", 5)))
        return probs

    def heatmap(self, uploads: list[tuple[str, bytes]], label: str, views=None, index: int = 0) -> np.ndarray:
        """RGB uint8 overlay of the Grad-CAM map of `label` on image `index` of the study."""
        if label not in self.labels:
            raise InputError(f"unknown finding '{label}'")
        films = self.decode(uploads)
        if not 0 <= index < len(films):
            raise InputError(f"image index {index}: the study has {len(films)} image(s)")
        views = _check_views(views, len(films))
        order = [index] + [i for i in range(len(films)) if i != index]
        films, views = [films[i] for i in order], [views[i] for i in order]
        c = self.labels.index(label)
        members = self.members
        if self.route is not None:     # the member that answers this film
            members = [(self.members[int(route_rows(views[:1], self.route)[0])][0], 1.0)]
        with self.lock:
            total = sum(w for _, w in members)
            cams = [w / total * m.gradcam(films[0], films[1:], views, c, self.device) for m, w in members]
        return overlay(films[0], np.sum(cams, 0))


def _check_views(views, n: int) -> list:
    if views is None or views == "":
        return [None] * n
    if isinstance(views, str):
        views = [v.strip() or None for v in views.split(",")]
    if len(views) != n:
        raise InputError(f"views: {len(views)} given for {n} image(s)")
    return list(views)


def overlay(film: np.ndarray, cam: np.ndarray, side: int = 512) -> np.ndarray:
    """The film (longest side `side`) with the map in colour over it (JET, 40 %), RGB uint8."""
    import cv2

    h, w = film.shape
    s = side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    base = cv2.resize(film, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
    heat = cv2.applyColorMap(np.uint8(255 * m), cv2.COLORMAP_JET)[:, :, ::-1]
    gray = np.repeat(base[:, :, None], 3, 2)
    return np.uint8(0.6 * gray + 0.4 * heat)
