"""Classifier heads over a backbone's feature map (`model.head`), and the module pairing them.

- `linear`: timm's own pooled classifier (the model is a plain timm model, as before heads existed).
- `ml_decoder` (Ridnik et al., WACV 2023, "ML-Decoder: Scalable and Versatile Classification
  Head"): one learned query per class cross-attends to the spatial tokens; a decoder layer without
  self-attention (their change to the transformer decoder), then a per-class linear read-out
  ("group fully-connected" with group size 1).
  With `model.class_queries: text` (Abdulrasheed 2025) the queries are a trained projection of frozen
  label embeddings from a text encoder (models.text), and the read-out is shared by all classes, so
  a class never trained on can be scored from its embedding alone (zero-shot, `set_text`).
- `csra` (Zhu & Wu, ICCV 2021, "Residual Attention: A Simple but Effective Method for Multi-Label
  Recognition"): per-class scores at every location; logit = their mean + lambda x their
  softmax(T x score)-weighted sum (T = 99 means max pooling), summed over temperature heads.

torch has no ML-Decoder or CSRA layer and timm has neither head, hence these short modules.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrlt.errors import CxrltError

def check_head(mcfg) -> str:
    """The head's name; a one-line error for a head key the chosen head ignores (schema rules, for
    a model record saved by a checkpoint as for a recipe's model section)."""
    from cxrlt import schema

    why = schema.head_rules(schema.with_defaults("model", dict(mcfg)))
    if why:
        raise CxrltError(why)
    return mcfg.get("head") or "linear"


def to_tokens(feats: torch.Tensor, fmt: str = "NCHW", prefix: int = 0) -> torch.Tensor:
    """A backbone's forward_features output as tokens (B, N, D): NCHW / NHWC maps are flattened,
    token sequences (ViT) lose their `prefix` class/register tokens."""
    if feats.ndim == 4:
        return feats.flatten(1, 2) if fmt == "NHWC" else feats.flatten(2).transpose(1, 2)
    if feats.ndim == 3:
        return feats[:, prefix:]
    raise CxrltError(f"backbone features of shape {tuple(feats.shape)}: expected a map (B, C, H, W) or tokens (B, N, C)")


class MLDecoder(nn.Module):
    """tokens (B, N, in_dim) -> logits (B, C); `key_padding_mask` (B, N), True = ignore the token.

    `text_emb` (C, E) given: text class queries. The embeddings are a persistent buffer (frozen,
    saved in the state dict, so a checkpoint predicts its classes without the text encoder); the
    queries are `query_proj(text_emb)`, a trained Linear(E, dim). The read-out is then shared by all
    classes, logit_c = <q_c, w> + b (w: (dim,), b: one scalar), as ML-Decoder's own zero-shot
    variant shares the group-FC weights between groups: a per-class row cannot exist for a class
    never trained on, while a shared read-out scores any query the text projection can make. The
    class identity enters through the query, which decides where on the film it attends. As the
    decoder has no self-attention, each class is decoded independently: adding rows (`set_text`)
    leaves the other classes' logits unchanged.
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int = 768, heads: int = 8, layers: int = 1,
                 dropout: float = 0.1, text_emb: torch.Tensor | None = None):
        super().__init__()
        if dim % heads:
            raise CxrltError(f"model.decoder_dim={dim} must be a multiple of model.decoder_heads={heads}")
        self.embed = nn.Linear(in_dim, dim)
        self.text = text_emb is not None
        # creation order as before text queries existed: a learned head's initial weights for a seed are unchanged
        if self.text:
            text_emb = torch.as_tensor(text_emb, dtype=torch.float32)
            if text_emb.ndim != 2 or len(text_emb) != num_classes:
                raise CxrltError(f"label embeddings of shape {tuple(text_emb.shape)} for {num_classes} classes")
            self.register_buffer("text_emb", text_emb.clone())
            self.query_proj = nn.Linear(text_emb.shape[1], dim)
        else:
            self.queries = nn.Parameter(torch.randn(num_classes, dim) * 0.02)
        self.layers = nn.ModuleList(_CrossLayer(dim, heads, dropout) for _ in range(int(layers)))
        if self.text:
            self.weight = nn.Parameter(torch.randn(dim) * dim ** -0.5)       # shared read-out
            self.bias = nn.Parameter(torch.zeros(1))
        else:
            self.weight = nn.Parameter(torch.randn(num_classes, dim) * dim ** -0.5)   # group FC, group size 1
            self.bias = nn.Parameter(torch.zeros(num_classes))

    @property
    def num_classes(self) -> int:
        return len(self.text_emb) if self.text else len(self.queries)

    def class_queries(self) -> torch.Tensor:
        return self.query_proj(self.text_emb) if self.text else self.queries

    def set_text(self, emb) -> None:
        """Score the classes of these label embeddings (E columns as trained) from now on: e.g. the
        trained rows followed by rows of labels never trained on (zero-shot)."""
        if not self.text:
            raise CxrltError("zero-shot labels need an ML-Decoder with model.class_queries=text; this model's "
                             "class queries are learned")
        emb = torch.as_tensor(emb, dtype=torch.float32, device=self.text_emb.device)
        if emb.ndim != 2 or emb.shape[1] != self.text_emb.shape[1]:
            raise CxrltError(f"label embeddings of shape {tuple(emb.shape)}: the model was trained with "
                             f"{self.text_emb.shape[1]}-dimensional ones (same model.text_encoder?)")
        self.text_emb = emb.clone()     # a registered buffer: stays a buffer, of the new size

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        mem = F.relu(self.embed(tokens))
        q = self.class_queries().unsqueeze(0).expand(len(tokens), -1, -1)
        for layer in self.layers:
            q = layer(q, mem, key_padding_mask)
        return (q * self.weight).sum(-1) + self.bias


class _CrossLayer(nn.Module):
    """Transformer decoder layer without self-attention (ML-Decoder): queries + dropout, norm,
    cross-attention, norm, feed-forward, norm (post-norm, as in the paper's code)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, q, mem, key_padding_mask=None):
        q = self.norm1(q + self.drop(q))
        q = self.norm2(q + self.drop(self.attn(q, mem, mem, key_padding_mask=key_padding_mask, need_weights=False)[0]))
        return self.norm3(q + self.drop(self.ff(q)))


class CSRA(nn.Module):
    """tokens (B, N, in_dim) -> logits (B, C): class-specific residual attention, one head per temperature."""

    def __init__(self, in_dim: int, num_classes: int, temperatures=(1,), lam: float = 0.1):
        super().__init__()
        self.temperatures = [float(t) for t in temperatures]
        self.lam = float(lam)
        self.heads = nn.ModuleList(nn.Linear(in_dim, num_classes, bias=False) for _ in self.temperatures)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = 0
        for t, head in zip(self.temperatures, self.heads):
            # scores per location, the classifier normalised per class (as the paper's code does)
            s = (head(tokens) / head.weight.norm(dim=1)).transpose(1, 2)          # (B, C, N)
            keep = None if key_padding_mask is None else ~key_padding_mask.unsqueeze(1)
            if keep is None:
                base = s.mean(2)
                att = s.amax(2) if t == 99 else (torch.softmax(s * t, 2) * s).sum(2)
            else:
                base = (s * keep).sum(2) / keep.sum(2).clamp(min=1)
                masked = s.masked_fill(~keep, float("-inf"))
                att = masked.amax(2) if t == 99 else (torch.softmax(masked * t, 2) * s.masked_fill(~keep, 0)).sum(2)
            out = out + base + self.lam * att
        return out


def build_head(mcfg, in_dim: int, num_classes: int, text_emb=None) -> nn.Module:
    """The head of `model.head`; `text_emb` (C, E): the label embeddings of text class queries. A
    model rebuilt from its checkpoint passes none: a zero buffer of the recorded width
    (`model.text_dim`) that the checkpoint's weights then fill."""
    head = check_head(mcfg)
    if head == "ml_decoder":
        if mcfg["class_queries"] == "text" and text_emb is None:
            if not mcfg.get("text_dim"):    # recorded by a checkpoint only
                raise CxrltError("model.class_queries=text: no label embeddings given (models.text.label_embeddings)")
            text_emb = torch.zeros(num_classes, int(mcfg["text_dim"]))
        elif mcfg["class_queries"] != "text":
            text_emb = None
        return MLDecoder(in_dim, num_classes, int(mcfg["decoder_dim"]), int(mcfg["decoder_heads"]),
                         int(mcfg["decoder_layers"]), text_emb=text_emb)
    if head == "csra":
        return CSRA(in_dim, num_classes, mcfg["csra_temperatures"], float(mcfg["csra_lambda"]))
    raise CxrltError(f"model.head={head} is timm's own classifier, not a separate module")


class HeadedNet(nn.Module):
    """A timm backbone without its classifier (num_classes=0, global_pool='') and a token head;
    timm's `forward_features` / `forward_head` names, so callers treat it like a timm model."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", None)

    def forward_features(self, x):
        return self.backbone.forward_features(x)

    def tokens(self, feats):
        return to_tokens(feats, getattr(self.backbone, "output_fmt", "NCHW"), getattr(self.backbone, "num_prefix_tokens", 0))

    def forward_head(self, feats, pre_logits: bool = False):
        tokens = self.tokens(feats)
        return tokens.mean(1) if pre_logits else self.head(tokens)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))
