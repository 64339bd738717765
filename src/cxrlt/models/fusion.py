"""Features of a frozen backbone, and CheXFusion-style multi-view study fusion (Kim, ICCV CVAMD
2023, arXiv 2308.03968: the CXR-LT 2023 winner's second stage).

A study's views (up to `max_views` images) each give a grid of tokens from the frozen backbone's
feature map -> linear projection -> + fixed 2-D sine-cosine position of the token in its grid
+ a learned embedding of the view kind (PA, AP, LATERAL, ... from the preset's view column) ->
a learned padding token in the slots of missing views, masked out of every attention -> a small
transformer encoder over all the study's tokens -> ML-Decoder (class queries) -> study logits.

The view embedding is keyed by the view's kind, not its slot: with masking, the output does not
depend on the order of the views nor on how many padding slots there are (tested).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrlt.errors import CxrltError
from cxrlt.models.heads import MLDecoder, to_tokens


def backbone_tokens(net, x: torch.Tensor) -> torch.Tensor:
    """The feature map of a timm model or a HeadedNet as tokens (B, N, D)."""
    feats = net.forward_features(x)
    if hasattr(net, "tokens"):
        return net.tokens(feats)
    return to_tokens(feats, getattr(net, "output_fmt", "NCHW"), getattr(net, "num_prefix_tokens", 0))


def grid_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Tokens (B, N, D) of a square map, average-pooled to grid x grid tokens (B, grid^2, D)."""
    b, n, d = tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise CxrltError(f"backbone gives {n} tokens, not a square map: stage2.method=fusion needs a square feature map")
    fmap = tokens.transpose(1, 2).reshape(b, d, side, side)
    return F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)


def pooled_features(net, x: torch.Tensor) -> torch.Tensor:
    """What the model's classifier reads (timm's forward_head(pre_logits=True)); (B, D)."""
    return net.forward_head(net.forward_features(x), pre_logits=True)


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (side^2, dim): half the channels encode the row, half the column."""
    if dim % 4:
        raise CxrltError(f"stage2.dim={dim} must be a multiple of 4 (2-D sine-cosine positions)")
    q = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float64) / q))
    r, c = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64), indexing="ij")
    parts = [f(t.flatten()[:, None] * freq[None]) for t in (r, c) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, 1).float()


class StudyFusion(nn.Module):
    """tokens (B, V, T, in_dim), view kinds (B, V) long, present (B, V) bool -> study logits (B, C)."""

    def __init__(self, in_dim: int, num_classes: int, grid: int, n_kinds: int, dim: int = 256, layers: int = 2,
                 heads: int = 8, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise CxrltError(f"stage2.dim={dim} must be a multiple of stage2.heads={heads}")
        self.proj = nn.Linear(in_dim, dim)
        self.register_buffer("pos", sincos_2d(grid, dim), persistent=False)
        self.kind = nn.Embedding(n_kinds, dim)
        self.pad = nn.Parameter(torch.zeros(dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.decoder = MLDecoder(dim, num_classes, dim, heads, 1, dropout)

    def forward(self, tokens: torch.Tensor, kinds: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        used = present.any(0)
        if not bool(used.all()):       # slots empty in the whole batch cost nothing (masked anyway)
            tokens, kinds, present = tokens[:, used], kinds[:, used], present[:, used]
        b, v, t, _ = tokens.shape
        x = self.proj(tokens) + self.pos + self.kind(kinds)[:, :, None]
        x = torch.where(present[:, :, None, None], x, self.pad)       # the padding token in empty slots
        ignore = ~present.repeat_interleave(t, dim=1)                   # (B, V*T): True = masked out
        x = self.encoder(x.reshape(b, v * t, -1), src_key_padding_mask=ignore)
        return self.decoder(x, key_padding_mask=ignore)


class StudyFusionNet(nn.Module):
    """The whole second-stage model: a frozen first-stage backbone and the fusion over a study's views.
    images (B, V, C, H, W) normalised, kinds (B, V), present (B, V) -> study logits (B, C)."""

    def __init__(self, backbone: nn.Module, fusion: StudyFusion, grid: int):
        super().__init__()
        self.backbone, self.fusion, self.grid = backbone, fusion, int(grid)
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()    # frozen: its dropout / batch-norm statistics stay as trained
        return self

    def forward_features(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The backbone's feature maps of the present images only, (n_present, ...)."""
        return self.backbone.forward_features(images.flatten(0, 1)[present.flatten()])

    def forward_head(self, feats: torch.Tensor, kinds: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        b, v = present.shape
        net = self.backbone
        tokens = net.tokens(feats) if hasattr(net, "tokens") else to_tokens(
            feats, getattr(net, "output_fmt", "NCHW"), getattr(net, "num_prefix_tokens", 0))
        tok = grid_tokens(tokens, self.grid)
        full = tok.new_zeros(b * v, *tok.shape[1:])
        full[present.flatten()] = tok
        return self.fusion(full.view(b, v, *tok.shape[1:]), kinds, present)

    def forward(self, images: torch.Tensor, kinds: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images, present), kinds, present)
