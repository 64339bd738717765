"""Chest X-ray foundation weights from local files, converted into the matching timm architecture
(`model.pretrained_format` with `model.pretrained_path`). Nothing here downloads: the user fetches
the weights once (README) and names the file or folder.

- `torchxrayvision`: a TorchXRayVision DenseNet-121 (Cohen et al., MIDL 2022; e.g. `densenet121-res224-all`)
  -> timm `densenet121` with in_chans 1 (the keys are torchvision's, which timm's DenseNet shares).
  The file is what TorchXRayVision saves: a pickled model (unpickling needs `torchxrayvision`
  installed) or its state dict; the legacy `norm.1` key spelling is renamed. Input: one channel
  scaled to [-1024, 1024] (mean 0.5, std 1/2048 in this pipeline's 0-1 terms), 224 px.
- `hf-dinov2`: a Hugging Face `Dinov2Model` folder (`config.json` + `model.safetensors` or
  `pytorch_model.bin`), e.g. RAD-DINO (`microsoft/rad-dino`, Perez-Garcia et al., Nature Machine
  Intelligence 2025) -> timm `vit_*_patch14_dinov2` with the folder's width, depth and heads. The RGB
  patch-embedding filters are summed into one gray channel (exactly the output for the gray image
  replicated three times); the position embeddings are resampled to the recipe's input size; the
  input mean/std come from the folder's `preprocessor_config.json` (RAD-DINO: 0.5307 / 0.2583).

The converted model's input statistics and native resolution are set as its `pretrained_cfg`, so
checkpoints (their arch record), stage 04 and the web page normalise films as the publisher did.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from cxrlt.choices import PRETRAINED_FORMATS as FORMATS
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path

XRV_MEAN, XRV_STD = 0.5, 1.0 / 2048          # uint8 / 255 -> [-1024, 1024]
_LEGACY_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def load_xrv_state(path: Path) -> dict:
    """The DenseNet state dict of a TorchXRayVision weights file (pickled model or state dict)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise CxrltError(f"model.pretrained_path {display_path(path)}: a pickled model that needs the '{e.name}' "
                         f"package to read (pip install torchxrayvision)") from None
    state = obj.state_dict() if hasattr(obj, "state_dict") else obj.get("state_dict", obj)
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.").removeprefix("model.")
        m = _LEGACY_DENSE.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def xrv_to_timm(state: dict) -> dict:
    """TorchXRayVision DenseNet keys -> timm densenet121 keys (the backbone; the 18-way xrv head,
    its thresholds and xrv's own normalisation buffers are left out)."""
    return {k: v for k, v in state.items() if k.startswith("features.")}


def read_hf_folder(folder: Path) -> tuple[dict, dict, dict]:
    """(config, state dict, preprocessor config) of a Hugging Face model folder."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CxrltError(f"model.pretrained_path {display_path(folder)}: no config.json (a Hugging Face model folder)")
    config = json.loads(cfg_file.read_text())
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CxrltError(f"model.pretrained_path {display_path(folder)}: no model.safetensors or pytorch_model.bin")
    pre = folder / "preprocessor_config.json"
    return config, state, json.loads(pre.read_text()) if pre.is_file() else {}


def dinov2_to_timm(state: dict, config: dict, in_chans: int = 1) -> dict:
    """Hugging Face Dinov2Model keys -> timm VisionTransformer (dinov2 flavour) keys."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    out = {"cls_token": state["embeddings.cls_token"], "pos_embed": state["embeddings.position_embeddings"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    w = state["embeddings.patch_embeddings.projection.weight"]
    out["patch_embed.proj.weight"] = w.sum(1, keepdim=True) if in_chans == 1 and w.shape[1] == 3 else w
    out["patch_embed.proj.bias"] = state["embeddings.patch_embeddings.projection.bias"]
    for i in range(int(config["num_hidden_layers"])):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        a = h + "attention.attention."
        for p in ("weight", "bias"):
            out[b + f"attn.qkv.{p}"] = torch.cat([state[a + f"{n}.{p}"] for n in ("query", "key", "value")])
            out[b + f"attn.proj.{p}"] = state[h + f"attention.output.dense.{p}"]
            for n in ("norm1", "norm2"):
                out[b + f"{n}.{p}"] = state[h + f"{n}.{p}"]
            for n in ("fc1", "fc2"):
                out[b + f"mlp.{n}.{p}"] = state[h + f"mlp.{n}.{p}"]
        out[b + "ls1.gamma"] = state[h + "layer_scale1.lambda1"]
        out[b + "ls2.gamma"] = state[h + "layer_scale2.lambda1"]
    return out


def dinov2_kwargs(config: dict) -> dict:
    """timm VisionTransformer arguments for a Dinov2 config (on top of a vit_*_patch14_dinov2 name)."""
    return dict(embed_dim=int(config["hidden_size"]), depth=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]), mlp_ratio=float(config.get("mlp_ratio", 4)),
                patch_size=int(config.get("patch_size", 14)))


def create_foundation(mcfg, kw: dict, image_size: int | None) -> tuple[torch.nn.Module, str]:
    """A timm model built and loaded from a foundation-weights file of `model.pretrained_format`;
    returns (model, init source). A file that does not fit is a one-line error."""
    import timm

    fmt, path = mcfg.pretrained_format, Path(mcfg.pretrained_path)
    if fmt == "torchxrayvision":
        if "densenet" not in mcfg.name:
            raise CxrltError(f"model.pretrained_format=torchxrayvision gives a DenseNet; model.name is '{mcfg.name}'")
        net = timm.create_model(mcfg.name, pretrained=False, **kw)
        state = xrv_to_timm(load_xrv_state(path))
        mean, std, size = XRV_MEAN, XRV_STD, 224
    elif fmt == "hf-dinov2":
        config, raw, pre = read_hf_folder(path)
        size = int(image_size or config.get("image_size", 518))
        arch_kw = dict(img_size=size, **dinov2_kwargs(config))
        net = timm.create_model(mcfg.name, pretrained=False, **arch_kw, **kw)
        net.timm_kwargs = arch_kw
        state = dinov2_to_timm(raw, config, int(mcfg.in_chans))
        from timm.layers import resample_abs_pos_embed

        grid = net.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(grid), num_prefix_tokens=1)
        im_mean, im_std = pre.get("image_mean", [0.485, 0.456, 0.406]), pre.get("image_std", [0.229, 0.224, 0.225])
        mean, std = float(sum(im_mean) / len(im_mean)), float(sum(im_std) / len(im_std))   # ImageNet's without one
    else:
        raise CxrltError(f"model.pretrained_format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    missing, unexpected = net.load_state_dict(state, strict=False)
    head = {n for n, _ in net.named_parameters() if n.startswith(("head", "classifier", "fc."))}
    bad = [k for k in missing if k not in head] + list(unexpected)
    if bad:
        raise CxrltError(f"model.pretrained_path {display_path(path)} ({fmt}): does not fit {mcfg.name} "
                         f"({len(bad)} weights differ, e.g. {bad[0]})")
    net.pretrained_cfg = dict(getattr(net, "pretrained_cfg", {}) or {}, mean=(mean,), std=(std,),
                              input_size=(int(mcfg.in_chans), size, size))
    return net, f"file:{display_path(path)} ({fmt})"
