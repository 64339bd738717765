"""timm backbones with a multi-label head (`model.head`, models.heads), and where their weights come from.

Every model this module makes carries `init_source`: where its weights came from (`file:<path>`,
`hub:<model>` or `random`), which checkpoints record so that one experiment never mixes folds that
started from pretrained weights with folds that started from random ones.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from urllib.parse import urlparse

import timm
import torch

from cxrlt.config import Config
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, project_path
from cxrlt.models.heads import HeadedNet, build_head, check_head
from cxrlt.schema import HEAD_KEYS, with_defaults

# model keys that decide the architecture (what a checkpoint records to rebuild its model)
ARCH_KEYS = ("name", "in_chans", "drop_rate", "drop_path_rate", "head", *(k for v in HEAD_KEYS.values() for k in v))


def create_model(mcfg, num_classes: int, image_size: int | None = None, timm_kwargs: dict | None = None,
                 text_emb=None) -> torch.nn.Module:
    """Any timm model name. Weights: model.pretrained_path (a local file) > model.pretrained (download)
    > random init, with one clear warning when a download fails (an error if model.require_pretrained).

    Gray films use in_chans=1: timm sums the pretrained RGB stem filters into one input channel,
    which gives exactly the output of feeding the gray image replicated to three channels, at a third
    of the input memory and transfer.

    `text_emb` (C, E): label embeddings for `model.class_queries: text` (models.text.label_embeddings).
    """
    mcfg = Config(with_defaults("model", dict(mcfg)))     # a partial section (a test, an old record): defaults
    head = check_head(mcfg)
    kw = dict(num_classes=num_classes, in_chans=int(mcfg.in_chans), drop_rate=float(mcfg.drop_rate))
    if mcfg.drop_path_rate:
        kw["drop_path_rate"] = float(mcfg.drop_path_rate)
    kw.update(timm_kwargs or {})   # architecture arguments a converted checkpoint recorded (models.foundation)
    if head != "linear":   # the backbone's feature map goes to our head (timm drops a pretrained classifier)
        kw.update(num_classes=0, global_pool="")

    def _tag(net, source):
        extra = dict(getattr(net, "timm_kwargs", None) or timm_kwargs or {})
        if head != "linear":
            net = HeadedNet(net, build_head(mcfg, net.num_features, num_classes, text_emb))
        net.init_source, net.timm_kwargs = source, extra
        return net
    if mcfg.pretrained_path and mcfg["pretrained_format"] != "timm":   # chest X-ray foundation weights
        from cxrlt.models.foundation import create_foundation

        path = project_path(mcfg.pretrained_path)
        if not path.exists():
            raise CxrltError(f"model.pretrained_path {display_path(path)}: not found")
        net, source = create_foundation(Config(dict(mcfg, pretrained_path=str(path))), kw, image_size)
        return _tag(net, source)
    if mcfg.pretrained_path:
        path = project_path(mcfg.pretrained_path)
        if not path.is_file():
            raise CxrltError(f"model.pretrained_path {display_path(path)}: file not found")
        try:
            net = timm.create_model(mcfg.name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)
        except (RuntimeError, KeyError) as e:
            raise CxrltError(f"model.pretrained_path {display_path(path)}: does not fit {mcfg.name} "
                             f"({str(e).splitlines()[0][:200]})") from None
        return _tag(net, f"file:{display_path(path)}")
    if mcfg.pretrained:
        try:
            with _offline_unless_reachable():
                return _tag(timm.create_model(mcfg.name, pretrained=True, **kw), f"hub:{mcfg.name}")
        except Exception as e:  # no network, hub error, unknown tag
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__
            if mcfg.require_pretrained:
                raise CxrltError(f"model.pretrained: could not get weights for {mcfg.name} ({reason}); "
                                 f"set model.pretrained_path to a local file") from None
            print(f"warning: no pretrained weights for {mcfg.name} ({reason}); training from random init. "
                  f"Set model.pretrained_path to a local weights file, or model.require_pretrained=true "
                  f"to stop instead.", file=sys.stderr)
    try:
        return _tag(timm.create_model(mcfg.name, pretrained=False, **kw), "random")
    except RuntimeError as e:
        raise CxrltError(f"model.name '{mcfg.name}': {str(e).splitlines()[0]}") from None


def check_init(mcfg, init: str, what: str, advice: str) -> None:
    """A one-line error when weights that started from `init` (a model's `init_source`, as a
    checkpoint or done.json records it) do not satisfy the recipe: under model.require_pretrained a
    random start (or an unrecorded one) is refused, e.g. a fold trained without network access."""
    start = str(init).split(" + ")[0]      # a second stage records "<first stage's start> + <method>"
    if mcfg.get("require_pretrained") and start in ("random", "unknown"):
        raise CxrltError(f"{what} started from {'random init' if start == 'random' else 'unrecorded weights'} "
                         f"(init: {init}) but model.require_pretrained=true; {advice}")


def arch_record(mcfg, labels, image_size: int, resize: str, mean: float, std: float, net=None,
                task: str = "multilabel") -> dict:
    """What a checkpoint carries to rebuild its model from the file alone (models.checkpoint.load_model);
    `net` adds the architecture arguments a converted foundation model was built with; `task` says how
    logits become probabilities (sigmoid per class, or softmax for a multiclass task)."""
    model = {k: mcfg.get(k) for k in ARCH_KEYS if k in mcfg}
    if getattr(net, "timm_kwargs", None):
        model["timm_kwargs"] = dict(net.timm_kwargs)
    text_emb = getattr(getattr(net, "head", None), "text_emb", None)
    if text_emb is not None:   # the width of the label embeddings, to rebuild the head without the encoder
        model["text_dim"] = int(text_emb.shape[1])
    return dict(kind="image", model=model, labels=list(labels), num_classes=len(labels), image_size=int(image_size),
                resize=resize, mean=float(mean), std=float(std), task=task)


def arch_model(arch: dict) -> dict:
    """An arch record's model section with today's defaults for the keys it predates."""
    return with_defaults("model", arch["model"])


def model_from_arch(arch: dict) -> torch.nn.Module:
    """The untrained model of an `arch_record` (no download: the weights come from the checkpoint)."""
    m = dict(arch_model(arch), pretrained=False, pretrained_path=None, require_pretrained=False)
    kw = m.pop("timm_kwargs", None) or {}
    net = create_model(Config(m), int(arch["num_classes"]), timm_kwargs=kw)
    return net


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host takes no TCP connection within `timeout`."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_unless_reachable():
    """Without a reachable hub, ask huggingface_hub for its local cache only: a weight file already
    downloaded still loads, and a missing one fails at once instead of after ~45 s of retries."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or not hub_reachable()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def input_stats(model: torch.nn.Module) -> tuple[float, float]:
    """Mean and std (0-1 scale) the backbone was trained with, averaged over RGB for gray input."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = cfg.get("mean", (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.229, 0.224, 0.225))
    return float(sum(mean) / len(mean)), float(sum(std) / len(std))
