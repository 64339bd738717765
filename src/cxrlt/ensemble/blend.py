"""Stage 05: blend the OOF and test predictions of several experiments (folds x architectures).

A blend recipe lists member experiments (`blend.members`). Their prediction CSVs must have the same
ids in the same order (and the same folds); this is asserted, never assumed. Modes:
`mean` (of probabilities), `rank` (per-class mean of normalised ranks: suits a ranking metric,
but the result is no longer a probability), `fit` (non-negative weights summing to 1 that maximise
OOF mAP). Fitted weights flatter themselves, so an honest figure is reported too: weights fitted on
K-1 folds, scored on the held-out fold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlt.config import Config, save_resolved
from cxrlt.data.datasets import check_task, label_matrix, read_split
from cxrlt.data.experiment import Experiment
from cxrlt.data.splits import oof_table, training_counts
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predictions import read_predictions, write_predictions
from cxrlt.experiment import experiment_dir, experiment_path
from cxrlt.fileio import display_path, read_header, stamps, to_json, write_text
from cxrlt.metrics import evaluate, map_score
from cxrlt.runtime import is_main_process
from cxrlt.stage import stage_frame, verified


def member_dir(name: str) -> Path:
    """A member is an experiment name (experiments/<name>/) or a path to an experiment folder."""
    return experiment_path(name)


def member_file(m: str, fname: str) -> Path:
    """A member's prediction file, after checking that its stage 04 (or 05) vouches for it: a member
    whose stage was killed after rewriting the file, before its metrics.json, is a one-line error."""
    d = member_dir(m)
    path = d / fname
    if not path.is_file():
        raise CxrltError(f"blend member '{m}': {display_path(path)} not found; run src/04_predict.py for it")
    try:
        verified(d / "metrics.json", [fname], "stage 04 for it (src/04_predict.py; src/05_blend.py for a blend)")
    except CxrltError as e:
        raise CxrltError(f"blend member '{m}': {e}") from None
    return path


def load_members(members, labels, id_col, split: str):
    """{member: (N, C) array} of one split, after asserting every member has the same ids, order
    (and, for OOF, the same folds). Returns (ids, folds or None, arrays)."""
    frames = {}
    for m in members:
        fname = {"oof": "oof.csv", "test": "test.csv", "dev": "development.csv"}[split]
        if split == "dev" and not (member_dir(m) / fname).is_file():
            return None
        frames[m] = read_predictions(member_file(m, fname), labels, id_col)
    first_name, first = next(iter(frames.items()))
    for m, df in frames.items():
        if list(df[id_col]) != list(first[id_col]):
            raise CxrltError(f"blend members '{first_name}' and '{m}': {split} ids differ or are in another order")
        if split == "oof" and not df["fold"].equals(first["fold"]):
            raise CxrltError(f"blend members '{first_name}' and '{m}': OOF folds differ (made with other folds?)")
    folds = first["fold"].to_numpy() if split == "oof" else None
    return first[id_col].tolist(), folds, {m: df[list(labels)].to_numpy(np.float64) for m, df in frames.items()}


def zero_shot_columns(members, fname: str, names) -> list[str]:
    """The columns after the trained labels in the first member's `fname` that every member's has
    (zero-shot labels of text-query models), in the first member's order; [] when none."""
    heads = [read_header(p) for m in members if (p := member_dir(m) / fname).is_file()]
    if not heads:
        return []
    extra = [c for c in heads[0][1 + len(names):] if c != "fold"]
    return [c for c in extra if all(c in h for h in heads[1:])]


def rank_normalise(p: np.ndarray) -> np.ndarray:
    """Per-class ranks scaled to [0, 1] (ties share their mean rank)."""
    n = len(p)
    from scipy.stats import rankdata   # here: scipy.stats costs about a second at start-up

    return (rankdata(p, axis=0) - 1) / max(n - 1, 1)


def combine(arrays: list[np.ndarray], weights, mode: str) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    if mode == "rank":
        arrays = [rank_normalise(a) for a in arrays]
    return sum(wi * a for wi, a in zip(w, arrays)) / w.sum()


def _map(y, p) -> float:
    return map_score(y, p, empty=0.0)


def fit_weights(y: np.ndarray, arrays: list[np.ndarray], steps: int = 40) -> np.ndarray:
    """Greedy forward selection with replacement (Caruana et al., 2004) maximising mAP.

    Hand-written because scikit-learn has no ensemble selection over fixed predictions. It starts
    from the best single member, so on the data it is fitted on it never scores below that member;
    weights are counts / steps: non-negative, summing to 1.
    """
    return fit_weights_folds(y, arrays, steps)[0]


class _MaskedScorer:
    """mAP of one candidate blend on several row sets at once: all rows, and all but one fold. Each
    fold's scores are sorted once (a sort of the values, no argsort); the images at or above a
    positive's score are counted in every fold by binary search, and a row set's count is the sum
    over its folds. The terms and their order are those of metrics.average_precision on the
    restricted rows, so each figure is that function's to the last bit (tests/test_blend_submit.py),
    for one sort of the rows instead of one per row set. Labels must be 0/1 and scores finite (else
    the caller scores each row set alone, and scikit-learn raises its usual error)."""

    def __init__(self, y: np.ndarray, folds):
        folds = np.asarray(folds)
        self.fold_ids = [int(f) for f in np.unique(folds)]
        self.fold_rows = [np.flatnonzero(folds == f) for f in self.fold_ids]
        self.pos = [np.flatnonzero(y[:, c] == 1) for c in range(y.shape[1])]
        self.pos_fold = [folds[i] for i in self.pos]

    def __call__(self, cand: np.ndarray, keys: list) -> dict:
        n_cls = cand.shape[1]
        ap = {k: np.full(n_cls, np.nan) for k in keys}
        by_fold = []                                                     # (classes, fold rows), each row sorted
        for rows in self.fold_rows:
            part = np.ascontiguousarray(cand[rows].T)
            part.sort(axis=1)
            by_fold.append(part)
        for c in range(n_cls):
            if not len(self.pos[c]):
                continue
            ps = cand[self.pos[c], c]
            o = np.argsort(ps)
            ps, pf = ps[o], self.pos_fold[c][o]                          # positives ascending, with their folds
            new = np.r_[True, ps[1:] != ps[:-1]]
            thr, gid = ps[new], np.cumsum(new) - 1                       # distinct positive scores; each one's
            above_f = {f: len(part[c]) - np.searchsorted(part[c], thr, side="left")
                       for f, part in zip(self.fold_ids, by_fold)}      # images scored >= each, per fold
            above_all = sum(above_f.values())
            for k in keys:
                g = gid if k is None else gid[pf != k]
                if not len(g):
                    continue
                first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
                at = g[first]                                            # this row set's thresholds, ascending
                gain = np.diff(np.r_[first, len(g)])
                above = above_all[at] if k is None else above_all[at] - above_f[k][at]
                tp = np.ascontiguousarray(np.cumsum(gain[::-1])[::-1])
                ap[k][c] = float((gain * (tp / above)).sum() / len(g))
        return {k: float(np.nanmean(a)) if np.isfinite(a).any() else 0.0 for k, a in ap.items()}


def fit_weights_folds(y: np.ndarray, arrays: list[np.ndarray], steps: int = 40, folds=None):
    """(weights fitted on all rows, {fold: weights fitted on the other folds} or {} without folds):
    `fit_weights` on each row set, run side by side. Fits at the same point of the same path of
    picks share their candidate blends (the same numbers, row for row), so each candidate is sorted
    once for all of them (_MaskedScorer); a fit that has taken another path is scored alone. The
    weights are those of separate fit_weights calls (tested)."""
    y = np.asarray(y)
    arrays = [np.asarray(a) for a in arrays]
    keys = [None] + ([int(f) for f in np.unique(folds)] if folds is not None else [])
    folds = np.asarray(folds) if folds is not None else None
    rows = {k: None if k is None else folds != k for k in keys}
    shared = len(keys) > 1 and np.isin(y, (0, 1)).all() and all(np.isfinite(a).all() for a in arrays)
    scorer = _MaskedScorer(y, folds) if shared else None

    def score(cand, ks) -> dict:
        if scorer is not None and len(ks) > 1:
            return scorer(cand, ks)
        return {k: _map(y, cand) if rows[k] is None else _map(y[rows[k]], cand[rows[k]]) for k in ks}

    single = [score(a, keys) for a in arrays]                           # each member alone, every row set
    counts, best, path, done = {}, {}, {}, set()
    for k in keys:
        scores = [single[j][k] for j in range(len(arrays))]
        counts[k] = np.zeros(len(arrays))
        counts[k][int(np.argmax(scores))] = 1
        best[k], path[k] = max(scores), (int(np.argmax(scores)),)
    totals = {}                                                          # path -> sum of its members, in pick order
    for _ in range(steps - 1):
        live = [k for k in keys if k not in done]
        if not live:
            break
        groups: dict = {}
        for k in live:
            groups.setdefault(path[k], []).append(k)
        new_totals = {}
        for p, ks in groups.items():
            total = totals[p] if p in totals else arrays[p[0]].copy()
            trial = {k: [] for k in ks}
            for a in arrays:
                for k, v in score((total + a) / (len(p) + 1), ks).items():
                    trial[k].append(v)
            for k in ks:
                j = int(np.argmax(trial[k]))
                if trial[k][j] < best[k] - 1e-12:  # adding anything now hurts: stop
                    done.add(k)
                    continue
                counts[k][j] += 1
                best[k] = max(best[k], trial[k][j])
                path[k] = p + (j,)
                if path[k] not in new_totals:
                    new_totals[path[k]] = total + arrays[j]
        totals = new_totals
    w = {k: counts[k] / counts[k].sum() for k in keys}
    return w[None], {k: w[k] for k in keys[1:]}


def blend_experiment(cfg: Config, force: bool = False) -> dict:
    """Stage 05 under the experiment's lock: a second run on the same outputs stops at once, naming the first."""
    with stage_frame(experiment_dir(cfg), "metrics.json", f"experiment '{cfg.name}' (stage 05)", force=force,
                     main=is_main_process()) as frame:
        return _blend_experiment(cfg, frame)


def _blend_experiment(cfg: Config, frame) -> dict:
    bc = cfg.blend
    members = list(bc.members or [])
    if len(members) < 1:
        raise CxrltError("blend.members: list at least one experiment to blend")
    if bc.mode not in ("mean", "rank", "fit", "route"):
        raise CxrltError(f"blend.mode must be mean, rank, fit or route, not '{bc.mode}'")
    spec = Experiment.of(cfg).spec
    check_task(cfg, spec)
    if spec.multiclass and bc.mode == "rank":
        raise CxrltError("blend.mode=rank ranks each class apart, which breaks the argmax of data.task=multiclass; "
                         "use mean or fit")
    names, id_col = list(spec.labels), spec.id_col
    out = frame.folder
    train = oof_table(cfg, spec)      # the rows the members' oof.csv cover (training CSV, or the given validation CSV)
    if bc.mode == "route":
        return _route(cfg, spec, train, members, frame)
    ids, folds, oof = load_members(members, names, id_col, "oof")
    if ids != train[id_col].tolist():
        raise CxrltError("blend: the members' OOF ids are not the training CSV's ids in order (members trained with "
                         "another folds.scheme than the blend recipe's?)")
    inputs = stamps({f"{m}/{f}": member_dir(m) / f for m in members for f in ("oof.csv", "test.csv", "development.csv")
                     if (member_dir(m) / f).is_file()})
    settings = dict(members=members, mode=bc.mode, fit_steps=int(bc.fit_steps))
    old = frame.vouched(inputs=inputs, settings=settings)
    if old is not None:
        return dict(old, dir=out, skipped=True)
    y = label_matrix(spec, train)
    arrays = [oof[m] for m in members]
    member_map = {m: _map(y, a) for m, a in oof.items()}
    if bc.mode == "fit" and len(np.unique(folds)) < 2:   # folds.scheme=given: no other fold to fit on
        weights, honest_map, honest_weights = fit_weights(y, arrays, int(bc.fit_steps)), float("nan"), None
    elif bc.mode == "fit":
        # the fit on all rows and one per held-out fold, side by side (sharing their sorts)
        weights, per_fold = fit_weights_folds(y, arrays, int(bc.fit_steps), folds)
        honest = np.zeros_like(arrays[0])
        honest_weights = {}
        for f in np.unique(folds):
            te, w = folds == f, per_fold[int(f)]
            honest[te] = combine([a[te] for a in arrays], w, "mean")
            honest_weights[int(f)] = dict(zip(members, w.tolist()))
        honest_map = _map(y, honest)
    else:
        weights = np.ones(len(members)) / len(members)
        honest_map, honest_weights = None, None  # nothing was fitted: the OOF figure is already honest
    mode = "rank" if bc.mode == "rank" else "mean"
    blended = combine(arrays, weights, mode)
    write_predictions(out / "oof.csv", ids, blended, names, id_col, fold=folds)
    blended = read_predictions(out / "oof.csv", names, id_col, ids=ids)[names].to_numpy()
    pos, n = training_counts(cfg, spec)      # groups from the training CSV, whatever rows the OOF covers
    result = evaluate(y, blended, names, pos, n)
    result.update(mode=bc.mode, members=member_map, weights=dict(zip(members, weights.tolist())),
                  mAP_honest=honest_map if honest_map is not None else result["mAP"],
                  honest_weights=honest_weights, inputs=inputs, settings=settings)
    for split, fname in (("test", "test.csv"), ("dev", "development.csv")):
        # zero-shot columns every member has (stage 04 writes them after the trained ones) are
        # carried with the weights fitted on the trained classes: a zero-shot preset submits them
        cols = names + zero_shot_columns(members, fname, names)
        loaded = load_members(members, cols, id_col, split)
        if loaded is None:
            continue
        s_ids, _, s_arr = loaded
        write_predictions(out / fname, s_ids, combine([s_arr[m] for m in members], weights, mode), cols, id_col)
        if split == "dev":
            result.update(_development(spec, out / fname, names, pos, n))
    save_resolved(cfg, out / "config.yaml")
    write_text(out / "weights.json", to_json(dict(mode=bc.mode, weights=result["weights"],
                                                       honest_weights=honest_weights), indent=1))
    # written last, vouching for every output: a blend killed half-way is redone, never "up to date"
    result = frame.seal(result, outputs=[out / f for f in ("oof.csv", "test.csv", "development.csv", "weights.json")])
    return dict(result, dir=out, skipped=False)


def _development(spec, path: Path, names: list[str], pos, n) -> dict:
    """{"development": figures} of the blend's development.csv where the development CSV is
    labelled (as stage 04 reports a member's: never fitted on), else {}."""
    table = read_split(spec, "dev", labels="auto")
    if not all(c in table.columns for c in names):
        return {}
    pred = read_predictions(path, names, spec.id_col).set_index(spec.id_col)
    table = table[table[spec.id_col].isin(pred.index)]      # a view-routed blend answers the views it has
    probs = pred.loc[table[spec.id_col], names].to_numpy()
    return {"development": {k: v for k, v in evaluate(label_matrix(spec, table), probs, names, pos, n).items()
                            if k != "per_class"}}


def _member_views(m: str) -> list[str] | None:
    """The views a member was trained on (its config.yaml `data.views`), None for all views; a member
    that aggregated studies is refused (routing must see each image's own prediction)."""
    from cxrlt.config import load_yaml

    d = member_dir(m)
    f = d / "predict_config.yaml" if (d / "predict_config.yaml").is_file() else d / "config.yaml"  # stage 04's, else 03's
    if not f.is_file():
        raise CxrltError(f"blend member '{m}': no {display_path(f)} (train it first)")
    c = load_yaml(f.read_text())
    if (c.get("predict") or {}).get("study_aggregation"):
        raise CxrltError(f"blend.mode=route: member '{m}' aggregates studies; set predict.study_aggregation: false in "
                         f"its recipe (the routed blend aggregates after routing)")
    views = (c.get("data") or {}).get("views")
    return [str(v).strip().upper() for v in views] if views else None


def _route(cfg, spec, train, members, frame) -> dict:
    """Blend mode `route`: each image's prediction from the member trained on its view (the
    all-view member for other views or without a view column), then study aggregation when the
    recipe asks for it. Figures overall and per view group."""
    from cxrlt.evaluate.postprocess import route_settings, routed_studies
    from cxrlt.evaluate.predictions import route_rows
    from cxrlt.evaluate.validation import view_figures, view_groups

    names, id_col, out = list(spec.labels), spec.id_col, frame.folder
    views = {m: _member_views(m) for m in members}
    files = {s: f for s, f in (("oof", "oof.csv"), ("test", "test.csv"), ("dev", "development.csv"))}
    inputs = stamps({**{f"{m}/{f}": member_dir(m) / f for m in members for f in files.values()
                        if (member_dir(m) / f).is_file()},
                     **{s: p for s in ("train", "dev", "test") if (p := spec.csv(s)) is not None and p.is_file()}})
    settings = dict(members=members, mode="route", views={m: v for m, v in views.items()},
                    study_aggregation=bool(cfg.predict.study_aggregation), view_weights=dict(cfg.predict.view_weights),
                    other_view_weight=float(cfg.predict.other_view_weight))
    old = frame.vouched(inputs=inputs, settings=settings)
    if old is not None:
        return dict(old, dir=out, skipped=True)
    pc = cfg.predict

    def routed(split: str, table):
        """Routed (and aggregated) predictions of `table`'s rows, folds for OOF; None if absent."""
        frames = {}
        for m in members:
            if split == "dev" and not (member_dir(m) / files[split]).is_file():
                return None
            frames[m] = read_predictions(member_file(m, files[split]), names, id_col).set_index(id_col)
        vcol = spec.view_col if spec.view_col and spec.view_col in table.columns else None
        pick = route_rows(table[vcol] if vcol else [None] * len(table), views)
        ids = table[id_col].astype(str).tolist()
        p, fold = np.zeros((len(ids), len(names))), np.full(len(ids), -1)
        for i, m in enumerate(members):
            rows = np.flatnonzero(pick == i)
            want = [ids[r] for r in rows]
            missing = [x for x in want if x not in frames[m].index]
            if missing:
                raise CxrltError(f"blend member '{m}': its {files[split]} has no row for {len(missing)} image(s) it "
                                 f"should answer (e.g. {missing[0]}); was it trained on these views?")
            p[rows] = frames[m].loc[want, names].to_numpy(np.float64)
            if split == "oof":
                fold[rows] = frames[m].loc[want, "fold"].to_numpy()
        studies = table[spec.study_col] if spec.study_col and spec.study_col in table.columns else None
        p = routed_studies(p, studies, table[vcol] if vcol else [None] * len(table), route_settings(pc))
        return ids, p, fold, pick

    ids, p, fold, pick = routed("oof", train)
    y = label_matrix(spec, train)
    write_predictions(out / "oof.csv", ids, p, names, id_col, fold=fold)
    p = read_predictions(out / "oof.csv", names, id_col, ids=ids)[names].to_numpy()
    pos, n = training_counts(cfg, spec)
    result = evaluate(y, p, names, pos, n)
    result.update(mode="route", routed={m: int((pick == i).sum()) for i, m in enumerate(members)},
                  views={m: v or "all" for m, v in views.items()}, mAP_honest=result["mAP"], inputs=inputs,
                  settings=settings, weights={m: 1.0 for m in members},
                  # each member's mAP on the images it answered (NaN: none)
                  members={m: _map(y[pick == i], p[pick == i]) if (pick == i).any() else float("nan")
                           for i, m in enumerate(members)})
    if spec.view_col and spec.view_col in train.columns:
        result["by_view"] = view_figures(y, p, view_groups(train[spec.view_col]), names, pos, n, folds=fold)
    for split, fname in (("test", "test.csv"), ("dev", "development.csv")):
        path = spec.csv(split)
        if path is None or not path.is_file():
            continue
        table = read_split(spec, split, labels="none")
        r = routed(split, table)
        if r is not None:
            write_predictions(out / fname, r[0], r[1], names, id_col)
            if split == "dev":
                result.update(_development(spec, out / fname, names, pos, n))
    save_resolved(cfg, out / "config.yaml")
    write_text(out / "weights.json", to_json(dict(mode="route", weights=result["weights"], views=result["views"]),
                                              indent=1))
    result = frame.seal(result, outputs=[out / f for f in ("oof.csv", "test.csv", "development.csv", "weights.json")])
    return dict(result, dir=out, skipped=False)
