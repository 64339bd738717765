"""Atomic checkpoints and the state a resumed run needs (timm train.py style `last` + `best`)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from cxrlt.fileio import write_atomic


def save(obj: dict, path: str | Path) -> Path:
    """torch.save to a temporary file, then rename: a kill leaves the previous file intact."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
