"""Stage 06: per-class decision thresholds (and optional calibration) from OOF predictions.

Thresholds only matter for leaderboards that score F1; mAP ranks probabilities. Fitting on OOF is
optimistic for rare classes, so an honest figure is reported beside it: thresholds fitted on K-1
folds, applied to the held-out fold. `thresholds.calibration` (none | temperature | isotonic) also
fits one calibrator per class and reports ECE before, after (fitted on all OOF) and honestly
(calibrators from the other folds); the calibrators are saved so `apply_calibration` can reuse them.
Thresholds are always fitted on the uncalibrated probabilities.
"""
from __future__ import annotations

import numpy as np

from cxrlt.choices import CALIBRATIONS
from cxrlt.config import Config, rerun_hint
from cxrlt.data.datasets import label_matrix
from cxrlt.data.experiment import Experiment
from cxrlt.data.splits import oof_table
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predictions import read_predictions
from cxrlt.experiment import experiment_dir
from cxrlt.fileio import display_path, stamps
from cxrlt.metrics import f1_per_class
from cxrlt.runtime import is_main_process
from cxrlt.stage import stage_frame, verified


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold t maximising F1 of (p >= t); 0.5 for a class with no positive.

    The precision-recall curve is scikit-learn's `precision_recall_curve`, hand-written for speed
    (one sort of the scores, no argsort; the same counts and divisions, thresholds ascending), so
    the threshold is the same to the bit (tests/test_blend_submit.py). Labels other than 0/1 or
    scores that are not finite go to scikit-learn, which raises its usual error."""
    y, p = np.asarray(y), np.asarray(p)
    if y.sum() == 0:
        return 0.5
    pos = y == 1
    if y.ndim != 1 or y.shape != p.shape or not ((y == 0) | pos).all() or not np.isfinite(p).all():
        from sklearn.metrics import precision_recall_curve

        prec, rec, thr = precision_recall_curve(y, p)
        prec, rec = prec[:-1], rec[:-1]
    else:
        s = np.sort(p)
        new = np.r_[True, s[1:] != s[:-1]]
        thr = s[new]                                                    # distinct scores, ascending
        ps = (len(s) - np.flatnonzero(new)).astype(np.float64)          # images scored >= each
        sp = np.sort(p[pos])
        tps = (len(sp) - np.searchsorted(sp, thr, side="left")).astype(np.float64)   # positives scored >= each
        prec, rec = tps / ps, tps / len(sp)
    f1 = 2 * prec * rec / np.clip(prec + rec, 1e-12, None)
    return float(thr[int(np.argmax(f1))])




def fit_thresholds(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.array([best_threshold(y[:, c], p[:, c]) for c in range(y.shape[1])])


def honest_f1(y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Per-class F1 of each fold's (p >= t), with thresholds t fitted on the other folds; NaN with a
    single held-out part (folds.scheme=given: no other fold to fit on)."""
    if len(np.unique(folds)) < 2:
        return np.full(p.shape[1], np.nan)
    hits = np.zeros_like(p, dtype=bool)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        hits[te] = p[te] >= fit_thresholds(y[tr], p[tr])
    return f1_per_class(y, hits, 0.5)


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """T minimising the binary NLL of sigmoid(logit(p) / T) (Guo et al., 2017), per class."""
    z = _logit(p)

    def nll(log_t):
        q = np.clip(1 / (1 + np.exp(-z / np.exp(log_t))), 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))

    from scipy.optimize import minimize_scalar   # scipy and scikit-learn: imported when used (start-up time)

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


def fit_calibrator(method: str, y: np.ndarray, p: np.ndarray):
    """One class's calibrator, as stored in thresholds.json: a temperature T (temperature), the
    breakpoints {"x": [...], "y": [...]} of an isotonic fit (isotonic), or None (the identity) for
    `none` or a class without a positive."""
    if method == "none" or y.sum() == 0:
        return None
    if method == "temperature":
        return fit_temperature(y, p)
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    return dict(x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())


def calibrate(cal, p: np.ndarray) -> np.ndarray:
    """Apply one class's calibrator (see fit_calibrator) to its probabilities."""
    p = np.asarray(p, np.float64)
    if cal is None:
        return p
    if isinstance(cal, dict):                   # isotonic: piecewise linear, clipped at the ends
        return np.interp(p, cal["x"], cal["y"])
    return 1 / (1 + np.exp(-_logit(p) / cal))


def apply_calibration(probs, result: dict) -> np.ndarray:
    """Calibrate (N, C) probabilities with the calibrators of a thresholds.json dict; columns in the
    order of its `calibrators` (the label order). Without calibrators the probabilities come back."""
    p = np.asarray(probs, np.float64)
    cals = list((result.get("calibrators") or {}).values())
    if not cals:
        return p.copy()
    if p.ndim != 2 or p.shape[1] != len(cals):
        raise CxrltError(f"apply_calibration: probabilities of shape {p.shape}, expected (N, {len(cals)})")
    return np.column_stack([calibrate(cal, p[:, c]) for c, cal in enumerate(cals)])


def fit_calibration(method: str, y: np.ndarray, p: np.ndarray, folds: np.ndarray, names) -> dict:
    """Per-class calibrators fitted on all OOF, and the mean ECE over classes before, after (on the
    same OOF) and honestly (each fold calibrated by calibrators fitted on the other folds)."""
    cals = [fit_calibrator(method, y[:, c], p[:, c]) for c in range(p.shape[1])]
    fitted = np.column_stack([calibrate(cal, p[:, c]) for c, cal in enumerate(cals)])
    honest = p.astype(np.float64)
    if len(np.unique(folds)) < 2:       # folds.scheme=given: no other fold to fit a calibrator on
        honest[:] = np.nan
    for f in np.unique(folds) if len(np.unique(folds)) > 1 else []:
        tr, te = folds != f, folds == f
        for c in range(p.shape[1]):
            honest[te, c] = calibrate(fit_calibrator(method, y[tr, c], p[tr, c]), p[te, c])

    def mean_ece(q):
        if np.isnan(q).any():
            return float("nan")
        return float(np.mean([ece(y[:, c], q[:, c]) for c in range(q.shape[1])]))

    return dict(ECE_before=mean_ece(p), ECE_after=mean_ece(fitted), ECE_honest=mean_ece(honest),
                no_calibrator=[n for n, cal in zip(names, cals) if cal is None],
                calibrators=dict(zip(names, cals)))


def tune_thresholds(cfg: Config, force: bool = False) -> dict:
    """Stage 06 under the experiment's lock: a second run on the same outputs stops at once, naming the first."""
    with stage_frame(experiment_dir(cfg), "thresholds.json", f"experiment '{cfg.name}' (stage 06)", force=force,
                     main=is_main_process()) as frame:
        return _tune_thresholds(cfg, frame)


def predictions_stage(cfg: Config, *extra: str) -> str:
    """The command that redoes the stage which writes this recipe's oof.csv and test.csv: stage 05
    for a blend recipe (blend.members), else stage 04."""
    blend = bool(cfg.blend.members)
    return rerun_hint(cfg, "05_blend.py" if blend else "04_predict.py", *extra)


def _tune_thresholds(cfg: Config, frame) -> dict:
    spec = Experiment.of(cfg).spec
    names, id_col = list(spec.labels), spec.id_col
    if "temperature" in cfg.thresholds:
        raise CxrltError("thresholds.temperature was replaced by thresholds.calibration: none | temperature | isotonic")
    method = str(cfg.thresholds.calibration)
    if method not in CALIBRATIONS:
        raise CxrltError(f"thresholds.calibration '{method}' is not one of {', '.join(CALIBRATIONS)}")
    out = frame.folder
    train = oof_table(cfg, spec)
    oof_path = out / "oof.csv"
    if not oof_path.is_file():
        raise CxrltError(f"{display_path(oof_path)} not found: run {rerun_hint(cfg, '04_predict.py')} "
                         f"(src/05_blend.py for a blend) first")
    # oof.csv as its stage vouched for it: one left by a stage killed before its metrics.json is refused
    verified(out / "metrics.json", ["oof.csv"], predictions_stage(cfg, "--force"))
    oof = read_predictions(oof_path, names, id_col, ids=train[id_col])
    if "fold" not in oof.columns:
        raise CxrltError(f"{display_path(oof_path)}: no fold column")
    inputs = stamps({"oof.csv": oof_path})
    old = frame.vouched(calibration=method, inputs=inputs)
    if old is not None:
        return dict(old, skipped=True, dir=out)
    y, p, folds = label_matrix(spec, train), oof[names].to_numpy(np.float64), oof["fold"].to_numpy()
    t = fit_thresholds(y, p)
    f1_05, f1_fit, f1_honest = f1_per_class(y, p, 0.5), f1_per_class(y, p, t), honest_f1(y, p, folds)
    mean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    result = dict(thresholds=dict(zip(names, t.tolist())), mF1_at_0_5=mean(f1_05), mF1_tuned=mean(f1_fit),
                  mF1_honest=mean(f1_honest), calibration=method, inputs=inputs,
                  per_class={n: dict(threshold=float(t[c]), F1_at_0_5=_num(f1_05[c]), F1_tuned=_num(f1_fit[c]),
                                     F1_honest=_num(f1_honest[c])) for c, n in enumerate(names)})
    if method != "none":
        result.update(fit_calibration(method, y, p, folds, names))   # calibrators last: the long part
    from cxrlt.evaluate.report import plot_f1

    plot_f1(result, out / "f1_per_class.png", title=f"{cfg.name}: F1 per class (OOF)")
    result = frame.seal(result, outputs=[out / "f1_per_class.png"])  # last: a run killed before it is redone
    return dict(result, skipped=False, dir=out)


def _num(x):
    return None if np.isnan(x) else float(x)
