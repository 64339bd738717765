"""Stage 08: several experiments side by side, over the same folds.

One row per experiment: OOF mAP, mAUC and head / medium / tail mAP (from its metrics.json, stage
04 or 05), tuned mF1 measured honestly (per-class thresholds fitted on the other folds, recomputed
here from oof.csv, so stage 06 need not have run), development mAP where the development CSV is
labelled, training time (sum of `time_s` over fold*/log.csv) and the difference in mAP and tail mAP
against a baseline. Experiments whose OOF ids or folds differ are refused: their figures would not
be comparable. Writes table.md, table.csv and mAP_by_group.png into compare_<name>/.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.config import Config, load_config
from cxrlt.data.datasets import label_matrix, read_split, resolve_dataset
from cxrlt.ensemble.thresholds import honest_f1
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predictions import read_predictions
from cxrlt.experiment import experiment_dir
from cxrlt.fileio import display_path, project_path, save_figure, write_csv, write_text

COLUMNS = ["recipe", "mAP", "mAUC", "head", "medium", "tail", "mF1_honest", "dev_mAP", "train_min", "d_mAP", "d_tail"]
NOTE = ("OOF figures over the same folds. head / medium / tail: mAP of classes with >10 %, 1-10 %, <1 % training "
        "prevalence; mF1_honest: per-class thresholds fitted on the other folds; dev_mAP: development set; "
        "'-': not available; train_min: sum of time_s over fold*/log.csv, minutes; d_*: minus the baseline")


def recipe_config(recipe: str, overrides=()) -> Config:
    """A recipe by name (experiments/<name>.yaml) or by path to its YAML file."""
    path = recipe if recipe.endswith((".yaml", ".yml")) else project_path("experiments") / f"{recipe}.yaml"
    return load_config(path, overrides)


def _float(x) -> float:
    return float("nan") if x is None else float(x)


def train_minutes(exp: Path) -> float:
    """Training time of an experiment: sum of `time_s` over its fold*/log.csv (NaN without logs)."""
    logs = sorted(exp.glob("fold*/log.csv"))
    return sum(float(pd.read_csv(f)["time_s"].sum()) for f in logs) / 60 if logs else float("nan")


def experiment_row(cfg: Config) -> tuple[dict, pd.DataFrame]:
    """One experiment's figures, and its OOF id and fold columns (for the same-folds check)."""
    spec = resolve_dataset(cfg.data)
    exp = experiment_dir(cfg)
    stage = "05_blend" if cfg.get("blend", {}).get("members") else "04_predict"
    for f in ("metrics.json", "oof.csv"):
        if not (exp / f).is_file():
            raise CxrltError(f"recipe '{cfg.name}': {display_path(exp / f)} not found; run "
                             f"src/{stage}.py --config {display_path(cfg.recipe)}")
    m = json.loads((exp / "metrics.json").read_text())
    train = read_split(spec, "train", labels="required")
    oof = read_predictions(exp / "oof.csv", spec.labels, spec.id_col, ids=train[spec.id_col])
    if "fold" not in oof.columns:
        raise CxrltError(f"{display_path(exp / 'oof.csv')}: no fold column")
    f1 = honest_f1(label_matrix(spec, train), oof[list(spec.labels)].to_numpy(np.float64), oof["fold"].to_numpy())
    groups = m.get("groups") or {}
    row = dict(recipe=cfg.name, mAP=_float(m["mAP"]), mAUC=_float(m.get("mAUC")),
               **{g: _float(groups.get(g)) for g in ("head", "medium", "tail")},
               mF1_honest=float(np.nanmean(f1)), dev_mAP=_float((m.get("development") or {}).get("mAP")),
               train_min=train_minutes(exp))
    return row, oof[[spec.id_col, "fold"]].rename(columns={spec.id_col: "id"})


def compare_experiments(cfgs: list[Config], out: str | Path, baseline: str | None = None) -> dict:
    """Compare experiments (their resolved recipes; outputs at experiment_dir(cfg)) into folder `out`.

    Returns dict(table=DataFrame in COLUMNS order, markdown=str, dir=Path, files=[paths]).
    """
    names = [c.name for c in cfgs]
    if not cfgs:
        raise CxrltError("no recipes to compare")
    if len(set(names)) != len(names):
        raise CxrltError(f"recipes named twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    baseline = baseline or names[0]
    if baseline not in names:
        raise CxrltError(f"baseline '{baseline}' is not one of the compared recipes ({', '.join(names)})")
    rows, first = [], None
    for cfg in cfgs:
        row, folds = experiment_row(cfg)
        if first is None:
            first = (cfg.name, folds)
        elif not np.array_equal(folds["id"].to_numpy(), first[1]["id"].to_numpy()):
            raise CxrltError(f"recipes '{first[0]}' and '{cfg.name}': OOF ids differ or are in another order")
        elif not np.array_equal(folds["fold"].to_numpy(), first[1]["fold"].to_numpy()):
            raise CxrltError(f"recipes '{first[0]}' and '{cfg.name}': OOF folds differ (made with other folds?); "
                             "only experiments over the same folds compare")
        rows.append(row)
    table = pd.DataFrame(rows)
    base = table.set_index("recipe").loc[baseline]
    table["d_mAP"] = table["mAP"] - base["mAP"]
    table["d_tail"] = table["tail"] - base["tail"]
    table = table[COLUMNS]
    out = Path(out)
    md = markdown_table(table) + f"\n\n{NOTE}; baseline: {baseline}.\n"
    files = [write_text(out / "table.md", md), write_csv(out / "table.csv", table),
             plot_groups(table, out / "mAP_by_group.png")]
    return dict(table=table, markdown=md, dir=out, files=files, baseline=baseline)


def compare_recipes(recipes: list[str], name: str | None = None, baseline: str | None = None,
                    overrides=()) -> dict:
    """Stage 08: recipes by name (or YAML path), outputs in <compare.dir>/compare_<name>/, where
    compare.dir comes from the first recipe (default experiments/) and name defaults to the
    recipe names joined by '-'."""
    cfgs = [recipe_config(r, overrides) for r in recipes]
    if not cfgs:
        raise CxrltError("--recipes lists no recipe")
    name = name or "-".join(c.name for c in cfgs)
    root = project_path(cfgs[0].get("compare", {}).get("dir") or "experiments")
    return compare_experiments(cfgs, root / f"compare_{name}", baseline)


def _cell(col: str, v) -> str:
    if isinstance(v, str):
        return v
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.1f}" if col == "train_min" else f"{v:+.4f}" if col.startswith("d_") else f"{v:.4f}"


def markdown_table(table: pd.DataFrame) -> str:
    """A markdown table with aligned columns: 4 decimals, signed differences, minutes to 0.1."""
    cells = [[_cell(c, v) for c, v in zip(table.columns, r)] for r in table.itertuples(index=False)]
    w = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(table.columns)]

    def line(vals):                                          # recipe left-aligned, numbers right-aligned
        return "| " + " | ".join(v.ljust(w[i]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(vals)) + " |"

    rule = "|" + "|".join(("-" * (n + 1) + ":") if i else ("-" * (n + 2)) for i, n in enumerate(w)) + "|"
    return "\n".join([line(list(table.columns)), rule, *map(line, cells)])


def plot_groups(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: OOF mAP and head / medium / tail mAP for each recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["mAP", "head", "medium", "tail"]
    colors = ["#444444", "#1f77b4", "#ff7f0e", "#d62728"]
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(table) + 2), 4.2))
    for i, (k, c) in enumerate(zip(keys, colors)):
        ax.bar(x + (i - 1.5) * 0.2, np.nan_to_num(table[k].to_numpy(float)), 0.2, color=c, label=k)
    ax.set_xticks(x, table["recipe"], rotation=20, ha="right")
    ax.set_ylabel("OOF mAP"), ax.set_ylim(0, 1), ax.grid(axis="y", alpha=0.3), ax.legend(fontsize=8)
    ax.set_title("OOF mAP by prevalence group")
    return save_figure(path, fig)
