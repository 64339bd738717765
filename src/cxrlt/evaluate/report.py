"""Plots of what a person wants to see next to the numbers (matplotlib PNGs)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cxrlt.fileio import save_figure  # noqa: E402

GROUP_COLORS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}


def plot_per_class_ap(result: dict, path: str | Path, title: str = "") -> Path:
    """Per-class AP bars, ordered by training frequency, coloured by head/medium/tail."""
    rows = sorted(result["per_class"].items(), key=lambda kv: -kv[1]["train_prevalence"])
    fig, ax = plt.subplots(figsize=(max(8, 0.38 * len(rows)), 4.2))
    for i, (name, r) in enumerate(rows):
        ax.bar(i, r["AP"] if r["AP"] is not None else 0, color=GROUP_COLORS[r["group"]],
               hatch="//" if r["AP"] is None else None)
    ax.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=75, ha="right", fontsize=8)
    ax.set_ylabel("average precision"), ax.set_ylim(0, 1), ax.grid(axis="y", alpha=0.3)
    for g, c in GROUP_COLORS.items():
        v = result["groups"].get(g)
        ax.bar(0, 0, color=c, label=f"{g} (mAP {v:.3f})" if v == v else g)
    ax.axhline(result["mAP"], color="k", ls="--", lw=1, label=f"mAP {result['mAP']:.3f}")
    ax.legend(fontsize=8), ax.set_title(title)
    return save_figure(path, fig)


def plot_pr_curves(y, p, names, train_positives, path: str | Path, title: str = "", n: int = 6) -> Path:
    """Precision-recall curves of the n rarest classes (by training frequency) that have positives."""
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_curve

    order = [c for c in np.argsort(train_positives) if np.asarray(y)[:, c].sum() > 0][:n]
    fig, ax = plt.subplots(figsize=(6, 4.6))
    for c in order:
        prec, rec, _ = precision_recall_curve(y[:, c], p[:, c])
        ax.plot(rec, prec, label=f"{names[c]} (AP {average_precision_score(y[:, c], p[:, c]):.3f}, "
                                 f"{int(np.asarray(y)[:, c].sum())} pos)")
    ax.set_xlabel("recall"), ax.set_ylabel("precision"), ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7), ax.grid(alpha=0.3), ax.set_title(title)
    return save_figure(path, fig)


def plot_f1(result: dict, path: str | Path, title: str = "") -> Path:
    """Per-class F1 at 0.5, at fitted thresholds, and honestly (thresholds from the other folds)."""
    import numpy as np

    names = list(result["per_class"])
    fig, ax = plt.subplots(figsize=(max(8, 0.38 * len(names)), 4.2))
    x = np.arange(len(names))
    for i, (key, label) in enumerate((("F1_at_0_5", f"at 0.5 (mF1 {result['mF1_at_0_5']:.3f})"),
                                      ("F1_tuned", f"tuned, fitted (mF1 {result['mF1_tuned']:.3f})"),
                                      ("F1_honest", f"tuned, honest (mF1 {result['mF1_honest']:.3f})"))):
        ax.bar(x + (i - 1) * 0.27, [result["per_class"][n][key] or 0 for n in names], 0.27, label=label)
    ax.set_xticks(x, names, rotation=75, ha="right", fontsize=8)
    ax.set_ylabel("F1"), ax.set_ylim(0, 1), ax.legend(fontsize=8), ax.grid(axis="y", alpha=0.3), ax.set_title(title)
    return save_figure(path, fig)
