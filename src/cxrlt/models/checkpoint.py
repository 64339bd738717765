"""Atomic checkpoints, the state a resumed run needs (timm train.py style `last` + `best`), and
models rebuilt from a checkpoint file alone (its `arch` record: model, head, labels, input size
and statistics; for a second stage also the fusion's shape and the view kinds it knows)."""
from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from cxrlt.errors import CxrltError, clip
from cxrlt.fileio import display_path, write_atomic


def save(obj: dict, path: str | Path) -> Path:
    """torch.save to a temporary file, then rename: a kill leaves the previous file intact."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | Path) -> dict:
    """A checkpoint dict from `path`. A file that is not one (text, truncated, empty, a zip or pickle
    of something else) is a one-line error naming the file and what torch.load said."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError, zipfile.BadZipFile,
            ModuleNotFoundError, AttributeError) as e:
        said = (str(e).strip().splitlines() or [""])[0]
        raise CxrltError(f"{display_path(path)}: not a readable PyTorch checkpoint (text, truncated or another kind "
                         f"of file: {type(e).__name__}: {clip(said, 120)})") from None
    if not isinstance(ck, dict):
        raise CxrltError(f"{display_path(path)}: holds a {type(ck).__name__}, not a checkpoint (a dict of weights "
                         f"and records)")
    return ck


def load_weights(path: str | Path) -> dict:
    """A best.pt opened with `weights_only=True` (tensors and plain Python values only: opening it
    runs no code), for what a server opens; a missing, truncated or foreign file, or one that holds
    more than that, is a one-line CxrltError naming it."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CxrltError(f"{display_path(path)}: checkpoint not found") from None
    except Exception as e:   # UnpicklingError, RuntimeError (not a zip / truncated), EOFError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CxrltError(f"{display_path(path)}: not a checkpoint this version can open safely ({type(e).__name__}: "
                         f"{first})") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise CxrltError(f"{display_path(path)}: not a model checkpoint (no weights in it)")
    return ck


def build_model(arch: dict) -> torch.nn.Module:
    """The untrained model an `arch` record describes (no download)."""
    from cxrlt.models.factory import model_from_arch

    if arch.get("kind") == "image":
        return model_from_arch(arch)
    if arch.get("kind") == "study_fusion":
        from cxrlt.models.fusion import StudyFusion, StudyFusionNet

        f = arch["fusion"]
        fusion = StudyFusion(int(f["in_dim"]), int(arch["num_classes"]), int(f["grid"]), len(arch["view_kinds"]) + 1,
                             int(f["dim"]), int(f["layers"]), int(f["heads"]))
        return StudyFusionNet(model_from_arch(arch["backbone"]), fusion, int(f["grid"]))
    raise CxrltError(f"unknown model kind {arch.get('kind')!r} in a checkpoint's arch record")


def load_model(source, strict: bool = True) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on the CPU with the checkpoint's weights, its arch record) from a best.pt
    path or its loaded dict. A checkpoint without an arch record (older versions) or whose weights
    do not fit it is a one-line error naming the file."""
    ck = load(source) if isinstance(source, (str, Path)) else source
    where = display_path(source) if isinstance(source, (str, Path)) else "checkpoint"
    arch = arch_of_checkpoint(ck)
    if not arch:
        raise CxrltError(f"{where}: records no model description (written by an older version); retrain it")
    net = build_model(arch)
    try:
        net.load_state_dict(ck["model"], strict=strict)
    except RuntimeError as e:
        raise CxrltError(f"{where}: weights do not fit the model it describes ({str(e).splitlines()[0][:200]})") from None
    return net.eval(), arch


def arch_of_checkpoint(ck: dict) -> dict | None:
    """A checkpoint's arch record; for a first-stage checkpoint written before checkpoints carried
    one, made from its fingerprint, which names the model, channels, labels and input size (dropout
    does not matter at eval; heads did not exist yet)."""
    if ck.get("arch"):
        return ck["arch"]
    fp = ck.get("fingerprint") or {}
    if not fp.get("model") or "labels" not in fp or "mean" not in ck:
        return None
    return dict(kind="image", model=dict(name=fp["model"], in_chans=fp.get("in_chans", 1), drop_rate=0.0,
                                         drop_path_rate=0.0, head=fp.get("head", "linear")),
                labels=list(fp["labels"]), num_classes=len(fp["labels"]), image_size=fp.get("image_size"),
                resize=fp.get("resize", "stretch"), mean=float(ck["mean"]), std=float(ck["std"]))


def rng_state() -> dict:
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
