"""Leaderboard metrics: per-class scores averaged over classes (docs/design.md, "Metrics").

AP, AUC and F1 are scikit-learn's `average_precision_score`, `roc_auc_score` and `f1_score`,
hand-written for speed (one sort per class, counts for all classes; equality tested in
tests/test_metrics.py).

A class with no positive in the scored set has no AP: it is left out of every mean and named in
`left_out`. Head / medium / tail groups come from training prevalence.
"""
from __future__ import annotations

import numpy as np


def _sklearn(name: str):
    """A scikit-learn metric, imported when first used (importing sklearn.metrics costs seconds at start-up)."""
    import sklearn.metrics

    return getattr(sklearn.metrics, name)


def roc_auc(y, p) -> float:
    """ROC AUC of one class (both labels present): scikit-learn's `roc_auc_score`, hand-written for
    speed as the Mann-Whitney count (ties count half) from one sort of the negatives; one exact
    division of whole numbers, equal to scikit-learn's trapezoids to 1e-12 (tests/test_metrics.py).
    Labels other than 0/1 or scores that are not finite go to scikit-learn."""
    y, p = np.asarray(y), np.asarray(p, np.float64)
    pos = y == 1
    if y.ndim != 1 or y.shape != p.shape or not ((y == 0) | pos).all() or not np.isfinite(p).all() \
            or pos.all() or not pos.any():
        return float(_sklearn("roc_auc_score")(y, p))
    neg = np.sort(p[~pos])
    sp = p[pos]
    below = np.searchsorted(neg, sp, side="left")
    ties = np.searchsorted(neg, sp, side="right") - below
    return float((2 * below.sum() + ties.sum()) / (2 * len(sp) * len(neg)))


def f1_score(y, p, **kw):
    return _sklearn("f1_score")(y, p, **kw)


def average_precision(y, p) -> float:
    """Average precision of one class: scikit-learn's `average_precision_score` (ties grouped as in
    `precision_recall_curve`), hand-written for speed: one sort of the scores (no argsort), the
    positives' distinct scores and a binary search. At a positive's score s, precision is
    (positives scored >= s) / (images scored >= s); AP is its mean over the positives (a tie group
    of k positives counts k times, scikit-learn's recall step). Equal to scikit-learn to 1e-12
    (tests/test_metrics.py). Labels other than 0/1 or scores that are not finite go to
    scikit-learn itself, which raises its usual error; a class without a positive is NaN here
    (callers leave it out)."""
    y, p = np.asarray(y), np.asarray(p, np.float64)
    pos = y == 1
    if y.ndim != 1 or y.shape != p.shape or not ((y == 0) | pos).all() or not np.isfinite(p).all():
        return float(_sklearn("average_precision_score")(y, p))
    n_pos = int(pos.sum())
    if n_pos == 0:
        return float("nan")
    thr, gain = np.unique(p[pos], return_counts=True)                   # ascending distinct positive scores
    above = len(p) - np.searchsorted(np.sort(p), thr, side="left")      # images scored >= each
    tp = np.ascontiguousarray(np.cumsum(gain[::-1])[::-1])              # positives scored >= each
    return float((gain * (tp / above)).sum() / n_pos)   # blend._MaskedScorer sums the same terms in the same order


def prevalence_groups(counts, n_total) -> list[str]:
    """head > 10 %, medium 1-10 %, tail < 1 % of training images (docs/design.md, "Groups")."""
    out = []
    for c in counts:
        p = c / n_total
        out.append("head" if p > 0.10 else "medium" if p >= 0.01 else "tail")
    return out


def per_class(y: np.ndarray, p: np.ndarray, score=None, need_negatives: bool = False):
    """Per-class scores (NaN where undefined); `score` (y, p) -> float, AP (`average_precision`) by default."""
    score = average_precision if score is None else score
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    # one copy with each class's column contiguous: the per-class work reads it many times
    yt, pt = np.ascontiguousarray(y.T), np.ascontiguousarray(p.T)
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        pos = yt[c].sum()
        if pos == 0 or (need_negatives and pos == len(y)):
            continue
        out[c] = score(yt[c], pt[c])
    return out


def map_score(y, p, empty: float = float("nan")) -> float:
    """mAP alone (AP per class with a positive, averaged); `empty` when no class has a positive."""
    ap = per_class(y, p)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else empty


def f1_per_class(y, p, thresholds) -> np.ndarray:
    """F1 of (p >= threshold) per class with a positive (NaN otherwise): scikit-learn's f1_score
    (zero_division=0), hand-written for speed as its own formula 2 tp / (positives + predicted),
    counted for all classes at once (equal to the last bit: tests/test_metrics.py). Labels other
    than 0/1 go to scikit-learn."""
    y, p = np.asarray(y), np.asarray(p)
    t = np.broadcast_to(np.asarray(thresholds, np.float64), (y.shape[1],))
    out = np.full(y.shape[1], np.nan)
    if not ((y == 0) | (y == 1)).all():
        for c in range(y.shape[1]):
            if y[:, c].sum() > 0:
                out[c] = f1_score(y[:, c], p[:, c] >= t[c], zero_division=0.0)
        return out
    truth, hit = y == 1, p >= t
    positives, predicted = truth.sum(0), hit.sum(0)
    tp = (truth & hit).sum(0)
    has = positives > 0
    out[has] = 2.0 * tp[has] / (positives[has] + predicted[has]).astype(np.float64)
    return out


def _nanmean(a) -> float:
    a = np.asarray(a, np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def mean_ap(y, p, names=None) -> dict:
    """mAP and mAUC (quick form used every epoch)."""
    ap = per_class(y, p)
    auc = per_class(y, p, roc_auc, need_negatives=True)
    names = list(names) if names is not None else [str(i) for i in range(len(ap))]
    return dict(mAP=_nanmean(ap), mAUC=_nanmean(auc), ap=dict(zip(names, ap.tolist())),
                left_out=[n for n, a in zip(names, ap) if not np.isfinite(a)])


def evaluate(y, p, names, train_positives, n_train: int, thresholds=None, groups=None) -> dict:
    """Everything the report shows: mAP, mAUC, mF1 at 0.5 (and at given thresholds), group mAPs,
    and a per-class table. Groups are by training prevalence, unless given (a multiclass task's
    groups by training images, count_groups)."""
    y = np.asarray(y)
    ap = per_class(y, p)
    auc = per_class(y, p, roc_auc, need_negatives=True)
    f1 = f1_per_class(y, p, 0.5)
    groups = list(groups) if groups is not None else prevalence_groups(train_positives, n_train)
    out = dict(mAP=_nanmean(ap), mAUC=_nanmean(auc), mF1=_nanmean(f1),
               left_out=[n for n, a in zip(names, ap) if not np.isfinite(a)], n_images=int(len(y)))
    out["groups"] = {g: _nanmean([a for a, gg in zip(ap, groups) if gg == g]) for g in ("head", "medium", "tail")}
    if thresholds is not None:
        ft = f1_per_class(y, p, thresholds)
        out["mF1_tuned"] = _nanmean(ft)
    out["per_class"] = {
        n: dict(AP=None if np.isnan(ap[c]) else float(ap[c]), AUC=None if np.isnan(auc[c]) else float(auc[c]),
                F1=None if np.isnan(f1[c]) else float(f1[c]), positives=int(y[:, c].sum()),
                train_prevalence=float(train_positives[c] / n_train), group=groups[c])
        for c, n in enumerate(names)}
    return out


def zero_shot_figures(y, p, names, trained_map: float | None = None, agnostic=None, draws: int = 20,
                      seed: int = 0) -> dict:
    """AP of labels scored zero-shot (never trained on) beside chance. Chance is the label's
    prevalence in the scored set (`chance`: their mean), the AP a random score tends to; with few
    positives a random ranking's AP sits a little above it, so `chance_random` is also measured: the
    mean AP of `draws` random scores (seed `seed`). `agnostic` (n,): a label-agnostic score (stage
    04: the mean of the trained classes' probabilities, "how abnormal the film looks"); its AP per
    label (`AP_agnostic`, mean `agnostic`) is the bar for label-specific recognition: a zero-shot
    score that does no better has learnt "abnormal film", not the finding. Labels without a positive
    are left out of the means and named."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    ap, auc = per_class(y, p), per_class(y, p, roc_auc, need_negatives=True)
    prev = y.mean(0) if len(y) else np.full(y.shape[1], np.nan)
    scored = np.isfinite(ap)
    rng, rand = np.random.default_rng(seed), np.full(y.shape[1], np.nan)
    if scored.any():
        rand[scored] = np.mean([per_class(y[:, scored], rng.random((len(y), int(scored.sum())))) for _ in range(draws)], 0)
    agn = per_class(y, np.repeat(np.asarray(agnostic, np.float64)[:, None], y.shape[1], 1)) if agnostic is not None \
        else np.full(y.shape[1], np.nan)
    labels = {n: dict(AP=float(ap[c]), AUC=float(auc[c]), prevalence=float(prev[c]), AP_random=float(rand[c]),
                      AP_agnostic=float(agn[c]), positives=int(y[:, c].sum()),
                      AP_over_chance=float(ap[c] / prev[c]) if scored[c] else float("nan"))
              for c, n in enumerate(names)}
    return dict(labels=labels, mAP=_nanmean(ap), mAUC=_nanmean(auc), chance=_nanmean(np.where(scored, prev, np.nan)),
                chance_random=_nanmean(np.where(scored, rand, np.nan)), agnostic=_nanmean(np.where(scored, agn, np.nan)),
                trained_mAP=trained_map, n_images=int(len(y)), left_out=[n for c, n in enumerate(names) if not scored[c]])


# ----------------------------------------------------------------------------- multiclass (one label per image)
def count_groups(counts, tail_below: int = 100, head_above: int = 1000) -> list[str]:
    """The single-label benchmark's groups by training images per class (Holste et al. 2022):
    head > head_above, medium in [tail_below, head_above], tail < tail_below."""
    return ["head" if c > head_above else "tail" if c < tail_below else "medium" for c in counts]


def class_accuracy(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class accuracy (recall) of class indices `pred` against `true`; NaN for a class absent
    from `true` (bincounts: fast enough for the patient bootstrap of stage 08)."""
    hit = np.bincount(true, weights=(pred == true).astype(float), minlength=n_classes)
    n = np.bincount(true, minlength=n_classes)
    return np.where(n > 0, hit / np.maximum(n, 1), np.nan)


def group_accuracy(acc: np.ndarray, groups) -> tuple[dict, float]:
    """({head, medium, tail: mean accuracy of the group's classes with a figure}, `avg`: the mean of
    the groups that have one)."""
    groups = np.asarray(groups)
    by_group = {g: _nanmean(acc[groups == g]) for g in ("head", "medium", "tail")}
    finite = [v for v in by_group.values() if v == v]
    return by_group, float(np.mean(finite)) if finite else float("nan")


def multiclass_metrics(y, p, names, train_counts, groups=(100, 1000)) -> dict:
    """The benchmark's figures for one labelled split, predictions = argmax of `p`: per-class
    accuracy (recall), head / medium / tail accuracy (mean over the group's classes present) and
    their mean `avg`, `overall` (mean per-class accuracy), accuracy, balanced accuracy and
    macro-F1 (scikit-learn; over the classes present in the split or predicted)."""
    accuracy_score, balanced_accuracy_score = _sklearn("accuracy_score"), _sklearn("balanced_accuracy_score")
    y, p = np.asarray(y), np.asarray(p, np.float64)
    true, pred = y.argmax(1), p.argmax(1)
    acc = class_accuracy(true, pred, y.shape[1])
    grp = count_groups(train_counts, *groups)
    by_group, avg = group_accuracy(acc, grp)
    return dict(accuracy=float(accuracy_score(true, pred)), bAcc=float(balanced_accuracy_score(true, pred)),
                mF1=float(f1_score(true, pred, average="macro", zero_division=0.0)),
                overall=_nanmean(acc), groups=by_group, avg=avg,
                per_class={n: dict(accuracy=None if np.isnan(a) else float(a), images=int(y[:, c].sum()),
                                   train_images=int(train_counts[c]), group=g)
                           for c, (n, a, g) in enumerate(zip(names, acc, grp))},
                n_images=int(len(y)), group_rule=f"head > {groups[1]}, medium {groups[0]}-{groups[1]}, "
                                                 f"tail < {groups[0]} training images")
