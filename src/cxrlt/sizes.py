"""How many parameters an experiment's models hold, and how many one prediction of the web page runs,
read from the checkpoint files alone and without torch (stage 08 imports no torch).

A best.pt is torch's zip format: `data.pkl` describes every tensor (storage type, shape) and the
tensors' bytes lie beside it. Only `data.pkl` is read, by an unpickler that knows nothing but the
few names a state dict is made of; every tensor stands in as its element count, and any other name
the file holds (a record's numpy scalar) as an inert placeholder: nothing is imported, nothing of
the file is run. The parameters of a model are the floating-point tensors of `ck["model"]` less
BatchNorm's running statistics (integer tensors, e.g. `num_batches_tracked`, never count): for
timm's models that is `sum(p.numel() for p in net.parameters())`, frozen parts (a second stage's
backbone) included, since a prediction runs them.

What a prediction runs is what `src/serve.py` loads (serve.predictor): every finished fold's best.pt
of the experiment, in fold order, with the full-data fit after them (`predict.use_full_fit:
with_folds`) or alone (`alone`); for a blend (a folder with weights.json) that of every member with a
weight above 0. A route blend loads every member but answers a film with one of them.
"""
from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path

_FLOATING = {"FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "ComplexFloatStorage",
             "ComplexDoubleStorage"}
_INTEGER = {"LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
            "QInt8Storage", "QUInt8Storage", "QInt32Storage"}
BN_STATS = ("running_mean", "running_var")


@dataclass(frozen=True)
class _Storage:
    floating: bool


@dataclass(frozen=True)
class Tensor:
    """A tensor of a checkpoint, as its element count and whether it holds floating-point numbers."""
    numel: int
    floating: bool


class _StateDict(dict):
    """collections.OrderedDict as a state dict pickles it (with its `_metadata` attribute)."""


class _Opaque:
    """Whatever else the file names (a numpy scalar of a record, an unknown storage): called or
    built with anything, it keeps nothing and runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Opaque()

    def __setstate__(self, state):
        pass


def _rebuild_tensor(storage, offset, size, *rest):
    if not isinstance(storage, _Storage):
        return _Opaque()
    return Tensor(math.prod(int(s) for s in size), storage.floating)


def _rebuild_parameter(data, *rest):
    return data


class _Reader(pickle.Unpickler):
    NAMES = {("collections", "OrderedDict"): _StateDict, ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
             ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
             ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
             ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter}

    def find_class(self, module, name):
        if module == "torch" and name in _FLOATING | _INTEGER:
            return _Storage(name in _FLOATING)
        return self.NAMES.get((module, name), _Opaque)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown storage record {str(pid)[:60]}")
        return pid[1] if isinstance(pid[1], _Storage) else _Opaque()


def read_shapes(path: str | Path) -> dict:
    """A checkpoint's dict with every tensor as a `Tensor` (element count, floating or not), read
    from its `data.pkl` only. A missing file, or one that is not torch's zip format of plain
    weights and records, is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CxrltError(f"{display_path(path)}: checkpoint not found")
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise pickle.UnpicklingError("no data.pkl")
            with z.open(pkl[0]) as f:
                ck = _Reader(f).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise CxrltError(f"{display_path(path)}: cannot be sized as a checkpoint of weights "
                         f"({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict):
        raise CxrltError(f"{display_path(path)}: not a model checkpoint (no weights in it)")
    return ck


def checkpoint_params(path: str | Path) -> int:
    """Parameters of the model a best.pt holds: its floating-point tensors, BatchNorm's running
    statistics left out. A weight this reader cannot size (a tensor of a kind it does not know) is
    a one-line error naming it."""
    model = read_shapes(path)["model"]
    odd = next((k for k, t in model.items() if not isinstance(t, Tensor)), None)
    if odd is not None:
        raise CxrltError(f"{display_path(path)}: weight '{odd}' is not a plain tensor; cannot count its parameters")
    return sum(t.numel for k, t in model.items() if t.floating and not str(k).endswith(BN_STATS))


def served_checkpoints(folder: str | Path) -> list[Path]:
    """The best.pt files the web page loads for one experiment folder (not a blend): its finished
    folds in fold order, then the full-data fit if `predict.use_full_fit` asks for it (from stage
    04's predict_config.yaml, else the training's config.yaml; `none` without either)."""
    from cxrlt.config import load_yaml
    from cxrlt.experiment import FULL, Layout

    lay = Layout(Path(folder))
    cfg_file = next((f for f in (lay.dir / "predict_config.yaml", lay.config) if f.is_file()), None)
    saved = (load_yaml(cfg_file.read_text()) or {}) if cfg_file else {}
    use_full = (saved.get("predict") or {}).get("use_full_fit") or "none"
    paths = [lay.best(k) for k in lay.finished_folds()]
    if use_full != "none" and lay.finished(FULL):
        paths = ([] if use_full == "alone" else paths) + [lay.best(FULL)]
    return paths


def blend_members(folder: str | Path) -> dict[Path, float] | None:
    """{member folder: weight} of a blend's members with a weight above 0 (weights.json), None for
    a folder that is not a blend."""
    from cxrlt.experiment import experiment_path

    f = Path(folder) / "weights.json"
    if not f.is_file():
        return None
    weights = json.loads(f.read_text()).get("weights") or {}
    return {experiment_path(m): float(w) for m, w in weights.items() if float(w) > 0}


@dataclass(frozen=True)
class ModelSize:
    """params: one model (a blend: one model of each member, summed); served: every model one
    prediction runs, summed; models: how many. None where no finished fold is found."""
    params: int | None
    served: int | None
    models: int


def model_size(folder: str | Path) -> ModelSize:
    """The ModelSize of an experiment folder or a blend's (see the module's note on what is served)."""
    members = blend_members(folder)
    if members is not None:
        sizes = [model_size(m) for m in members]
        if not sizes or any(s.params is None for s in sizes):
            return ModelSize(None, None, sum(s.models for s in sizes))
        return ModelSize(sum(s.params for s in sizes), sum(s.served for s in sizes), sum(s.models for s in sizes))
    paths = served_checkpoints(folder)
    if not paths:
        return ModelSize(None, None, 0)
    counts = [checkpoint_params(p) for p in paths]
    return ModelSize(counts[0], sum(counts), len(counts))
