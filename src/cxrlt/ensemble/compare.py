"""Stage 08: several experiments side by side, over the same folds, and whether their differences are real.

One row per experiment, every figure recomputed from its oof.csv and the training labels: the
pooled OOF figure (one ranking over all images) beside the mean and std of per-fold figures, for
mAP, mAUC, mF1 at 0.5 and head / medium / tail mAP; frontal-only pooled mAP where the preset has a
view column; tuned mF1 measured honestly (per-class thresholds fitted on the other folds, so stage
06 need not have run); development mAP (from metrics.json) where the development CSV is labelled;
training time (sum of `time_s` over fold*/log.csv); model size in millions of parameters (`params`:
one fold's model, a blend's: one of each member with a weight above 0, summed; `served_params`:
every model one prediction of the web page runs, summed; cxrlt.sizes, read from the best.pt files
without torch). A blend's folder (stage 05: oof.csv, metrics.json, weights.json) is a row like any
other. Against a baseline: the difference in pooled and per-fold mean mAP, the folds in which the
recipe wins, and a paired bootstrap over patients (`compare.bootstrap` resamples, `compare.seed`)
giving the 95 % interval of the difference in mAP and tail mAP; an interval containing 0 is marked
n.d. (not distinguishable). Experiments whose OOF ids or folds differ are refused: their figures
would not be comparable. Writes table.md, table.csv and mAP_by_group.png into compare_<name>/.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.config import Config
from cxrlt.data.datasets import label_matrix, read_split
from cxrlt.data.experiment import Experiment
from cxrlt.data.splits import oof_table, training_counts
from cxrlt.ensemble.thresholds import honest_f1
from cxrlt.errors import CxrltError
from cxrlt.evaluate.bootstrap import bootstrap_ap, check_count, distinguishable, interval, subset_map
from cxrlt.evaluate.predictions import read_predictions
from cxrlt.evaluate.validation import METRICS, best_epochs, drift_check, fold_summary, headline, view_groups
from cxrlt.experiment import experiment_dir, recipe_config
from cxrlt.fileio import display_path, project_path, read_table, save_figure, write_csv, write_text
from cxrlt.metrics import evaluate, map_score, prevalence_groups
from cxrlt.sizes import model_size
from cxrlt.stage import stage_frame, verified

FIGURES = [c for m in METRICS for c in (m, f"{m}_folds", f"{m}_folds_std")]
DIFFS = ["d_mAP", "d_mAP_lo", "d_mAP_hi", "d_mAP_real", "d_mAP_folds", "folds_won",
         "d_tail", "d_tail_lo", "d_tail_hi", "d_tail_real"]
SIZES = ["params", "served_params"]          # millions; after the older columns, which keep their places
COLUMNS = ["recipe", *FIGURES, "frontal", "mF1_honest", "dev_mAP", "train_min", *DIFFS, "drift", *SIZES]
NOTE = ("OOF figures over the same folds: pooled (one ranking over all images) and, in brackets, mean ± std of the "
        "per-fold figures. head / medium / tail: mAP of classes with >10 %, 1-10 %, <1 % training prevalence; "
        "frontal: pooled mAP of PA/AP images; mF1_honest: per-class thresholds fitted on the other folds; "
        "dev_mAP: development set (never fitted on); '-': not available; train_min: training minutes summed "
        "over folds (fold*/log.csv time_s; a second stage: feature cache + training, from done.json); params: millions "
        "of parameters of one fold's model (a blend: one model of each member with a weight above 0, summed); "
        "served_params: of every model one prediction of the web page runs (every finished fold, the full-data fit "
        "where predict.use_full_fit takes it; a blend: of its members), summed")
DIFF_NOTE = ("d_*: minus the baseline, pooled; 95 % CI: paired bootstrap over patients ({n} resamples, seed {seed}), "
             "n.d.: the interval contains 0, not distinguishable; d_mAP_folds: difference of per-fold mean mAP; "
             "won: folds in which the recipe's own mAP beats the baseline's")


def _float(x) -> float:
    return float("nan") if x is None else float(x)


def train_minutes(exp: Path) -> float:
    """Training time of an experiment, summed over its folds: a second stage's done.json seconds
    (feature cache + training), else the `time_s` of the fold's log.csv (NaN without either)."""
    total, seen = 0.0, False
    for fold in sorted(exp.glob("fold*")):
        done, log = fold / "done.json", fold / "log.csv"
        secs = (json.loads(done.read_text()).get("seconds") or {}).get("total") if done.is_file() else None
        if secs is not None:
            total, seen = total + float(secs), True
        elif log.is_file() and "time_s" in (df := read_table(log)).columns:
            total, seen = total + float(df["time_s"].sum()), True
    return total / 60 if seen else float("nan")


def _vouched(cfg: Config, exp: Path, files: list[str], rerun: str) -> dict:
    """metrics.json of a recipe after checking that it vouches for `files` as they are now (a stage
    04/05 killed after rewriting them, before its metrics.json, is a one-line error)."""
    try:
        return verified(exp / "metrics.json", [f for f in files if f == "oof.csv" or (exp / f).is_file()], rerun)
    except CxrltError as e:
        raise CxrltError(f"recipe '{cfg.name}': {e}") from None


def _millions(n: int | None) -> float:
    return float("nan") if n is None else n / 1e6


def experiment_row(cfg: Config, n_boot: int = 0, seed: int = 0) -> tuple[dict, pd.DataFrame, dict]:
    """One experiment's figures; its OOF id and fold columns (for the same-folds check); and the
    per-fold mAPs and, with n_boot, per-class AP on each patient resample (for the differences)."""
    spec = Experiment.of(cfg).spec
    exp = experiment_dir(cfg)
    stage = "05_blend" if cfg.blend.members else "04_predict"
    for f in ("metrics.json", "oof.csv"):
        if not (exp / f).is_file():
            raise CxrltError(f"recipe '{cfg.name}': {display_path(exp / f)} not found; run "
                             f"src/{stage}.py --config {display_path(cfg.recipe)}")
    m = _vouched(cfg, exp, ["oof.csv"], f"src/{stage}.py --config {display_path(cfg.recipe)} --force")
    train = oof_table(cfg, spec)   # the OOF rows: a specialist's views; the validation CSV with folds.scheme=given
    oof = read_predictions(exp / "oof.csv", spec.labels, spec.id_col, ids=train[spec.id_col])
    if "fold" not in oof.columns:
        raise CxrltError(f"{display_path(exp / 'oof.csv')}: no fold column")
    names = list(spec.labels)
    y, p, folds = label_matrix(spec, train), oof[names].to_numpy(np.float64), oof["fold"].to_numpy()
    pos, n = training_counts(cfg, spec)      # groups from the training CSV, whatever rows the OOF covers
    pooled, fs = headline(evaluate(y, p, names, pos, n)), fold_summary(y, p, folds, names, pos, n)
    front = view_groups(train[spec.view_col]) == "frontal" if spec.view_col in train.columns else np.zeros(len(y), bool)
    frontal = map_score(y[front], p[front]) if front.any() else float("nan")
    drift = drift_check(y, pooled["mAP"], fs["mean"]["mAP"], p, folds, names, best_epochs(exp, fs["per_fold"]),
                        normalised=(m.get("settings") or {}).get("oof_normalise", "none"))
    row = dict(recipe=cfg.name, **{c: v for mm in METRICS for c, v in
                                   ((mm, pooled[mm]), (f"{mm}_folds", fs["mean"][mm]), (f"{mm}_folds_std", fs["std"][mm]))},
               frontal=frontal, mF1_honest=float(np.nanmean(honest_f1(y, p, folds))),
               dev_mAP=_float((m.get("development") or {}).get("mAP")), train_min=train_minutes(exp),
               drift=drift["warning"] or "")
    size = model_size(exp)
    row.update(params=_millions(size.params), served_params=_millions(size.served))
    extra = dict(fold_map={k: v["mAP"] for k, v in fs["per_fold"].items()},
                 ap=bootstrap_ap(y, {"p": p}, train[spec.patient_col], n_boot, seed)["p"] if n_boot else None,
                 tail=np.array(prevalence_groups(pos, n)) == "tail")
    return row, oof[[spec.id_col, "fold"]].rename(columns={spec.id_col: "id"}), extra


def _differences(row: dict, base: dict, x: dict, xb: dict) -> dict:
    """The d_* columns of one row against the baseline's (x: experiment_row's extras)."""
    d = dict(d_mAP=row["mAP"] - base["mAP"], d_mAP_folds=row["mAP_folds"] - base["mAP_folds"],
             d_tail=row["tail"] - base["tail"],
             folds_won=int(sum(v > xb["fold_map"][k] for k, v in x["fold_map"].items())))
    for key, cols in (("d_mAP", None), ("d_tail", x["tail"])):
        lo = hi = real = float("nan")
        if x["ap"] is not None and row["recipe"] != base["recipe"]:
            lo, hi = interval(subset_map(x["ap"], cols) - subset_map(xb["ap"], cols))
            real = distinguishable(lo, hi)
            real = float("nan") if real is None else real
        d.update({f"{key}_lo": lo, f"{key}_hi": hi, f"{key}_real": real})
    return d


def compare_experiments(cfgs: list[Config], out: str | Path, baseline: str | None = None) -> dict:
    """Compare experiments (their resolved recipes; outputs at experiment_dir(cfg)) into folder `out`.
    `compare.bootstrap` and `compare.seed` come from the first recipe.

    Returns dict(table=DataFrame in COLUMNS order, markdown=str, dir=Path, files=[paths]).
    """
    out = Path(out)
    with stage_frame(out, None, f"comparison {out.name} (stage 08)"):
        return _compare_experiments(cfgs, out, baseline)


def _compare_experiments(cfgs: list[Config], out: Path, baseline: str | None) -> dict:
    names = [c.name for c in cfgs]
    if not cfgs:
        raise CxrltError("no recipes to compare")
    if len(set(names)) != len(names):
        raise CxrltError(f"recipes named twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    baseline = baseline or names[0]
    if baseline not in names:
        raise CxrltError(f"baseline '{baseline}' is not one of the compared recipes ({', '.join(names)})")
    if Experiment.of(cfgs[0]).spec.multiclass:      # the single-label benchmark's layout
        return benchmark_table(cfgs, out, baseline)
    cc = cfgs[0].compare
    n_boot, seed = check_count("compare.bootstrap", cc.bootstrap), check_count("compare.seed", cc.seed)
    rows, extras, first = [], {}, None
    for cfg in cfgs:
        row, folds, extra = experiment_row(cfg, n_boot, seed)
        if first is None:
            first = (cfg.name, folds)
        elif not np.array_equal(folds["id"].to_numpy(), first[1]["id"].to_numpy()):
            raise CxrltError(f"recipes '{first[0]}' and '{cfg.name}': OOF ids differ or are in another order")
        elif not np.array_equal(folds["fold"].to_numpy(), first[1]["fold"].to_numpy()):
            raise CxrltError(f"recipes '{first[0]}' and '{cfg.name}': OOF folds differ (made with other folds?); "
                             "only experiments over the same folds compare")
        rows.append(row)
        extras[cfg.name] = extra
    base = next(r for r in rows if r["recipe"] == baseline)
    table = pd.DataFrame([dict(r, **_differences(r, base, extras[r["recipe"]], extras[baseline])) for r in rows])
    table = table[COLUMNS]
    out = Path(out)
    md = markdown_report(table, baseline, n_boot, seed, len(extras[baseline]["fold_map"]))
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
    root = project_path(cfgs[0].compare.dir)
    return compare_experiments(cfgs, root / f"compare_{name}", baseline)


def _cell(col: str, v) -> str:
    if isinstance(v, str):
        return v
    if v is None or not np.isfinite(v):
        return "-"
    if col in SIZES:
        return _significant(v)
    return f"{v:.1f}" if col == "train_min" else f"{v:+.4f}" if col.startswith("d_") else f"{v:.4f}"


def _significant(v: float, digits: int = 3) -> str:
    """`v` to `digits` significant digits without an exponent: 0.000330, 0.375, 11.7, 1234."""
    if v <= 0:
        return f"{v:.0f}"
    magnitude = int(np.floor(np.log10(float(f"{v:.{digits}g}"))))     # after rounding: 99.99 -> 100
    return f"{v:.{max(0, digits - 1 - magnitude)}f}"


def markdown_table(table: pd.DataFrame) -> str:
    """A markdown table with aligned columns: 4 decimals, signed differences, minutes to 0.1,
    millions of parameters to 3 significant digits."""
    cells = [[_cell(c, v) for c, v in zip(table.columns, r)] for r in table.itertuples(index=False)]
    w = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(table.columns)]

    def line(vals):                                          # recipe left-aligned, numbers right-aligned
        return "| " + " | ".join(v.ljust(w[i]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(vals)) + " |"

    rule = "|" + "|".join(("-" * (n + 1) + ":") if i else ("-" * (n + 2)) for i, n in enumerate(w)) + "|"
    return "\n".join([line(list(table.columns)), rule, *map(line, cells)])


def _pair(r, m: str) -> str:
    """'pooled (mean ± std)' of one metric."""
    if not np.isfinite(r[m]):
        return "-"
    return f"{_cell(m, r[m])} ({_cell(m, r[m + '_folds'])} ± {_cell(m, r[m + '_folds_std'])})"


def _ci(r, key: str) -> str:
    lo, hi, real = r[f"{key}_lo"], r[f"{key}_hi"], r[f"{key}_real"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "-"
    return f"[{lo:+.4f}, {hi:+.4f}]" + ("" if real == 1 else " n.d.")


def markdown_report(table: pd.DataFrame, baseline: str, n_boot: int, seed: int, n_folds: int) -> str:
    """Two markdown tables (figures; differences against the baseline), notes and drift warnings."""
    figs = pd.DataFrame({"recipe": table.recipe,
                         **{("mF1@0.5" if m == "mF1" else m): [_pair(r, m) for _, r in table.iterrows()] for m in METRICS},
                         **{c: table[c] for c in ("frontal", "mF1_honest", "dev_mAP", "train_min", *SIZES)}})
    diffs = pd.DataFrame({"recipe": table.recipe, "d_mAP": table.d_mAP,
                          "d_mAP 95 % CI": [_ci(r, "d_mAP") for _, r in table.iterrows()],
                          "d_mAP_folds": table.d_mAP_folds, "won": [f"{int(w)}/{n_folds}" for w in table.folds_won],
                          "d_tail": table.d_tail, "d_tail 95 % CI": [_ci(r, "d_tail") for _, r in table.iterrows()]})
    diffs = diffs[diffs.recipe != baseline]
    parts = [markdown_table(figs), "", f"{NOTE}.", ""]
    if len(diffs):
        parts += [f"Against the baseline {baseline}:", "", markdown_table(diffs), "",
                  DIFF_NOTE.format(n=n_boot, seed=seed) + ".", ""]
    parts += [f"baseline: {baseline}."]
    parts += [f"WARNING {r.recipe}: {r.drift}" for r in table.itertuples() if r.drift]
    return "\n".join(parts) + "\n"


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


# ----------------------------------------------------------------------------- the single-label benchmark's table
BENCH_COLUMNS = ["recipe", "head", "medium", "tail", "avg", "overall", "mF1", "bAcc", "val_bAcc", "d_avg", "d_avg_lo",
                 "d_avg_hi", "d_bAcc", "d_bAcc_lo", "d_bAcc_hi", "train_min"]
BENCH_NOTE = ("The layout of Holste et al. 2022 (MICCAI DALI), every figure from the argmax of the softmax: head / "
              "medium / tail = mean per-class accuracy of each group on the balanced test set ({dev}; groups by "
              "training images per class: {rule}), avg = their mean, overall = mean per-class accuracy there; mF1 "
              "(macro-F1) and bAcc (balanced accuracy, scikit-learn) on the natural test set ({test}); val_bAcc: the "
              "validation CSV the epoch was picked on (not an honest figure). d_*: minus the baseline, 95 % interval "
              "of a paired bootstrap over patients of that test set ({n} resamples, seed {seed}); n.d.: contains 0")


def benchmark_table(cfgs: list[Config], out: str | Path, baseline: str) -> dict:
    """Stage 08 for data.task=multiclass: the benchmark's table from each recipe's metrics.json and
    predictions, with paired-bootstrap intervals of d_avg (balanced test) and d_bAcc (test)."""
    from cxrlt.metrics import class_accuracy, count_groups, group_accuracy

    cc = cfgs[0].compare
    n_boot, seed = check_count("compare.bootstrap", cc.bootstrap), check_count("compare.seed", cc.seed)
    spec = Experiment.of(cfgs[0]).spec
    names = list(spec.labels)
    pos, _ = training_counts(cfgs[0], spec)
    groups = np.array(count_groups(pos, *spec.group_counts))
    truth = {}
    for split, key in (("dev", "development"), ("test", "test")):
        df = read_split(spec, split, labels="required")
        truth[key] = (df, label_matrix(spec, df).argmax(1))
    rng = np.random.default_rng(seed)
    draws = {}
    for key, (df, _) in truth.items():       # patient resamples shared by every recipe (paired)
        pats = df[spec.patient_col].astype(str).to_numpy()
        uniq, inv = np.unique(pats, return_inverse=True)
        rows = [np.flatnonzero(inv == u) for u in range(len(uniq))]
        draws[key] = [np.concatenate([rows[i] for i in rng.integers(0, len(uniq), len(uniq))]) for _ in range(n_boot)]
    rows, boots, first = [], {}, None
    for cfg in cfgs:
        exp = experiment_dir(cfg)
        mfile = exp / "metrics.json"
        if not mfile.is_file():
            raise CxrltError(f"recipe '{cfg.name}': {display_path(mfile)} not found; run src/04_predict.py --config "
                             f"{display_path(cfg.recipe)}")
        m = _vouched(cfg, exp, ["oof.csv", "development.csv", "test.csv"],
                     f"src/04_predict.py --config {display_path(cfg.recipe)} --force")
        mc = m.get("multiclass") or {}
        missing = [k for k in ("development", "test") if k not in mc]
        if missing:
            raise CxrltError(f"recipe '{cfg.name}': {display_path(mfile)} has no multiclass figures for "
                             f"{' and '.join(missing)} (stage 04 writes them for labelled development and test CSVs; "
                             f"a blend has none)")
        ids = read_table(exp / "oof.csv", spec.id_col, usecols=[spec.id_col])[spec.id_col].tolist()
        if first is None:
            first = (cfg.name, ids)
        elif ids != first[1]:
            raise CxrltError(f"recipes '{first[0]}' and '{cfg.name}': OOF ids differ or are in another order")
        pred = {}
        for key, fname in (("development", "development.csv"), ("test", "test.csv")):
            p = read_predictions(exp / fname, names, spec.id_col, ids=truth[key][0][spec.id_col])
            pred[key] = p[names].to_numpy().argmax(1)
        # per resample: the balanced test's group average, the test's balanced accuracy (mean per-class accuracy)
        boots[cfg.name] = dict(
            avg=np.array([group_accuracy(class_accuracy(truth["development"][1][r], pred["development"][r], len(names)),
                                         groups)[1] for r in draws["development"]]),
            bAcc=np.array([np.nanmean(class_accuracy(truth["test"][1][r], pred["test"][r], len(names)))
                           for r in draws["test"]]))
        dev, test = mc["development"], mc["test"]
        rows.append(dict(recipe=cfg.name, **dev["groups"], avg=dev["avg"], overall=dev["overall"], mF1=test["mF1"],
                         bAcc=test["bAcc"], val_bAcc=mc.get("oof", {}).get("bAcc", float("nan")),
                         train_min=train_minutes(exp)))
    base = next(r for r in rows if r["recipe"] == baseline)
    for r in rows:
        for k in ("avg", "bAcc"):
            r[f"d_{k}"] = r[k] - base[k]
            lo = hi = float("nan")
            if n_boot and r["recipe"] != baseline:
                lo, hi = interval(boots[r["recipe"]][k] - boots[baseline][k])
            r[f"d_{k}_lo"], r[f"d_{k}_hi"] = lo, hi
    table = pd.DataFrame(rows)[BENCH_COLUMNS]
    shown = pd.DataFrame({"recipe": table.recipe, **{c: table[c] for c in ("head", "medium", "tail", "avg", "overall",
                                                                          "mF1", "bAcc", "val_bAcc")},
                          "d_avg": table.d_avg, "d_avg 95 % CI": [_ci_pair(r, "d_avg") for _, r in table.iterrows()],
                          "d_bAcc": table.d_bAcc, "d_bAcc 95 % CI": [_ci_pair(r, "d_bAcc") for _, r in table.iterrows()],
                          "train_min": table.train_min})
    md = "\n".join([
        markdown_table(shown), "",
        BENCH_NOTE.format(dev=display_path(spec.dev_csv), test=display_path(spec.test_csv),
                          rule=f"tail < {spec.group_counts[0]} <= medium <= {spec.group_counts[1]} < head",
                          n=n_boot, seed=seed) + ".", "", f"baseline: {baseline}."]) + "\n"
    out = Path(out)
    files = [write_text(out / "table.md", md), write_csv(out / "table.csv", table),
             plot_benchmark(table, out / "accuracy_by_group.png")]
    return dict(table=table, markdown=md, dir=out, files=files, baseline=baseline)


def _ci_pair(r, key: str) -> str:
    lo, hi = r[f"{key}_lo"], r[f"{key}_hi"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "-"
    return f"[{lo:+.4f}, {hi:+.4f}]" + ("" if lo > 0 or hi < 0 else " n.d.")


def plot_benchmark(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars per recipe: head / medium / tail / avg accuracy (balanced test) and test bAcc."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["head", "medium", "tail", "avg", "bAcc"]
    colors = ["#1f77b4", "#ff7f0e", "#d62728", "#444444", "#2ca02c"]
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(table) + 2), 4.2))
    for i, (k, c) in enumerate(zip(keys, colors)):
        ax.bar(x + (i - 2) * 0.16, np.nan_to_num(table[k].to_numpy(float)), 0.16, color=c,
               label=k if k != "bAcc" else "test bAcc")
    ax.set_xticks(x, table["recipe"], rotation=25, ha="right")
    ax.set_ylabel("accuracy"), ax.set_ylim(0, 1.12), ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=5, loc="upper center")
    ax.set_title("Single-label benchmark: balanced-test accuracy by group, test balanced accuracy")
    return save_figure(path, fig)
