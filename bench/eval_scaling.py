"""Evaluation at competition size: the fast AP, the patient bootstrap, the blend fit and the training
CSV's check, each against the reference implementation measured in the same run.

Synthetic data: --rows images x --labels classes (CXR-LT 2023 training prevalences at 26 labels),
--patients patients (a few images each), three prediction sets of different quality, 5 folds by
patient. Reported: wall seconds, CPU seconds of this process, and the ratio reference / new (same
run, same data; where the reference would take minutes it is measured on a part and scaled, and
the row says so). Other processes on the machine share the cores: compare ratios, not seconds.

    python bench/eval_scaling.py --rows 265000 --labels 26 --patients 45631
    python bench/eval_scaling.py --rows 3000 --boot 200        # a quick look
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT  # noqa: F401  (puts src/ on the path)

from cxrlt.data.labels import COUNTS_2023, N_TRAIN_2023


def timed(fn):
    """(result, wall s, cpu s) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    r = fn()
    return r, time.perf_counter() - w, time.process_time() - c


def make_data(rows: int, labels: int, patients: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    prev = np.array(COUNTS_2023) / N_TRAIN_2023 if labels == 26 else np.geomspace(0.3, 0.002, labels)
    pat = np.sort(rng.integers(0, patients, rows))
    y_pat = rng.random((patients, labels)) < prev
    y = (y_pat[pat] & (rng.random((rows, labels)) < 0.9)).astype(np.float32)
    base = rng.normal(size=(patients, labels))[pat]
    members = [np.round(1 / (1 + np.exp(-(q * 3 * y + base + rng.normal(size=y.shape)))), 6) for q in (0.6, 0.5, 0.45)]
    fold_of_patient = rng.integers(0, 5, patients)
    return y, members, pat, fold_of_patient[pat]


# ----------------------------------------------------------------------------- the reference implementations
def ref_map(y, p):
    """mAP as first written: scikit-learn's AP per class with a positive."""
    from sklearn.metrics import average_precision_score

    ap = [average_precision_score(y[:, c], p[:, c]) for c in range(y.shape[1]) if y[:, c].sum() > 0]
    return float(np.mean(ap)) if ap else 0.0


def ref_bootstrap(y, p, patients, n_boot, seed, block=4_000_000):
    """The first bootstrap: row weights gathered per block, every class re-sorted per block."""
    codes, uniq = pd.factorize(pd.Series(patients).astype(str), sort=True)
    n_pat, rng = len(uniq), np.random.default_rng(seed)
    step, out = max(1, block // max(len(codes), 1)), []
    yb = np.asarray(y).astype(bool)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        draws = rng.integers(0, n_pat, size=(b, n_pat)) + np.arange(b)[:, None] * n_pat
        w = np.bincount(draws.ravel(), minlength=b * n_pat).reshape(b, n_pat).astype(np.int32)[:, codes]
        res = np.full((b, yb.shape[1]), np.nan)
        for c in range(yb.shape[1]):
            if not yb[:, c].any():
                continue
            order = np.argsort(-p[:, c], kind="stable")
            ps, pos = p[order, c], np.flatnonzero(yb[order, c])
            ends = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
            at = np.unique(ends[np.searchsorted(ends, pos)])
            ws = w[:, order]
            tot = np.cumsum(ws, axis=1)[:, at]
            tp = np.cumsum(ws[:, pos], axis=1)[:, np.searchsorted(pos, at, side="right") - 1]
            gain = np.diff(tp, axis=1, prepend=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                res[:, c] = np.where(tp[:, -1] > 0, (gain * (tp / np.maximum(tot, 1))).sum(1) / tp[:, -1], np.nan)
        out.append(res)
    return np.concatenate(out)


def ref_check_labels(df, labels, label_map):
    """The first label check: a Python lambda per cell."""
    df = df.copy()
    for col in labels:
        num = pd.to_numeric(df[col].str.strip().map(lambda s: label_map.get(s, s)), errors="coerce")
        if (~num.isin([0, 1])).any():
            raise ValueError(col)
        df[col] = num.astype(np.uint8)
    return df


# ----------------------------------------------------------------------------- the measurements
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=265_000)
    p.add_argument("--labels", type=int, default=26)
    p.add_argument("--patients", type=int, default=45_631)
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (stage 08: 1000; stage 04: 200)")
    p.add_argument("--steps", type=int, default=40, help="blend.fit_steps")
    p.add_argument("--ref-boot", type=int, default=30, help="resamples the reference bootstrap runs (then scaled)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: ap,boot,fit,stages,csv")
    a = p.parse_args()
    skip = set(a.skip.split(","))
    from cxrlt.ensemble.blend import _map, _MaskedScorer, fit_weights_folds
    from cxrlt.evaluate.bootstrap import bootstrap_ap
    from cxrlt.metrics import map_score

    import sklearn.metrics  # noqa: F401  (imported before any timing: the reference pays no import)

    y, members, pat, folds = make_data(a.rows, a.labels, a.patients)
    load = os.getloadavg()
    print(f"{a.rows} rows x {a.labels} labels, {len(np.unique(pat))} patients; load average {load[0]:.1f} "
          f"(1 min) on {os.cpu_count()} cores: other jobs share them, compare ratios")
    table = []

    def row(what, new, ref=None, note=""):
        wall, cpu = new
        cells = [what, f"{wall:.2f}", f"{cpu:.2f}"]
        if ref is not None:
            cells += [f"{ref[0]:.2f}", f"{ref[1]:.2f}", f"{ref[0] / max(wall, 1e-9):.1f}x", f"{ref[1] / max(cpu, 1e-9):.1f}x"]
        else:
            cells += ["", "", "", ""]
        table.append(cells + [note])
        print(" | ".join(cells + [note]), flush=True)

    if "ap" not in skip:
        m, w1, c1 = timed(lambda: map_score(y, members[0]))
        r, w2, c2 = timed(lambda: ref_map(y, members[0]))
        assert abs(m - r) < 1e-12, (m, r)
        row("mAP (fast AP vs sklearn)", (w1, c1), (w2, c2), f"equal to {abs(m - r):.1e}")
    if "boot" not in skip:
        ap, w1, c1 = timed(lambda: bootstrap_ap(y, {"m": members[0]}, pat, a.boot, seed=0)["m"])
        k = min(a.ref_boot, a.boot)
        ref, w2, c2 = timed(lambda: ref_bootstrap(y, members[0], pat, k, seed=0))
        assert np.array_equal(ref, ap[:k], equal_nan=True)
        row(f"bootstrap {a.boot} resamples, 1 prediction set", (w1, c1), (w2 * a.boot / k, c2 * a.boot / k),
            f"reference: {k} resamples x {a.boot // k}; first {k} identical to the bit")
    if "fit" not in skip:
        evals = [0]
        real_map, real_call = _map, _MaskedScorer.__call__
        import cxrlt.ensemble.blend as blend

        def counting_map(yy, pp):
            evals[0] += 1
            return real_map(yy, pp)

        def counting_call(self, cand, keys):
            evals[0] += len(keys)
            return real_call(self, cand, keys)

        blend._map, _MaskedScorer.__call__ = counting_map, counting_call
        try:
            (w, per_fold), w1, c1 = timed(lambda: fit_weights_folds(y, members, a.steps, folds))
        finally:
            blend._map, _MaskedScorer.__call__ = real_map, real_call
        tr = folds != 0
        _, w2, c2 = timed(lambda: ref_map(y[tr], (members[0][tr] + members[1][tr]) / 2))
        row(f"blend fit, 3 members, {a.steps} steps + 5 honest refits", (w1, c1), (w2 * evals[0], c2 * evals[0]),
            f"reference: {evals[0]} sklearn mAPs x one measured; weights {np.round(w, 3).tolist()}")
    if "stages" not in skip:
        from cxrlt.ensemble.thresholds import honest_f1
        from cxrlt.evaluate.validation import fold_summary
        from cxrlt.metrics import evaluate

        names = [f"c{i}" for i in range(a.labels)]
        pos, n = y.sum(0), len(y)

        def one_recipe(p_, n_boot):
            evaluate(y, p_, names, pos, n)
            fold_summary(y, p_, folds, names, pos, n)
            honest_f1(y, p_, folds)
            return bootstrap_ap(y, {"p": p_}, pat, n_boot, seed=0)

        _, w1, c1 = timed(lambda: [one_recipe(m, a.boot) for m in members])
        row(f"stage 08 figures, 3 recipes ({a.boot} resamples each)", (w1, c1), None,
            "evaluate + fold_summary + honest_f1 + bootstrap, per recipe")
        with tempfile.TemporaryDirectory() as d:
            from cxrlt.evaluate.predictions import write_predictions

            ids = [f"i{i}" for i in range(len(y))]
            variants = {"final": members[0], "tta": members[1], "study": members[2]}

            def stage04():
                evaluate(y, members[0], names, pos, n)
                fold_summary(y, members[0], folds, names, pos, n)
                bootstrap_ap(y, variants, pat, 200, seed=0)
                [map_score(y, v) for v in variants.values()]
                write_predictions(Path(d) / "oof.csv", ids, members[0], names, "id", fold=folds)

            _, w1, c1 = timed(stage04)
            row("stage 04 non-model work (3 variants, 200 resamples, oof.csv)", (w1, c1), None,
                "evaluate + fold_summary + variant bootstrap + oof.csv")
    if "csv" not in skip:
        from cxrlt.config import load_config
        import cxrlt.data.datasets as ds

        with tempfile.TemporaryDirectory() as d:
            labels = [f"c{i}" for i in range(a.labels)]
            frame = pd.DataFrame({"id": [f"img{i:07d}" for i in range(len(y))],
                                  "path": [f"p{q}/s{i}.jpg" for i, q in enumerate(pat)], "subject_id": pat,
                                  "study_id": np.arange(len(y)) // 2, "ViewPosition": "PA",
                                  **{c: y[:, i].astype(int) for i, c in enumerate(labels)}})
            (Path(d) / "d").mkdir()
            frame.to_csv(Path(d) / "d" / "train.csv", index=False)
            cfg = load_config(ROOT / "experiments" / "demo.yaml", [
                "data.preset=custom", f"data.input_dir={d}", "data.dir=d", "data.train_csv=train.csv", "data.id_col=id",
                "data.path_col=path", "data.patient_col=subject_id", "data.study_col=study_id",
                "data.view_col=ViewPosition", f"data.labels=[{','.join(labels)}]"])
            spec = ds.resolve_dataset(cfg.data)
            ds._READ_CACHE.clear()
            _, w1, c1 = timed(lambda: ds.read_split(spec, "train", labels="required"))
            _, w3, c3 = timed(lambda: ds.read_split(spec, "train", labels="required"))
            raw, w0, c0 = timed(lambda: pd.read_csv(spec.train_csv, dtype=str, keep_default_na=False))
            _, w2, c2 = timed(lambda: ref_check_labels(raw, labels, {}))
            row("read_split(train) incl. label check, first read", (w1, c1), (w0 + w2, c0 + c2),
                f"reference: read_csv {w0:.2f} s + per-cell check {w2:.2f} s")
            row("read_split(train), again in the same stage", (w3, c3), None, "cached (bytes hashed)")
    print()
    print("| what | wall s | cpu s | reference wall s | reference cpu s | ratio (wall) | ratio (cpu) | note |")
    print("|---|---|---|---|---|---|---|---|")
    for cells in table:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
