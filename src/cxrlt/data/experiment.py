"""The Experiment: a validated recipe resolved once per stage. It holds what every stage used to
re-derive from `cfg` on its own: the dataset spec (presets and overrides resolved to absolute paths
and columns), where the experiment's files live (`experiment.Layout`), the folds it trains. A
stage, a blend member, the web page and a second stage's first stage build it the same way, from a
recipe (`Experiment.of(cfg)`) or from an experiment folder (`Experiment.from_folder(path)`).

`resolve_dataset` is called here and nowhere else in the library.
"""
from __future__ import annotations

import json
from pathlib import Path

from cxrlt import schema
from cxrlt.config import Config, deep_merge, load_yaml, validate
from cxrlt.data.datasets import DatasetSpec, resolve_dataset
from cxrlt.errors import CxrltError
from cxrlt.experiment import Layout, experiment_dir, fold_ids
from cxrlt.fileio import display_path


def _key(cfg) -> str:
    """What the resolved parts depend on: the data section and where the outputs go."""
    return json.dumps([cfg.get("data"), cfg.get("output_dir"), cfg.get("name")], sort_keys=True, default=str)


class Experiment:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.spec: DatasetSpec = resolve_dataset(cfg.data)
        self.layout = Layout(experiment_dir(cfg))
        self._key = _key(cfg)

    @classmethod
    def of(cls, cfg: Config) -> Experiment:
        """The recipe's Experiment, built on first use and kept with the recipe object, so every
        library call of a stage shares one (rebuilt only if the recipe's data section is changed)."""
        exp = cfg.__dict__.get("_experiment")
        if exp is None or exp._key != _key(cfg):
            exp = cls(cfg)
            object.__setattr__(cfg, "_experiment", exp)   # an attribute, not a recipe key (never saved)
        return exp

    @classmethod
    def from_folder(cls, folder: str | Path, recipe: str = "config.yaml") -> Experiment:
        """An experiment from its folder: the resolved recipe it wrote (config.yaml, or stage 04's
        predict_config.yaml), validated against today's schema (keys added since then take their
        defaults), outputs in that folder."""
        folder = Path(folder)
        path = folder / recipe
        if not path.is_file():
            raise CxrltError(f"{display_path(folder)}: not an experiment folder (no {recipe})")
        saved = load_yaml(path.read_text()) or {}
        for k in ("recipe", "overrides"):
            saved.pop(k, None)
        cfg = Config(validate(deep_merge(schema.defaults(), {**saved, "output_dir": str(folder)})))
        cfg["recipe"] = str(path)
        cfg["overrides"] = []
        return cls.of(cfg)

    @property
    def dir(self) -> Path:
        return self.layout.dir

    @property
    def fold_ids(self) -> list[int]:
        return fold_ids(self.cfg)
