"""Finding names across releases and external sets: one key per finding, so that two label lists
can be matched by name (`model.init_from`'s classifier rows, `data.extra`'s label mapping).

Names match after lower-casing and folding spaces, `_` and `-`, then through ALIASES (pairs that
name one finding in two releases):

| one release | the other |
|---|---|
| No Finding (CXR-LT 2023) | Normal (2024, 2026) |
| Pneumoperitoneum (MIMIC) | pneumoperitoneo (PadChest) |
| Calcification of the Aorta (MIMIC) | aortic atheromatosis (PadChest) |
| Tortuous Aorta (MIMIC) | aortic elongation (PadChest) |

Ground: imports nothing of the project (the data wing reads it without torch; models/transfer.py
re-exports it).
"""
from __future__ import annotations

import re

ALIASES = [("no finding", "normal"), ("pneumoperitoneum", "pneumoperitoneo"),
           ("calcification of the aorta", "aortic atheromatosis"), ("tortuous aorta", "aortic elongation")]
_CANON = {b: a for a, b in ALIASES}


def label_key(name: str) -> str:
    k = re.sub(r"[\s_\-]+", " ", str(name).strip().lower())
    return _CANON.get(k, k)


def match_labels(source: list[str], target: list[str]) -> dict[int, int]:
    """{target index: source index} of the classes that name the same finding."""
    src = {label_key(n): i for i, n in enumerate(source)}
    return {j: src[label_key(n)] for j, n in enumerate(target) if label_key(n) in src}
