"""A trained experiment, loaded once, that answers for uploaded films: every finding's probability
with the experiment's tuned threshold, its head/medium/tail group and OOF AP, and a Grad-CAM
heatmap for a chosen finding.

Any experiment folder works: one recipe's fold ensemble, a blend (its members' fold ensembles,
weighted by the blend's weights.json; a `rank` blend averages probabilities, since one film has no
ranks), or a second stage (a study-fusion model reads all the uploaded images of the study at once).
Every fold model is rebuilt from its best.pt alone (models.checkpoint.load_model), opened with
`torch.load(weights_only=True)`. Films are decoded and resized with the image cache's own functions
(data.images), in memory. From the logits on, the answer is made by stage 04's own post-processing
(evaluate.postprocess: TTA combine, study aggregation, normal gating, the fold normaliser stage 04
fitted and saved, the mean over models), under the `predict` settings stage 04 used.

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

from cxrlt import schema
from cxrlt.config import Config, load_yaml
from cxrlt.data.experiment import Experiment
from cxrlt.data.images import MAX_PIXELS, decode_gray, resize_square
from cxrlt.data.studies import view_kinds
from cxrlt.errors import CxrltError
from cxrlt.evaluate import postprocess as post
from cxrlt.evaluate.normalise import FoldNormaliser
from cxrlt.evaluate.predictions import route_rows
from cxrlt.experiment import FULL, Layout, experiment_path
from cxrlt.fileio import display_path, project_path
from cxrlt.models.checkpoint import load_model, load_weights
from cxrlt.models.heads import to_tokens
from cxrlt.models.inference import image_input, parse_views


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
        self.exp = Experiment.from_folder(folder, cfg_file.name) if cfg_file else None
        self.cfg = self.exp.cfg if self.exp else None
        pc = self.cfg.predict if self.cfg else Config(schema.defaults()["predict"])   # no recipe: stage 04's defaults
        lay = Layout(folder)
        # finished folds only, in fold order, the full-data fit last (stage 04's order of the mean)
        paths = {k: lay.best(k) for k in lay.finished_folds() if folds is None or k in set(folds)}
        use_full = pc.use_full_fit
        if use_full != "none":
            if not lay.finished(FULL):
                raise CxrltError(f"{display_path(folder)}: predict.use_full_fit={use_full} but its full-data fit is "
                                 f"not finished (no {display_path(lay.done(FULL))})")
            paths = ({} if use_full == "alone" else paths) | {FULL: lay.best(FULL)}
        if not paths:
            raise CxrltError(f"{display_path(folder)}: no finished fold<k>/best.pt to serve (train it first)")
        self.models = {}
        for k, p in paths.items():
            net, arch = load_model(load_weights(p))
            self.models[k] = (net.to(device).eval(), arch)
        self.arch = next(iter(self.models.values()))[1]
        if self.exp is not None:    # the preset's study column and normal class, as stage 04 has them
            spec = self.exp.spec
            self.settings = post.Settings.of(self.cfg.predict, spec)
            self.has_studies, self.normal_label = bool(spec.study_col), spec.normal_label
        else:
            self.settings, self.has_studies = post.Settings(views=parse_views(pc.tta)), False
            self.normal_label = None
        # the view names this member tells apart: its view weights, a fusion model's view kinds, its training views
        self.known_views = {str(v).strip().upper() for v in self.settings.view_weights}
        self.known_views |= {str(v).strip().upper() for _, a in self.models.values() for v in a.get("view_kinds") or []}
        self.known_views |= {str(v).strip().upper() for v in ((self.cfg or {}).get("data") or {}).get("views") or []}
        self.norm = None
        if self.settings.normalise != "none":    # the maps stage 04 fitted on the OOF, never refitted
            f = folder / post.NORMALISER
            if not f.is_file():
                raise CxrltError(f"{display_path(folder)}: predict.oof_normalise={self.settings.normalise} but no "
                                 f"{display_path(f)} (predicted by an older version); rerun src/04_predict.py --force")
            self.norm = FoldNormaliser.load(f)
            missing = [k for k in self.models if k not in self.norm.params]
            if missing:
                raise CxrltError(f"{display_path(f)}: no map for fold {missing[0]}; rerun src/04_predict.py --force")

    @property
    def labels(self):
        return list(self.arch["labels"])

    def batch(self, films: list[np.ndarray], arch: dict, device) -> torch.Tensor:
        size = int(arch["image_size"])
        return torch.from_numpy(np.stack([resize_square(f, size, arch.get("resize", "stretch")) for f in films]))[
            :, None].to(device)

    @torch.no_grad()
    def predict(self, films: list[np.ndarray], views: list[str | None], device) -> np.ndarray:
        """(n_images, C) probabilities of one study's films, as stage 04 makes a test row: each
        model's TTA-combined output, then evaluate.postprocess.over_models."""
        out = {}
        s = self.settings
        for k, (net, arch) in self.models.items():
            to_input = image_input(arch["mean"], arch["std"], False)
            x = self.batch(films, arch, device)
            if arch["kind"] == "study_fusion":
                kinds, present = _kinds(views, arch), torch.ones(1, len(films), dtype=torch.bool, device=device)
                m = int(arch.get("max_views", len(films)))
                xs = x[None, :m]
                by_view = {v: net(to_input(xs.flatten(0, 1), v)[0].view(*xs.shape), kinds[:, :m].to(device),
                                  present[:, :m]).float().cpu() for v in ["none", *s.views]}
                out[k] = np.repeat(post.combine_views(by_view, s), len(films), 0)
            else:
                by_view = {v: net(*to_input(x, v)).float().cpu() for v in ["none", *s.views]}
                out[k] = post.combine_views(by_view, s)
        studies = ["study"] * len(films) if self.has_studies else None    # the uploads are one study
        return post.over_models(out, studies, views, s, self.norm)

    def gradcam(self, film: np.ndarray, others: list[np.ndarray], views, c: int, device) -> np.ndarray:
        """Grad-CAM map (h, w), >= 0, of class c on `film`, mean over fold models."""
        maps = []
        for net, arch in self.models.values():
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
            if wj.get("mode") == "route" and not (self.dir / "config.yaml").is_file():
                raise CxrltError(f"{display_path(self.dir)}: a route blend without its config.yaml; rerun src/05_blend.py")
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
        self.known_views = sorted(set(COMMON_VIEWS).union(*(m.known_views for m, _ in self.members)))
        self.normal_label = self.members[0][0].normal_label
        self.trust = self._trust()

    def _trust(self) -> dict:
        """How far to trust the answers: the experiment's OOF mAP (a blend's honest figure beside it,
        when its weights were fitted), against chance (the mean prevalence of the scored classes in
        the OOF images: the AP of scores that know nothing)."""
        m = self._read("metrics.json")
        if not m.get("mAP") and m.get("mAP") != 0:
            return dict(oof_mAP=None, honest_mAP=None, chance_mAP=None, n_images=None)
        n = m.get("n_images")
        prev = [v["positives"] / n for v in (m.get("per_class") or {}).values()
                if n and v.get("AP") is not None and v.get("positives") is not None]
        honest = m.get("mAP_honest")
        return dict(oof_mAP=float(m["mAP"]), honest_mAP=None if honest is None or honest != honest else float(honest),
                    chance_mAP=float(np.mean(prev)) if prev else None, n_images=n)

    def _member_dir(self, name: str) -> Path:
        return experiment_path(name)

    def _read(self, name: str) -> dict:
        p = self.dir / name
        return json.loads(p.read_text()) if p.is_file() else {}

    def decode(self, uploads: list[tuple[str, bytes]]) -> list[np.ndarray]:
        if not uploads:
            raise InputError("no file uploaded")
        hint = max(int(a["image_size"]) for m, _ in self.members for _, a in m.models.values())
        return [decode_upload(data, name, self.max_pixels, hint) for name, data in uploads]

    def predict(self, uploads: list[tuple[str, bytes]], views=None) -> dict:
        """uploads: (file name, bytes) of the images of one study -> the findings, sorted by probability."""
        t0 = time.time()
        views = _check_views(views, len(uploads), self.known_views)   # before decoding anything
        return self.predict_films(self.decode(uploads), views, t0)

    def predict_films(self, films: list[np.ndarray], views=None, t0: float | None = None) -> dict:
        """The findings of one study's decoded films (`decode`)."""
        t0 = time.time() if t0 is None else t0
        views = _check_views(views, len(films), self.known_views)
        with self.lock:
            if self.route is not None:
                probs = self._routed(films, views)
            else:   # a blend as stage 05 combines its members' test rows (one member: itself)
                from cxrlt.ensemble.blend import combine

                probs = combine([m.predict(films, views, self.device) for m, _ in self.members],
                                [w for _, w in self.members], "mean")
        study = probs.mean(0)   # image models without aggregation: the study is the mean of its images
        findings = []
        for c, label in enumerate(self.labels):
            t = self.thresholds.get(label)
            info = self.per_class.get(label, {})
            findings.append(dict(label=label, probability=float(study[c]), threshold=None if t is None else float(t),
                                 positive=None if t is None else bool(study[c] >= t), group=info.get("group"),
                                 oof_ap=info.get("AP")))
        findings.sort(key=lambda f: -f["probability"])
        return dict(findings=findings, images=len(films), models=self.n_models, seconds=round(time.time() - t0, 3),
                    films=[dict(height=int(f.shape[0]), width=int(f.shape[1])) for f in films],
                    trust=self.trust, warnings=self._warnings(findings))

    def _warnings(self, findings: list[dict]) -> list[str]:
        """Contradictions a reader must be told of: the normal class and findings both above threshold."""
        normal = next((f for f in findings if f["label"] == self.normal_label), None)
        if normal is None or not normal["positive"]:
            return []
        found = [f["label"] for f in findings if f["positive"] and f["label"] != self.normal_label]
        if not found:
            return []
        return [f"'{normal['label']}' and {len(found)} finding(s) ({', '.join(found)}) are all above their "
                f"thresholds: the models contradict themselves on this study; read every decision as uncertain"]

    def _routed(self, films, views) -> np.ndarray:
        """Route mode: each film from the member trained on its view, then the blend's study aggregation."""
        pick = route_rows(views, self.route)
        probs = np.zeros((len(films), len(self.labels)))
        for i, (m, _) in enumerate(self.members):
            rows = np.flatnonzero(pick == i)
            if len(rows):
                probs[rows] = m.predict([films[r] for r in rows], [views[r] for r in rows], self.device)
        # as stage 05's route mode: the blend recipe's study aggregation after routing
        return post.routed_studies(probs, ["study"] * len(films), views, post.route_settings(self.cfg.predict))

    def heatmap(self, uploads: list[tuple[str, bytes]], label: str, views=None, index: int = 0) -> np.ndarray:
        """RGB uint8 overlay of the Grad-CAM map of `label` on image `index` of the study."""
        if label not in self.labels:
            raise InputError(f"unknown finding '{label}'")
        _check_views(views, len(uploads), self.known_views)
        return self.heatmap_films(self.decode(uploads), label, views, index)

    def heatmap_films(self, films: list[np.ndarray], label: str, views=None, index: int = 0) -> np.ndarray:
        """`heatmap` of one study's decoded films."""
        if label not in self.labels:
            raise InputError(f"unknown finding '{label}'")
        if not 0 <= index < len(films):
            raise InputError(f"image index {index}: the study has {len(films)} image(s)")
        views = _check_views(views, len(films), self.known_views)
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


# view names accepted besides those an experiment knows (MIMIC-CXR's ViewPosition values)
COMMON_VIEWS = ("PA", "AP", "LATERAL", "LL", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD", "LAO", "RAO", "LPO",
                "XTABLE LATERAL", "SWIMMERS")


def _check_views(views, n: int, known=None) -> list:
    """One view name (or empty: unknown) per film, upper-cased; an unknown name is a 400 naming the accepted ones."""
    if views is None or views == "":
        return [None] * n
    if isinstance(views, str):
        views = views.split(",")
    views = [str(v).strip().upper() or None if v is not None else None for v in views]
    if len(views) != n:
        raise InputError(f"views: {len(views)} given for {n} image(s)")
    bad = [v for v in views if v is not None and known is not None and v not in known]
    if bad:
        raise InputError(f"views: unknown view '{bad[0][:40]}'; accepted: {', '.join(known)} (or empty for unknown)")
    return views


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
