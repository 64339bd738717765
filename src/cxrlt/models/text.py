"""Label embeddings from a frozen text encoder, the class queries of `model.class_queries: text`.

Abdulrasheed 2025 (docs/references.md), objectives 2-3: replace the ML-Decoder's learned class queries by embeddings of the class
names from a biomedical text encoder (BiomedBERT / PubMedBERT, UmlsBERT), so that a finding never
trained on can still be scored from its name alone (zero-shot).

- `class_prompts(labels, prompt)`: the text each class is encoded from (`model.prompt`, `{label}`).
- `encode_labels(encoder, prompts)`: a Hugging Face encoder (`model.text_encoder`: a hub name or a
  local folder), frozen, mean-pooled over the tokens; float32 (C, E).
- `label_embeddings(mcfg, labels, cache_file)`: the same through a cache file beside the experiment
  (`text_embeddings.json`), keyed by encoder, prompt text: a label already there never loads the
  encoder again, a new label encodes only itself.
- `write_random_bert(folder, words)`: a tiny BERT with RANDOM weights and a vocabulary of the given
  words, for tests and the offline demo; it is not a language model and its embeddings carry no
  medical meaning.

Offline (no reachable hub, as on a cluster node): a hub name loads from the local Hugging Face cache
only, and a name found neither there nor as a folder is a one-line error saying how to fetch it once.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, project_path, to_json, write_text

CACHE_NAME = "text_embeddings.json"
# BERT's special tokens, first in a vocabulary (ids 0-4, as in bert-base-uncased's order of use)
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or "{label}" not in prompt:
        raise CxrltError(f"model.prompt must be a text with {{label}} where the class name goes, not {prompt!r}")
    return prompt


def class_prompts(labels, prompt: str) -> list[str]:
    """The sentence each class is encoded from; `{label}` gets the name in lower case, with `(ed)`
    style spellings as words ("Round(ed) Atelectasis" -> "round atelectasis")."""
    check_prompt(prompt)
    return [prompt.replace("{label}", " ".join(re.sub(r"\(\w*\)", "", str(x)).lower().split())) for x in labels]


def _where(encoder: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder); a path-like name that is no
    folder is an error (never sent to the hub as a model id)."""
    p = project_path(encoder)
    if p.is_dir():
        return str(p), True
    if Path(encoder).is_absolute() or encoder.startswith((".", "~")) or encoder.count("/") > 1:
        raise CxrltError(f"model.text_encoder '{encoder}': folder {display_path(p)} not found")
    return encoder, False


def load_encoder(encoder: str):
    """(tokenizer, model in eval mode, frozen) of `model.text_encoder`; one-line errors when it
    cannot be had."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from cxrlt.models.factory import hub_reachable

    hf_logging.disable_progress_bar()   # its per-load "Loading weights" bars would bury the stage's own output

    if not encoder:
        raise CxrltError("model.class_queries=text needs model.text_encoder (a Hugging Face model name or a local folder)")
    src, local = _where(str(encoder))
    offline = local or not hub_reachable()
    try:
        tok = AutoTokenizer.from_pretrained(src, local_files_only=offline)
        net = AutoModel.from_pretrained(src, local_files_only=offline)
    except Exception as e:   # not in the cache, no network, a folder without the files
        if offline and not local:
            raise CxrltError(f"model.text_encoder '{encoder}': not a local folder and the Hugging Face hub is not "
                             f"reachable; download it once with `huggingface-cli download {encoder} --local-dir "
                             f"input/text_encoders/{encoder.split('/')[-1]}` and set model.text_encoder to that folder") from None
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CxrltError(f"model.text_encoder '{encoder}': cannot be loaded ({reason})") from None
    net.eval().requires_grad_(False)
    return tok, net


def encode_labels(encoder, prompts: list[str], batch_size: int = 64) -> np.ndarray:
    """float32 (len(prompts), hidden size): the last hidden state of `encoder` (a name/folder, or a
    (tokenizer, model) pair) mean-pooled over the real tokens (attention mask).

    Mean pooling, not the [CLS] vector: a BERT-style encoder trained only with masked-language
    modelling (BiomedBERT, PubMedBERT, UmlsBERT) has no sentence objective on [CLS], which is then a
    poor sentence vector; the mean of the token states is the usual choice for their label
    embeddings (as in sentence-transformers' default and the pooled label embeddings of
    CheXzero/MedKLIP-style work).
    """
    import torch

    tok, net = load_encoder(encoder) if isinstance(encoder, str) or encoder is None else encoder
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            batch = tok(list(prompts[i:i + batch_size]), padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = net(**batch).last_hidden_state                           # (B, T, E)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def label_embeddings(mcfg, labels, cache_file: str | Path | None) -> np.ndarray:
    """float32 (C, E) embeddings of `labels` under `model.text_encoder` and `model.prompt`, read from
    `cache_file` where it has them; only the missing ones are encoded (the encoder is not even
    loaded when none is missing), then added to the file (written atomically).

    The cache is keyed by the encoder as named in the recipe and by the prompt text: a folder whose
    weights are replaced under the same name needs the cache file deleted."""
    encoder, prompt = mcfg["text_encoder"], check_prompt(mcfg["prompt"])
    if not encoder:
        raise CxrltError("model.class_queries=text needs model.text_encoder (a Hugging Face model name or a local folder)")
    texts = class_prompts(labels, prompt)
    path = Path(cache_file) if cache_file else None
    cache = {}
    if path is not None and path.is_file():
        try:
            cache = json.loads(path.read_text()).get("encoders", {})
        except (ValueError, AttributeError):
            raise CxrltError(f"{display_path(path)}: not a text-embedding cache (broken JSON); delete it") from None
    known = cache.get(str(encoder), {})
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if missing:
        for t, v in zip(missing, encode_labels(str(encoder), missing)):
            known[t] = [float(x) for x in v]
        cache[str(encoder)] = known
        if path is not None:
            write_text(path, to_json(dict(note="label embeddings: encoder -> prompt text -> vector (models/text.py)",
                                          encoders=cache)))
    if len({len(known[t]) for t in texts}) > 1:
        raise CxrltError(f"{display_path(path)}: vectors of different sizes for model.text_encoder '{encoder}'; delete it")
    return np.asarray([known[t] for t in texts], np.float32)


def write_random_bert(folder: str | Path, words, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """A tiny BERT folder (config, RANDOM weights, tokenizer) whose vocabulary is BERT's special
    tokens and the lower-cased word pieces of `words`; what `model.text_encoder` accepts. For tests
    and the offline demo only: it has never read a word of text."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = []
    for w in words:   # BERT's basic tokenisation: lower case, split on spaces and punctuation
        pieces += re.findall(r"\w+|[^\w\s]", str(w).lower())
    vocab = [*SPECIAL, *sorted(set(pieces) - set(SPECIAL))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(folder)
    (folder / "README.md").write_text("A tiny BERT with RANDOM weights (cxrlt.models.text.write_random_bert): for "
                                      "tests and the offline demo only; not a language model.\n")
    return folder


def add_labels(net, arch: dict, labels, cache_file: str | Path | None) -> None:
    """Let a trained text-query model (`net`, rebuilt from its checkpoint with `arch`) also score
    `labels`, which it never trained on: their embeddings under the checkpoint's own encoder and
    prompt (from the cache, else encoded) follow its trained rows, so its logits are the trained
    classes' (unchanged) then these."""
    import torch

    from cxrlt import schema

    head = getattr(net, "head", None)
    if not getattr(head, "text", False):
        raise CxrltError(f"zero-shot labels ({', '.join(labels)}) need models trained with model.head=ml_decoder and "
                         f"model.class_queries=text; this experiment's have model.head="
                         f"{arch.get('model', {}).get('head', 'linear')} with "
                         f"{arch.get('model', {}).get('class_queries') or 'learned'} queries")
    emb = torch.from_numpy(label_embeddings(schema.with_defaults("model", arch["model"]), labels, cache_file))
    head.set_text(torch.cat([head.text_emb[:len(arch["labels"])], emb.to(head.text_emb.device)]))
