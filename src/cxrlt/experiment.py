"""Where an experiment's files live, and what a checkpoint must agree on with the recipe using it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrlt.config import load_config
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, project_path


FULL = "full"   # the full-data fit's "fold": every training image, no held-out part


@dataclass(frozen=True)
class Layout:
    """Where an experiment's files live, from its folder alone: what a recipe, a blend member, the
    web page and a second stage's first stage all use (no recipe needed to find a checkpoint)."""
    dir: Path

    def fold(self, k) -> Path:
        return self.dir / (FULL if k == FULL else f"fold{int(k)}")

    def best(self, k) -> Path:
        """The weights of the best validation epoch: what prediction uses."""
        return self.fold(k) / "best.pt"

    def last(self, k) -> Path:
        """Everything a resume needs, rewritten every epoch."""
        return self.fold(k) / "last.pt"

    def done(self, k) -> Path:
        """Written last by a finished fold: a fold without it is still training (or was killed)."""
        return self.fold(k) / "done.json"

    def finished(self, k) -> bool:
        return self.best(k).is_file() and self.done(k).is_file()

    def finished_folds(self) -> list[int]:
        """The numbered folds whose training finished (best.pt and done.json), in order."""
        return sorted(int(d.name[4:]) for d in self.dir.glob("fold*") if d.name[4:].isdigit() and self.finished(d.name[4:]))

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"


def experiment_dir(cfg) -> Path:
    return project_path(cfg.output_dir) if cfg.get("output_dir") else project_path("experiments") / cfg.name


def layout(cfg) -> Layout:
    return Layout(experiment_dir(cfg))


def recipe_config(recipe: str, overrides=()):
    """A recipe by name (experiments/<name>.yaml) or by path to its YAML file."""
    path = recipe if recipe.endswith((".yaml", ".yml")) else project_path("experiments") / f"{recipe}.yaml"
    return load_config(path, overrides)


def given_split(cfg) -> bool:
    """folds.scheme=given: one model trained on the training CSV, its epoch picked on data.val_csv."""
    return cfg.folds.scheme == "given"


def fold_ids(cfg) -> list[int]:
    """The folds an experiment trains and predicts: 0..folds.k-1, or [0] with folds.scheme=given
    (its held-out part is the validation CSV)."""
    return [0] if given_split(cfg) else list(range(int(cfg.folds.k)))


def experiment_path(name: str) -> Path:
    """An experiment named by a recipe (experiments/<name>/) or given as a folder path."""
    p = project_path(name)
    return p if p.is_dir() and ((p / "oof.csv").is_file() or any(p.glob("fold*"))) else project_path("experiments") / name


def fold_dir(cfg, fold) -> Path:
    return layout(cfg).fold(fold)


def last_checkpoint(cfg, fold: int) -> Path:
    return layout(cfg).last(fold)


def best_checkpoint(cfg, fold: int) -> Path:
    return layout(cfg).best(fold)


def done_marker(cfg, fold: int) -> Path:
    return layout(cfg).done(fold)


# what a checkpoint written before a field existed implicitly had
_LEGACY = {"head": "linear", "task": "multilabel"}
# the keys of a second stage that shape its weights, per method
STAGE2_KEYS = {"crt": (), "tau_norm": (), "fusion": ("grid", "dim", "layers", "heads")}


def head_spec(mcfg) -> str:
    """The head and the options that shape its weights, e.g. `linear`, `csra(csra_lambda=0.1,...)`."""
    from cxrlt.schema import with_defaults

    mcfg = with_defaults("model", dict(mcfg))    # a record from before a key existed: its default
    head = mcfg["head"]
    prefix = {"ml_decoder": "decoder_", "csra": "csra_"}.get(head)
    if prefix is None:
        return head
    keys = [k for k in sorted(mcfg) if k.startswith(prefix)]
    if head == "ml_decoder" and mcfg["class_queries"] == "text":   # learned: as before text queries
        keys += ["class_queries", "text_encoder", "prompt"]
    return f"{head}(" + ",".join(f"{k}={mcfg[k]}" for k in keys) + ")"


def fingerprint(cfg, spec, folds: str) -> dict:
    """What must not change between a checkpoint and the code that resumes or uses it; `folds` is
    the hash of the fold assignment (data.splits.assignment_hash): a fold's model is only valid for
    the held-out set it was trained without. A second stage adds its own part (`stage2`)."""
    fp = dict(model=cfg.model.name, in_chans=int(cfg.model.in_chans), head=head_spec(cfg.model),
              image_size=int(cfg.cache.size), resize=cfg.cache.resize, dataset=spec.name, labels=list(spec.labels),
              folds=folds, task=getattr(spec, "task", "multilabel"))
    s2 = cfg.get("stage2") or {}
    if s2.get("from"):
        method = s2.get("method")
        fp["stage2"] = {"from": s2["from"], "method": method, **{k: s2[k] for k in STAGE2_KEYS.get(method, ())}}
    return fp


def check_fingerprint(saved: dict, current: dict, path, advice: str) -> None:
    """One-line error naming what changed; `advice` says what the user can do about it."""
    if not saved:
        raise CxrltError(f"{display_path(path)}: records no recipe fingerprint (written by an older version); {advice}")
    saved = {**_LEGACY, **saved}
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v]
    if changed:
        raise CxrltError(f"{display_path(path)}: recipe changed since this checkpoint ({'; '.join(changed)[:300]}); {advice}")
