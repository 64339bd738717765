"""The optimizer and schedule from timm's factories (train.optim): names, lr curves, resume."""
import math

import pytest
import torch

from cxrlt.choices import OPTIMIZERS, SCHEDULERS
from cxrlt.errors import CxrltError
from cxrlt.train.optim import Schedule, WarmupCosine, create_optimizer


def test_every_optimizer_choice_is_one_of_timms_and_builds():
    import timm.optim

    assert set(OPTIMIZERS) <= set(timm.optim.list_optimizers())
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    for name in OPTIMIZERS:
        opt = create_optimizer(net, name, lr=0.1, weight_decay=0.05)
        assert all(g["lr"] == 0.1 for g in opt.param_groups), name
    # timm's default: no decay on biases and normalisation weights; a second stage decays everything
    groups = create_optimizer(net, "adamw", 0.1, 0.05).param_groups
    assert sorted((g["weight_decay"], len(g["params"])) for g in groups) == [(0.0, 3), (0.05, 1)]
    flat = create_optimizer(net, "adamw", 0.1, 0.05, filter_bias_and_bn=False).param_groups
    assert [(g["weight_decay"], len(g["params"])) for g in flat] == [(0.05, 4)]


def test_train_optimizer_and_scheduler_are_recipe_keys_checked_at_load():
    from conftest import DEMO

    from cxrlt.config import load_config

    cfg = load_config(DEMO, ["train.optimizer=lamb", "train.scheduler=tanh"])
    assert (cfg.train.optimizer, cfg.train.scheduler) == ("lamb", "tanh")
    for bad in ("train.optimizer=adamx", "train.scheduler=cosin"):
        with pytest.raises(CxrltError, match=rf"^[^\n]*{bad.split('=')[0]}[^\n]*$"):
            load_config(DEMO, [bad])


def _lrs(schedule, n):
    out = [schedule.lr]
    for _ in range(n):
        schedule.update()
        out.append(schedule.lr)
    return out


def test_cosine_is_the_closed_form_bit_for_bit():
    """lr * (t + 1) / warmup, then cosine to lr * min_ratio: the formula runs before the move to timm's
    factories used (a LambdaLR), written out here independently and compared with ==."""
    lr, total, warmup, ratio = 5e-3, 37, 6, 0.01

    def old(t):
        if t < warmup:
            return (t + 1) / warmup
        x = min(1.0, (t - warmup) / max(1, total - warmup))
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * x))

    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr)
    lam = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr), old)
    want = []
    for _ in range(total + 3):
        want.append(lam.get_last_lr()[0])
        lam.optimizer.step()
        lam.step()
    s = Schedule(opt, "cosine", epochs=total, updates_per_epoch=1, warmup_epochs=warmup, min_lr_ratio=ratio)
    assert isinstance(s.scheduler, WarmupCosine)
    assert _lrs(s, total + 2) == want
    assert want[0] == pytest.approx(lr / warmup) and want[-1] == pytest.approx(lr * ratio)


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n != "cosine"])
def test_the_other_schedules_are_timms_per_update(name):
    from timm.scheduler import create_scheduler_v2

    lr, epochs, per_epoch = 1e-2, 5, 7
    a = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr)
    b = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr)
    s = Schedule(a, name, epochs=epochs, updates_per_epoch=per_epoch, warmup_epochs=1, min_lr_ratio=0.1)
    ref, _ = create_scheduler_v2(b, name, num_epochs=epochs, warmup_epochs=1.0, warmup_lr=lr * 0.1, min_lr=lr * 0.1,
                                 step_on_epochs=False, updates_per_epoch=per_epoch)
    want = []
    for t in range(epochs * per_epoch + 1):
        ref.step_update(t)
        want.append(b.param_groups[0]["lr"])
    got = _lrs(s, epochs * per_epoch)
    assert got == want and got[0] == pytest.approx(lr * 0.1) and 0.95 * lr < max(got) <= lr


def test_a_restored_schedule_continues_the_same_curve_and_an_old_one_is_refused():
    def fresh():
        opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
        return Schedule(opt, "cosine", epochs=4, updates_per_epoch=5, warmup_epochs=0.5, min_lr_ratio=0.05)

    a = fresh()
    _lrs(a, 7)
    state = a.state_dict()
    rest = _lrs(a, 10)
    b = fresh()
    b.load_state_dict(state)      # (the lr itself comes back with the optimizer's state in last.pt)
    assert _lrs(b, 10)[1:] == rest[1:]
    with pytest.raises(CxrltError, match="earlier version of the trainer; use --force"):
        fresh().load_state_dict({"base_lrs": [1e-3], "last_epoch": 7, "_step_count": 8})

