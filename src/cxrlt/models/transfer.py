"""Start a run from another trained model (`model.init_from`): the backbone as it is, and the
classifier rows of the classes both label sets share, matched by name through an alias table;
every other class keeps its fresh initialisation.

Names match through the alias table of `cxrlt.findings` (lower case, spaces / `_` / `-` folded, then
ALIASES: No Finding = Normal, and three MIMIC / PadChest pairs).
"""
from __future__ import annotations

from pathlib import Path

import torch

from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, project_path
from cxrlt.findings import ALIASES, label_key, match_labels  # noqa: F401  (the alias table lives in ground)


def source_checkpoint(init_from: str) -> Path:
    """A checkpoint file, or an experiment (name under experiments/ or folder): its finished
    full-data fit (`full/best.pt` with `done.json`) when it has one, else its finished fold 0."""
    p = project_path(init_from)
    if p.is_file():
        return p
    for d in ([p] if p.is_dir() else []) + [project_path("experiments") / init_from]:
        for c in (d / "full" / "best.pt", d / "fold0" / "best.pt"):
            if c.is_file() and (c.parent / "done.json").is_file():   # never a model still training
                return c
    raise CxrltError(f"model.init_from '{init_from}': no checkpoint file, and no experiment with a finished full "
                     f"fit or fold 0 (full/ or fold0/ with best.pt and done.json)")


def source(init_from: str) -> tuple[Path, dict, dict]:
    """(path, checkpoint, arch record) of the model a run starts from."""
    from cxrlt.models.checkpoint import arch_of_checkpoint, load

    path = source_checkpoint(init_from)
    try:
        ck = load(path)
    except CxrltError as e:   # not a checkpoint at all: say which setting named it
        raise CxrltError(f"model.init_from {e}") from None
    arch = arch_of_checkpoint(ck)
    if not arch or arch.get("kind") != "image":
        raise CxrltError(f"model.init_from {display_path(path)}: not a first-stage image model")
    return path, ck, arch


def head_prefix(net) -> str:
    """The state-dict prefix of the classifier (timm's) or of the head module (HeadedNet)."""
    if hasattr(net, "head") and not hasattr(net, "get_classifier"):
        return "head."
    clf = net.get_classifier()
    for name, mod in net.named_modules():
        if mod is clf:
            return name + "."
    raise CxrltError("model.init_from: cannot find the model's classifier")


def use_input_stats(net, arch: dict) -> None:
    """Give `net` the input mean/std of the model it starts from (models.factory.input_stats reads them)."""
    net.pretrained_cfg = dict(getattr(net, "pretrained_cfg", None) or {}, mean=(float(arch["mean"]),),
                              std=(float(arch["std"]),))


def init_from(net, init, mcfg, labels: list[str], image_size: int) -> dict:
    """Load the backbone of `init`'s checkpoint (a name/path, or `source()`'s triple) into `net` and
    the matching classifier rows, and give `net` the source's input statistics (a converted
    foundation model's own scaling carries on); the report says which classes were carried
    (target <- source) and which start fresh. Build `net` with the source's `timm_kwargs`."""
    path, ck, arch = source(init) if isinstance(init, str) else init
    where = f"model.init_from {display_path(path)}"
    m = arch["model"]
    want = dict(name=mcfg.name, in_chans=int(mcfg.in_chans), head=mcfg.head, image_size=int(image_size))
    have = dict(name=m.get("name"), in_chans=int(m.get("in_chans", 1)), head=m.get("head", "linear"),
                image_size=int(arch.get("image_size") or 0))
    diff = [f"{k} {have[k]!r} (this run: {want[k]!r})" for k in want if have[k] != want[k]]
    if diff:
        raise CxrltError(f"{where}: a different model: {', '.join(diff)}")
    src_labels = list(arch["labels"])
    rows = match_labels(src_labels, labels)
    src, dst = ck["model"], net.state_dict()
    prefix = head_prefix(net)
    new = {}
    for k, t in dst.items():
        s = src.get(k)
        per_class = k.startswith(prefix) and t.ndim >= 1 and t.shape[0] == len(labels)
        if per_class and s is not None and s.shape[0] == len(src_labels) and s.shape[1:] == t.shape[1:]:
            t = t.clone()
            for j, i in rows.items():
                t[j] = s[i]
            new[k] = t
        elif s is not None and s.shape == t.shape:
            new[k] = s
        else:
            raise CxrltError(f"{where}: weight {k} {tuple(s.shape) if s is not None else 'missing'} does not fit "
                             f"{tuple(t.shape)}")
    with torch.no_grad():
        net.load_state_dict(new)
    use_input_stats(net, arch)
    carried = [(labels[j], src_labels[i]) for j, i in sorted(rows.items())]
    return dict(source=display_path(path), carried=carried,
                fresh=[n for j, n in enumerate(labels) if j not in rows], source_init=ck.get("init", "unknown"))
