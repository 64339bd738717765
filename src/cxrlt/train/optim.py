"""The optimizer and learning-rate schedule of a fold, from timm's factories.

The optimizer is `timm.optim.create_optimizer_v2` by name (`train.optimizer`). The schedule steps
once per optimizer update (`Schedule.update`, called by the training loop after an update that was
not skipped) through timm's `Scheduler.step_update`: `train.scheduler=cosine` is `WarmupCosine`
below, the others come from `timm.scheduler.create_scheduler_v2`.

Why `cosine` is a subclass of timm's Scheduler and not timm's CosineLRScheduler: timm's warmup
starts at `warmup_lr_init` at update 0, ours at lr / warmup_updates (the first update already
moves), and the closed form is written once here so that runs before and after the move to timm's
factories train bit-identical weights.
"""
from __future__ import annotations

import math

from timm.scheduler.scheduler import Scheduler

from cxrlt.choices import OPTIMIZERS, SCHEDULERS
from cxrlt.errors import CxrltError


def create_optimizer(module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                     filter_bias_and_bn: bool = True):
    """timm's optimizer `name` over `module`'s parameters; filter_bias_and_bn: no weight decay on
    biases and normalisation weights (timm's default, what first stages use)."""
    import timm.optim

    if name not in OPTIMIZERS:
        raise CxrltError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, not '{name}'")
    extra = dict(momentum=float(momentum)) if name in ("sgd", "momentum", "rmsproptf", "lars") else {}
    return timm.optim.create_optimizer_v2(module, name, lr=float(lr), weight_decay=float(weight_decay),
                                          filter_bias_and_bn=filter_bias_and_bn, **extra)


class WarmupCosine(Scheduler):
    """lr at update t: lr * (t + 1) / warmup for t < warmup, then cosine from lr down to
    lr * min_ratio at `total` updates (and there after)."""

    def __init__(self, optimizer, total: int, warmup: int, min_ratio: float):
        self.total, self.warmup, self.min_ratio = int(total), int(warmup), float(min_ratio)
        super().__init__(optimizer, "lr", t_in_epochs=False)
        self.step_update(0)

    def factor(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        x = min(1.0, (t - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * x))

    def _get_lr(self, t: int) -> list[float]:
        return [base * self.factor(t) for base in self.base_values]


class Schedule:
    """The learning rate per optimizer update: counts the updates (saved in last.pt, so a resumed
    run continues the same curve) and sets the optimizer's lr through a timm scheduler."""

    def __init__(self, optimizer, name: str, *, epochs: int, updates_per_epoch: int, warmup_epochs: float,
                 min_lr_ratio: float):
        if name not in SCHEDULERS:
            raise CxrltError(f"train.scheduler must be one of {', '.join(SCHEDULERS)}, not '{name}'")
        self.optimizer, self.updates = optimizer, 0
        total, warmup = epochs * updates_per_epoch, int(round(float(warmup_epochs) * updates_per_epoch))
        if name == "cosine":
            self.scheduler = WarmupCosine(optimizer, total, warmup, min_lr_ratio)
        else:
            from timm.scheduler import create_scheduler_v2

            lr = optimizer.param_groups[0]["lr"]
            self.scheduler, _ = create_scheduler_v2(
                optimizer, name, num_epochs=epochs, warmup_epochs=float(warmup_epochs), warmup_lr=lr * min_lr_ratio,
                min_lr=lr * min_lr_ratio, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
            self.scheduler.step_update(0)

    def update(self) -> None:
        """One optimizer update happened: the lr for the next one."""
        self.updates += 1
        self.scheduler.step_update(self.updates)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return dict(updates=self.updates, scheduler=self.scheduler.state_dict())

    def load_state_dict(self, state: dict) -> None:
        if "updates" not in state:
            raise CxrltError("last.pt holds a learning-rate schedule of an earlier version of the trainer; "
                             "use --force to start the fold again")
        self.updates = int(state["updates"])
        self.scheduler.load_state_dict(state["scheduler"])
