"""Stage 06: per-class decision thresholds (and optional temperature scaling) from OOF predictions.

Thresholds only matter for leaderboards that score F1; mAP ranks probabilities. Fitting on OOF is
optimistic for rare classes, so an honest figure is reported beside it: thresholds fitted on K-1
folds, applied to the held-out fold.
"""
from __future__ import annotations

import json

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import precision_recall_curve

from cxrlt.config import Config, experiment_dir
from cxrlt.data.datasets import label_matrix, read_split, resolve_dataset
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, write_text
from cxrlt.metrics import f1_per_class
from cxrlt.evaluate.predictions import read_predictions


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold t maximising F1 of (p >= t); 0.5 for a class with no positive."""
    if y.sum() == 0:
        return 0.5
    prec, rec, thr = precision_recall_curve(y, p)
    f1 = 2 * prec[:-1] * rec[:-1] / np.clip(prec[:-1] + rec[:-1], 1e-12, None)
    return float(thr[int(np.argmax(f1))])


def fit_thresholds(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.array([best_threshold(y[:, c], p[:, c]) for c in range(y.shape[1])])


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """T minimising the binary NLL of sigmoid(logit(p) / T) (Guo et al., 2017), per class."""
    z = _logit(p)

    def nll(log_t):
        q = np.clip(1 / (1 + np.exp(-z / np.exp(log_t))), 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of one class (equal-width bins)."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(err)


def tune_thresholds(cfg: Config, force: bool = False) -> dict:
    spec = resolve_dataset(cfg.data)
    names, id_col = list(spec.labels), spec.id_col
    out = experiment_dir(cfg)
    train = read_split(spec, "train", labels="required")
    oof_path = out / "oof.csv"
    if not oof_path.is_file():
        raise CxrltError(f"{display_path(oof_path)} not found: run src/04_predict.py (or src/05_blend.py) first")
    oof = read_predictions(oof_path, names, id_col, ids=train[id_col])
    if "fold" not in oof.columns:
        raise CxrltError(f"{display_path(oof_path)}: no fold column")
    target = out / "thresholds.json"
    if target.is_file() and not force and target.stat().st_mtime_ns > oof_path.stat().st_mtime_ns:
        old = json.loads(target.read_text())
        if old.get("temperature") == bool(cfg.thresholds.temperature):
            return dict(old, skipped=True, dir=out)
    y, p, folds = label_matrix(spec, train), oof[names].to_numpy(), oof["fold"].to_numpy()
    t = fit_thresholds(y, p)
    honest = np.zeros_like(p, dtype=bool)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        honest[te] = p[te] >= fit_thresholds(y[tr], p[tr])
    f1_05, f1_fit, f1_honest = f1_per_class(y, p, 0.5), f1_per_class(y, p, t), f1_per_class(y, honest, 0.5)
    mean = lambda a: float(np.nanmean(a))  # noqa: E731
    result = dict(thresholds=dict(zip(names, t.tolist())), mF1_at_0_5=mean(f1_05), mF1_tuned=mean(f1_fit),
                  mF1_honest=mean(f1_honest), temperature=bool(cfg.thresholds.temperature),
                  per_class={n: dict(threshold=float(t[c]), F1_at_0_5=_num(f1_05[c]), F1_tuned=_num(f1_fit[c]),
                                     F1_honest=_num(f1_honest[c])) for c, n in enumerate(names)})
    if cfg.thresholds.temperature:
        temps = np.array([fit_temperature(y[:, c], p[:, c]) for c in range(len(names))])
        cal = 1 / (1 + np.exp(-_logit(p) / temps))
        result.update(temperatures=dict(zip(names, temps.tolist())),
                      ECE_before=float(np.mean([ece(y[:, c], p[:, c]) for c in range(len(names))])),
                      ECE_after=float(np.mean([ece(y[:, c], cal[:, c]) for c in range(len(names))])))
    write_text(target, json.dumps(result, indent=1))
    from cxrlt.evaluate.report import plot_f1

    plot_f1(result, out / "f1_per_class.png", title=f"{cfg.name}: F1 per class (OOF)")
    return dict(result, skipped=False, dir=out)


def _num(x):
    return None if np.isnan(x) else float(x)
