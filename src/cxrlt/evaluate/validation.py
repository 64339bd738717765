"""Local validation that predicts the leaderboard: the pooled OOF figure beside the mean and spread
of per-fold figures, a drift warning when they disagree, and figures by view group.

Pooled: one ranking over every out-of-fold image, as a leaderboard scores one model on one test
set. Per fold: each fold model on its own held-out images (a class without a positive in a fold is
left out of that fold's means). When the fold models' score scales differ, pooling mixes scales and
the pooled figure falls below every fold's own; the drift check says so when the per-fold mean mAP
and the pooled mAP differ by more than DRIFT_MARGIN, and names the folds whose mean predicted
probability stands out (more than SCALE_TOLERANCE off the folds' median) with their best epochs.
Not every gap is scale: on small folds the AP of classes with few positives is inflated (a random
ranking of 1 positive among n images has AP ~ ln(n) / n, not 1 / n), so per-fold figures of folds of
a few hundred images sit above a pooled figure over all of them even when the folds agree; the
warning tells the two apart.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxrlt.evaluate.normalise import FoldNormaliser
from cxrlt.fileio import read_table
from cxrlt.metrics import evaluate, map_score
from cxrlt.train.epochs import best_index

METRICS = ("mAP", "mAUC", "mF1", "head", "medium", "tail")
DRIFT_MARGIN = 0.02        # mAP: |per-fold mean - pooled| above this warns
SCALE_TOLERANCE = 0.2      # a fold whose mean probability is > 20 % off the folds' median stands out
VIEW_GROUPS = {"PA": "frontal", "AP": "frontal", "AP_HORIZONTAL": "frontal", "LATERAL": "lateral", "LL": "lateral",
               "L": "lateral"}   # MIMIC-CXR ViewPosition; PadChest Projection (AP_horizontal, L)


def headline(result: dict) -> dict:
    """mAP, mAUC, mF1 at 0.5 and head / medium / tail mAP of an `evaluate` result."""
    vals = {m: result["groups"].get(m) if m in ("head", "medium", "tail") else result.get(m) for m in METRICS}
    return {m: float("nan") if v is None else float(v) for m, v in vals.items()}


def _mean_std(rows: list[dict]) -> tuple[dict, dict]:
    """Per metric: mean and standard deviation (ddof 1) over folds, NaN entries left out."""
    mean, std = {}, {}
    for m in METRICS:
        v = np.array([r[m] for r in rows], np.float64)
        v = v[np.isfinite(v)]
        mean[m] = float(v.mean()) if len(v) else float("nan")
        std[m] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return mean, std


def fold_summary(y, p, folds, names, train_positives, n_train: int, class_groups=None) -> dict:
    """Per-fold figures (each fold's held-out images alone), their mean and std:
    dict(per_fold={k: {metric: value, n_images}}, mean={metric: ...}, std={metric: ...}).
    class_groups: each class's group when not by training prevalence (metrics.evaluate)."""
    y, p, folds = np.asarray(y), np.asarray(p, np.float64), np.asarray(folds)
    per_fold = {}
    for k in np.unique(folds):
        rows = folds == k
        per_fold[int(k)] = dict(headline(evaluate(y[rows], p[rows], names, train_positives, n_train,
                                                  groups=class_groups)),
                                n_images=int(rows.sum()))
    mean, std = _mean_std(list(per_fold.values()))
    return dict(per_fold=per_fold, mean=mean, std=std)


def best_epochs(exp_dir: str | Path, folds) -> dict:
    """{fold: best epoch (1-based)} from fold<k>/done.json, else the best epoch of log.csv by the
    training's own rule (train.epochs.best_index: val_score, balanced accuracy for a multiclass task);
    None where neither exists (a blend)."""
    out = {}
    for k in folds:
        d = Path(exp_dir) / f"fold{int(k)}"
        done, log = d / "done.json", d / "log.csv"
        if done.is_file():
            out[int(k)] = json.loads(done.read_text()).get("best_epoch")
        elif log.is_file() and "val_mAP" in (t := read_table(log)).columns and len(t):
            out[int(k)] = int(t["epoch"].iloc[best_index(t.to_dict("records"))])
        else:
            out[int(k)] = None
    return out


def drift_check(y, pooled_map: float, fold_mean_map: float, scores, folds, names, epochs: dict | None = None,
                margin: float = DRIFT_MARGIN, normalised: str = "none") -> dict:
    """Pooled against per-fold mean mAP, and each fold's score scale (mean predicted probability,
    over all classes and per class) measured on `scores` (the OOF before any fold normalisation).
    `pooled_mAP_rank_normalised` is the pooled mAP of `scores` after per-fold rank normalisation
    (fitted without labels): what removing the scale differences alone gives (on small folds it also
    adds noise at the top of each ranking). When |gap| exceeds `margin`, `warning` is one line: when a
    fold's mean probability stands out, or rank normalisation gains more than half the margin, it
    names those folds, their best epochs and most shifted classes; otherwise the gap is not scale
    (small folds inflate the AP of classes with few positives, or the folds differ)."""
    s, folds = np.asarray(scores, np.float64), np.asarray(folds)
    ks = [int(k) for k in np.unique(folds)]
    by_class = np.array([s[folds == k].mean(0) for k in ks])            # (K, C)
    overall = by_class.mean(1)
    med, med_c = float(np.median(overall)), np.median(by_class, 0)
    off = np.abs(overall / max(med, 1e-12) - 1)
    odd = [i for i in np.argsort(-off) if off[i] > SCALE_TOLERANCE] or [int(np.argmax(off))]
    epochs = epochs or {}
    shift = np.abs(np.log(np.clip(by_class, 1e-12, None) / np.clip(med_c, 1e-12, None)))
    odd_folds = {ks[i]: dict(mean_prob=float(overall[i]), best_epoch=epochs.get(ks[i]),
                             classes={names[c]: [float(by_class[i, c]), float(med_c[c])] for c in np.argsort(-shift[i])[:3]})
                 for i in odd}
    gap = float(fold_mean_map - pooled_map)
    rank_map = map_score(y, FoldNormaliser("rank", s, folds).oof())
    scaled = off.max() > SCALE_TOLERANCE or rank_map - pooled_map > margin / 2
    warning = None
    if np.isfinite(gap) and abs(gap) > margin:
        warning = (f"fold drift: pooled OOF mAP {pooled_map:.4f} vs per-fold mean {fold_mean_map:.4f} "
                   f"(gap {gap:+.4f} > {margin})")
        size = (f"AP of classes with few positives is inflated on folds of ~{len(s) / len(ks):.0f} images, or the "
                "folds differ; compare the pooled figure with a large test set")
        if scaled:
            named = "; ".join(
                f"fold {k}: mean prob {o['mean_prob']:.3f} vs median {med:.3f}"
                + (f", best epoch {o['best_epoch']}" if o["best_epoch"] is not None else "")
                + " (" + ", ".join(f"{n} {a:.3f} vs {b:.3f}" for n, (a, b) in o["classes"].items()) + ")"
                for k, o in odd_folds.items())
            fix = ("set predict.oof_normalise" if normalised == "none"
                   else f"the OOF is already {normalised}-normalised, so the rest is not scale: {size}")
            warning += (f": the fold models' score scales differ; {named}; per-fold rank normalisation alone gives "
                        f"{rank_map:.4f}; {fix}")
        else:
            warning += f", not from score scales (per-fold rank normalisation: {rank_map:.4f}): {size}"
    return dict(gap=gap, margin=margin, scale_drift=bool(scaled), fold_mean_prob={k: float(v) for k, v in zip(ks, overall)},
                median_prob=med, odd_folds=odd_folds, pooled_mAP_rank_normalised=rank_map, warning=warning)


def view_groups(views) -> np.ndarray:
    """frontal (PA, AP, AP_horizontal), lateral (LATERAL, LL, L) or other, per image."""
    return np.array([VIEW_GROUPS.get(str(v).strip().upper(), "other") if isinstance(v, str) else "other"
                     for v in views], dtype=object)


def view_figures(y, p, groups, names, train_positives, n_train: int, folds=None, class_groups=None) -> dict:
    """Figures per view group present: {group: dict(n_images, pooled={metric}, [fold_mean, fold_std])}."""
    y, p, groups = np.asarray(y), np.asarray(p, np.float64), np.asarray(groups)
    out = {}
    for g in ("frontal", "lateral", "other"):
        rows = groups == g
        if not rows.any():
            continue
        r = dict(n_images=int(rows.sum()), pooled=headline(evaluate(y[rows], p[rows], names, train_positives, n_train,
                                                                    groups=class_groups)))
        if folds is not None:
            f = fold_summary(y[rows], p[rows], np.asarray(folds)[rows], names, train_positives, n_train, class_groups)
            r.update(fold_mean=f["mean"], fold_std=f["std"])
        out[g] = r
    return out


def _f(v, spec=".4f") -> str:
    return "-" if v is None or not np.isfinite(v) else format(v, spec)


def figure_lines(r: dict, indent: str = "  ") -> list[str]:
    """Summary lines of a metrics.json: per metric the pooled OOF figure, the per-fold mean ± std
    and the development figure (where labelled, kept apart); mAP per view group; the drift warning."""
    fold, dev = r.get("folds") or {}, r.get("development") or {}
    mean, std = fold.get("mean", {}), fold.get("std", {})
    pooled, devh = headline(r), headline(dev) if dev else {}
    lines = [f"{indent}{'':8s}{'pooled OOF':>11s}  {'folds mean ± std':>17s}" + ("  development" if dev else "")]
    for m in METRICS:
        lines.append(f"{indent}{'mF1@0.5' if m == 'mF1' else m:8s}{_f(pooled[m]):>11s}  "
                     f"{_f(mean.get(m)) + ' ± ' + _f(std.get(m)):>17s}" + (f"  {_f(devh[m]):>11s}" if dev else ""))
    dev_views = dev.get("by_view") or {}
    for g, v in (r.get("by_view") or {}).items():
        d = dev_views.get(g)
        lines.append(f"{indent}{g} ({v['n_images']} images): mAP {_f(v['pooled']['mAP'])} pooled, "
                     f"{_f(v.get('fold_mean', {}).get('mAP'))} ± {_f(v.get('fold_std', {}).get('mAP'))} folds"
                     + (f"; development {_f(d['pooled']['mAP'])} ({d['n_images']} images)" if d else ""))
    warning = (r.get("drift") or {}).get("warning")
    if warning:
        lines.append(f"{indent}WARNING {warning}")
    return lines
