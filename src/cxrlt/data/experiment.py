"""The Experiment: a validated recipe resolved once per stage. It holds what every stage used to
re-derive from `cfg` on its own: the dataset spec (presets and overrides resolved to absolute paths
and columns), where the experiment's files live (`experiment.Layout`), the folds it trains. A
stage, a blend member, the web page and a second stage's first stage build it the same way, from a
recipe (`Experiment.of(cfg)`) or from an experiment folder (`Experiment.from_folder(path)`).
It reads the training table and folds once (`training()`, kept while the CSVs and the folds file
are unchanged) and gives the fold-assignment hash (`assignment`) and the fingerprint a checkpoint
must agree on (`fingerprint`).

`resolve_dataset` is called here and nowhere else in the library.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt import schema
from cxrlt.config import Config, deep_merge, load_yaml, validate
from cxrlt.data.datasets import DatasetSpec, resolve_dataset
from cxrlt.errors import CxrltError
from cxrlt.experiment import FULL, Layout, experiment_dir, fingerprint, fold_ids, given_split
from cxrlt.fileio import display_path, stamps


def _key(cfg) -> str:
    """What the resolved parts depend on: the data section and where the outputs go."""
    return json.dumps([cfg.get("data"), cfg.get("output_dir"), cfg.get("name")], sort_keys=True, default=str)


@dataclass(frozen=True)
class TrainingTable:
    """The rows an experiment trains on (the recipe's views), checked against the image cache:
    the table, each row's cached file, its labels and its fold (-1: trained on by every model with
    folds.scheme=given)."""
    df: pd.DataFrame
    files: list
    y: np.ndarray
    fold_of: np.ndarray
    id_col: str

    @property
    def ids(self):
        return self.df[self.id_col]

    def split(self, fold) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, held-out rows) of `fold`; FULL: every row, nothing held out."""
        if fold == FULL:
            return np.arange(len(self.df)), np.zeros(0, int)
        return np.flatnonzero(self.fold_of != fold), np.flatnonzero(self.fold_of == fold)

    def assignment(self, fold=None) -> str:
        """What a model of `fold` was trained without: the fold assignment's hash, or for the
        full-data fit `full:<hash of the ids>`."""
        from cxrlt.data.splits import assignment_hash, full_assignment

        return full_assignment(self.ids) if fold == FULL else assignment_hash(self.ids, self.fold_of)


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

    def _inputs(self) -> list:
        """What the training table is read from: its stamps key the copy kept in memory."""
        from cxrlt.data.folds import folds_path

        paths = [self.spec.train_csv, self.spec.val_csv if given_split(self.cfg) else folds_path(self.cfg, self.spec)]
        return [stamps({"p": p})["p"] if p is not None and Path(p).is_file() else None for p in paths]

    def training(self) -> TrainingTable:
        """The training table, its cached files, labels and folds (data.splits.training_data), read
        on first use and kept while the CSVs and the folds file are unchanged."""
        from cxrlt.data.splits import training_data

        key = self._inputs()
        if self.__dict__.get("_table_key") != key:
            spec, df, files, y, fold_of = training_data(self.cfg, self.spec)
            self._table = TrainingTable(df, files, y, fold_of, spec.id_col)
            self._table_key = key
        return self._table

    def assignment(self, fold=None) -> str:
        """The fold assignment's hash as the folds file is now (no image-cache check: cheap, what a
        finished fold is checked against before anything is read); fold=FULL: the full-data fit's.
        Kept, like the table, while the CSVs and the folds file are unchanged."""
        from cxrlt.data.splits import current_assignment, current_full_assignment

        inputs = self._inputs()
        key = (fold == FULL, json.dumps(inputs))
        memo = self.__dict__.setdefault("_assignments", {})
        if key not in memo:
            if self.__dict__.get("_table_key") == inputs:
                memo[key] = self._table.assignment(fold)
            else:
                memo[key] = (current_full_assignment(self.cfg, self.spec) if fold == FULL
                             else current_assignment(self.cfg, self.spec))
        return memo[key]

    def fingerprint(self, fold=None) -> dict:
        """What a checkpoint of `fold` must agree on with this recipe (experiment.fingerprint)."""
        return fingerprint(self.cfg, self.spec, self.assignment(fold))

    @property
    def dir(self) -> Path:
        return self.layout.dir

    @property
    def fold_ids(self) -> list[int]:
        return fold_ids(self.cfg)
