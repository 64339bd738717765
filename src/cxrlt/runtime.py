"""The runtime of one process: its precision and its Accelerator (one per process, made by the stage)."""
from __future__ import annotations

import os

from cxrlt.errors import CxrltError


def precision_mode(section, key: str = "train.precision") -> str:
    """The section's `precision` (no | fp16 | bf16) as accelerate names it; CPU runs use fp32."""
    p = "no" if section.precision in (False, None) else str(section.precision)  # YAML 1.1 reads a bare `no` as false
    if p not in ("no", "fp16", "bf16"):
        raise CxrltError(f"{key} must be no, fp16 or bf16, not '{p}'")
    import torch   # here, not at the top: stages without a model (05-08) import this module and no torch

    if p != "no" and not torch.cuda.is_available():
        return "no"  # CPU autocast is slower than fp32 on most CPUs
    return p


def make_accelerator(section, key: str = "train.precision", grad_accum: int = 1, log_with=None, project_dir=None):
    """An Accelerator for this process with the section's precision (seedable samplers: exact resume);
    `log_with` trackers (train.tracking) write under `project_dir`."""
    from accelerate import Accelerator, DataLoaderConfiguration

    return Accelerator(mixed_precision=precision_mode(section, key), gradient_accumulation_steps=int(grad_accum),
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                       log_with=log_with or None, project_dir=None if project_dir is None else str(project_dir))


def is_main_process() -> bool:
    """Rank 0 of a launched job (accelerate / torchrun set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0
