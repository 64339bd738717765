"""Checkpoints of one fold (timm train.py's `last` + `best`), written atomically by the main process.

`save_last` and `restore` are each other's mirror, built from one list of parts, so nothing saved
is forgotten on resume (or resumed from nowhere). best.pt holds only what prediction needs.
"""
from __future__ import annotations

from pathlib import Path

from cxrlt.experiment import check_fingerprint
from cxrlt.models.checkpoint import load, rng_state, save, set_rng_state


def write_best(path: Path, state: dict, *, weights: str, arch: dict | None, epoch: int, metrics: dict,
               fingerprint: dict, init: str, mean: float, std: float) -> None:
    """best.pt, the one writer for first and second stages: the weights to predict with (`weights`:
    ema, raw or tau_norm), the model description that rebuilds them (models.checkpoint.load_model),
    the epoch and its figures, the recipe fingerprint, where the weights started, input statistics."""
    save(dict(model=state, weights=weights, arch=arch, epoch=epoch, metrics=metrics, fingerprint=fingerprint,
              init=init, mean=mean, std=std), path)


class CheckpointSaver:
    def __init__(self, last: Path, best: Path, fingerprint: dict, net, ema, optimizer, scheduler, scaler,
                 mean: float, std: float, config: dict, arch: dict | None = None, best_state=None):
        """arch: the model description best.pt carries (models.checkpoint.load_model); best_state: a
        function giving the whole model's state for best.pt when `net` is only its trained part
        (a second stage's classifier or fusion over a frozen backbone)."""
        self.last, self.best = Path(last), Path(best)
        self.arch, self.best_state = arch, best_state
        self.fingerprint, self.mean, self.std, self.config = fingerprint, mean, std, config
        # stateful parts: name -> object with state_dict()/load_state_dict() (None: not used in this run)
        self.parts = dict(model=net, ema=ema, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        self.eval_net = ema.module if ema is not None else net
        self.init = getattr(net, "init_source", "unknown")   # where the weights started (models.factory)

    def save_last(self, epoch: int, best: float, history: list[dict]) -> None:
        """Everything a resume needs: every part's state, the epoch just finished, the RNG state."""
        state = {k: (p.state_dict() if p is not None else None) for k, p in self.parts.items()}
        save(dict(state, epoch=epoch, best=best, history=history, rng=rng_state(), init=self.init,
                  fingerprint=self.fingerprint, config=self.config), self.last)

    def restore(self, advice: str) -> tuple[int, list[dict], float] | None:
        """Load last.pt into every part; returns (first epoch to run, history, best) or None if absent."""
        if not self.last.is_file():
            return None
        ck = load(self.last)
        check_fingerprint(ck["fingerprint"], self.fingerprint, self.last, advice)
        for k, p in self.parts.items():
            if p is not None and ck.get(k) is not None:
                p.load_state_dict(ck[k])
        set_rng_state(ck["rng"])
        self.init = ck.get("init", self.init)   # a resumed fold started where its first epoch did
        return ck["epoch"] + 1, ck["history"], ck["best"]

    def save_best(self, epoch: int, metrics: dict) -> None:
        """The weights that are validated (EMA when on), self-described for prediction."""
        state = self.best_state() if self.best_state is not None else self.eval_net.state_dict()
        write_best(self.best, state, weights="ema" if self.parts["ema"] is not None else "raw", arch=self.arch,
                   epoch=epoch, metrics=metrics, fingerprint=self.fingerprint, init=self.init, mean=self.mean,
                   std=self.std)
