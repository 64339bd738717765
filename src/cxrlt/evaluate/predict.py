"""Stage 04: out-of-fold, development and test predictions of a trained experiment, and its report.

Each fold's best.pt predicts its own held-out images (OOF) and every development and test image,
with and without the TTA views of `predict.tta` (all views from the same pass over the data, each
view's OOF mAP reported); test and development predictions are the mean over folds. Study
aggregation (the view-weighted mean over a study's images) is applied when the recipe asks for it
and the preset has a study column, then normal gating (`predict.normal_gating`) when set, then fold
normalisation (`predict.oof_normalise`, evaluate.normalise): each fold model's map, fitted on its
own OOF scores, is applied to its OOF rows and to its test and development predictions before they
are averaged over folds (the fitted maps are kept in normaliser.npz for the web page). Every step
after the models' logits is evaluate.postprocess, the path the web page answers with. metrics.json
reports the pooled OOF figures beside the mean and std of per-fold figures, a drift warning
(evaluate.validation), figures per view group, the development figures apart, and each variant
against the final one with a patient-bootstrap interval. Writes
experiments/<name>/{oof,development,test}.csv, metrics.json and PNGs.

Zero-shot labels (`zero_shot_names`: data.holdout_labels, a zero-shot preset's findings,
predict.zero_shot_labels) are scored by text-query models from their label embeddings alone: their
columns follow the trained ones in every CSV (so blends and thresholds read the trained columns as
before), and metrics.json's `zero_shot` gives their AP beside chance (prevalence) wherever the
scored CSV has their labels; the trained classes' figures are unchanged by them.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from cxrlt.choices import USE_FULL_FIT as USE_FULL
from cxrlt.config import Config, rerun_hint, save_resolved
from cxrlt.data.datasets import check_task, read_split
from cxrlt.data.experiment import Experiment
from cxrlt.data.images import Cache
from cxrlt.data.loader import CxrDataset, StudyDataset, make_loader
from cxrlt.data.studies import study_groups, view_kinds
from cxrlt.errors import CxrltError
from cxrlt.evaluate.bootstrap import bootstrap_ap, check_count, distinguishable, interval, subset_map
from cxrlt.evaluate import postprocess as post
from cxrlt.evaluate.normalise import FoldNormaliser
from cxrlt.evaluate.predictions import read_predictions, write_predictions
from cxrlt.evaluate.validation import best_epochs, drift_check, figure_lines, fold_summary, view_figures, view_groups
from cxrlt.experiment import FULL, best_checkpoint, check_fingerprint, experiment_dir, fold_ids, given_split
from cxrlt.fileio import display_path, stamps
from cxrlt.metrics import count_groups, evaluate, map_score, multiclass_metrics, zero_shot_figures
from cxrlt.models.checkpoint import load, load_model
from cxrlt.models.inference import predict_loader, study_input, to_probs
from cxrlt.models.text import CACHE_NAME as TEXT_CACHE
from cxrlt.models.text import add_labels
from cxrlt.runtime import is_main_process, make_accelerator
from cxrlt.stage import stage_frame, verified


def _checkpoints(cfg: Config) -> dict:
    """best.pt of every fold, or a one-line error naming the first fold without one."""
    out = {}
    for k in fold_ids(cfg):
        p = best_checkpoint(cfg, k)
        if not p.is_file() or not (p.parent / "done.json").is_file():   # a fold still training is not a model
            what = "no checkpoint" if not p.is_file() else "not finished (no done.json beside"
            raise CxrltError(f"fold {k}: {what} {display_path(p)}{')' if p.is_file() else ''}; train it with "
                             f"{rerun_hint(cfg, '03_train.py', '--fold', str(k))}")
        out[k] = p
    return out


def _split_table(cfg, spec, split: str, cache: Cache):
    """The development or test table and its cached files; None if the preset has no such CSV.
    Label columns are read (and scored) where the CSV has them: the development CSV, and the test
    CSV of a benchmark whose test labels are public (the single-label benchmark)."""
    path = spec.csv(split)
    if path is None or not path.is_file():
        return None
    df = read_split(spec, split, labels="auto")
    return df, cache.require(df[spec.id_col], path, cfg)


def _studies(spec, df):
    """(study ids or None, views) of `df`'s rows for study aggregation (None: no study column)."""
    studies = df[spec.study_col] if spec.study_col and spec.study_col in df.columns else None
    views = df[spec.view_col] if spec.view_col and spec.view_col in df.columns else [None] * len(df)
    return studies, views


_check_settings = post.check_settings


def zero_shot_names(cfg, spec) -> list[str]:
    """Labels to score without training: data.holdout_labels, then the preset's zero-shot findings,
    then predict.zero_shot_labels (each once); a trained label asked for is a one-line error."""
    asked = cfg.predict.get("zero_shot_labels") or []
    if not isinstance(asked, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in asked):
        raise CxrltError(f"predict.zero_shot_labels must be a list of label names, not {asked!r}")
    known = {" ".join(str(x).lower().split()) for x in spec.labels}
    trained = [x for x in asked if " ".join(x.lower().split()) in known]   # same prompt text as a trained class
    if trained:
        raise CxrltError(f"predict.zero_shot_labels: '{trained[0]}' is a trained label of this recipe (it is scored "
                         f"anyway); list only labels the models never trained on")
    return list(dict.fromkeys([*spec.holdout_labels, *spec.zero_shot_labels, *asked]))


def _zero_shot_block(df, probs: np.ndarray, zs: list[str], trained_map, trained_probs: np.ndarray) -> dict | None:
    """metrics.json's zero-shot figures for the zero-shot labels whose columns `df` has; the
    label-agnostic bar is the mean of the trained classes' probabilities (metrics.zero_shot_figures)."""
    have = [i for i, x in enumerate(zs) if x in df.columns]
    if not have:
        return None
    y = df[[zs[i] for i in have]].apply(lambda c: c.astype(float)).to_numpy()
    return zero_shot_figures(y, probs[:, have], [zs[i] for i in have], trained_map, agnostic=trained_probs.mean(1))


def predict_experiment(cfg: Config, force: bool = False, progress: bool = True) -> dict:
    """Stage 04 under the experiment's lock: a second run on the same outputs stops at once, naming the first."""
    with stage_frame(experiment_dir(cfg), "metrics.json", f"experiment '{cfg.name}' (stage 04)", force=force,
                     main=is_main_process()) as frame:
        return _predict_experiment(cfg, frame, progress)


def _predict_experiment(cfg: Config, frame, progress: bool = True) -> dict:
    from cxrlt.progress import progress_bar

    out = frame.folder
    exp = Experiment.of(cfg)
    spec = exp.spec
    check_task(cfg, spec)
    ps = post.Settings.of(cfg.predict, spec)
    views = ps.views
    check_count("predict.bootstrap", cfg.predict.bootstrap)
    ckpts = _checkpoints(cfg)
    fp = exp.fingerprint()
    loaded = {k: load(path) for k, path in ckpts.items()}
    for k, path in ckpts.items():  # a changed recipe or re-made folds: never score OOF with such a model
        check_fingerprint(loaded[k]["fingerprint"], fp, path,
                          "predict with the recipe and folds it was trained with, or retrain it: "
                          + rerun_hint(cfg, "03_train.py", "--force"))
    inits = {k: ck.get("init", "unknown") for k, ck in loaded.items()}
    if len(set(inits.values())) > 1:
        raise CxrltError(f"{display_path(out)}: its folds started from different weights ("
                         + ", ".join(f"fold {k}: {v}" for k, v in inits.items())
                         + f"); retrain the odd ones with {rerun_hint(cfg, '03_train.py', '--fold', 'K', '--force')}")
    for k, path in ckpts.items():   # done.json vouches for best.pt (older done.json files record no outputs)
        verified(path.parent / "done.json", [path.name], rerun_hint(cfg, "03_train.py", "--fold", str(k), "--force"),
                 strict=False)
    full = _full_fit(cfg, spec)
    if full is not None:
        loaded[FULL] = full
    # up to date = same checkpoints, same input CSVs, same prediction settings
    inputs = stamps({**{f"fold{k}": p for k, p in ckpts.items()},
                     **({FULL: best_checkpoint(cfg, FULL)} if full is not None else {}),
                     **{s: p for s in ("train", "val", "dev", "test") if (p := spec.csv(s)) is not None and p.is_file()}})
    old = frame.vouched(inputs=inputs, settings=_settings(cfg))
    if old is not None and "oof.csv" in old["outputs"]:
        return dict(old, skipped=True, dir=out)
    table = exp.training()
    train_df, files, y, fold_of = table.df, table.files, table.y, table.fold_of
    # groups (head / medium / tail) come from the images trained on; the OOF covers the held-out rows:
    # every row with K folds, the validation CSV's with folds.scheme=given (fold -1 = trained on only)
    train_pos, n_train = y.sum(0), len(y)
    if (fold_of < 0).any():
        train_pos, n_train, keep = y[fold_of < 0].sum(0), int((fold_of < 0).sum()), np.flatnonzero(fold_of >= 0)
        train_df, files, y, fold_of = train_df.iloc[keep].reset_index(drop=True), [files[i] for i in keep], y[keep], fold_of[keep]
    names = list(spec.labels)
    zs = zero_shot_names(cfg, spec)
    C, all_names, text_cache = len(names), names + zs, out / TEXT_CACHE   # zero-shot columns after the trained
    pc = cfg.predict
    accelerator = make_accelerator(pc, "predict.precision")
    cache = Cache.from_config(cfg, spec.name)
    others = {s: t for s in ("dev", "test") if (t := _split_table(cfg, spec, s, cache)) is not None}
    n_tr = len(train_df)
    # OOF probabilities of each view alone and of all views combined, filled fold by fold;
    # dev/test: each fold model's combined probabilities (averaged after any fold normalisation)
    oof_views = {v: np.zeros((n_tr, len(all_names))) for v in ("none", *views)}
    oof_tta = np.zeros((n_tr, len(all_names)))
    per_model = {s: {} for s in others}         # dev/test: each fold model's combined probabilities
    t0 = time.time()
    for k, path in progress_bar(len(ckpts), "folds", "fold", progress and accelerator.is_main_process,
                                iterable=ckpts.items()):
        ck = loaded[k]
        net, arch = load_model(ck)
        if zs:
            add_labels(net, arch, zs, text_cache)
        net = net.to(accelerator.device)
        if cfg.train.channels_last:
            net = net.to(memory_format=torch.channels_last)
        held = np.flatnonzero(fold_of == k)
        jobs = {"oof": (train_df.iloc[held], [files[i] for i in held]), **others}
        for job, (job_df, job_files) in jobs.items():
            by_view = _logits(net, arch, spec, job_df, job_files, accelerator, ck, views, cfg)
            probs = post.combine_views(by_view, ps)
            if job == "oof":
                for v, t in by_view.items():
                    oof_views[v][held] = to_probs(t, spec.task).numpy()
                oof_tta[held] = probs
            else:
                per_model[job][k] = probs
        accelerator.free_memory()
    if full is not None:    # the full-data fit predicts development and test only: it has no OOF
        net, arch = load_model(full)
        if zs:
            add_labels(net, arch, zs, text_cache)
        net = net.to(accelerator.device)
        for s, (job_df, job_files) in others.items():
            by_view = _logits(net, arch, spec, job_df, job_files, accelerator, full, views, cfg)
            per_model[s][FULL] = post.combine_views(by_view, ps)
    if not accelerator.is_main_process:
        return dict(skipped=False, dir=out)

    # variants: with/without TTA x image/study level (the recipe's choice, last, is the final one),
    # then the final one gated when normal gating is set
    arrays = {}
    studies, study_views = _studies(spec, train_df)
    for tag, probs in [("no_tta", oof_views["none"])] + ([("tta", oof_tta)] if views else []):
        arrays[f"{tag}/image"] = probs
        study = post.aggregate(probs, studies, study_views, ps)
        if study is not None:
            arrays[f"{tag}/study"] = study
        final, final_key = (study, f"{tag}/study") if study is not None else (probs, f"{tag}/image")
    if ps.gate:
        final, final_key = post.gate(final, ps), final_key + "/gated"
        arrays[final_key] = final
    raw, norm = final, FoldNormaliser(pc.oof_normalise, final, fold_of)
    if pc.oof_normalise != "none":      # per fold, fitted on the OOF scores alone (never the labels)
        final, final_key = norm.oof(), f"{final_key}/{pc.oof_normalise}"
        arrays[final_key] = final
    variants = {k: map_score(y, a[:, :C]) for k, a in arrays.items()}
    write_predictions(out / "oof.csv", train_df[spec.id_col], final, all_names, spec.id_col, fold=fold_of)
    # score what was written (and check it reads back with the training ids, in order)
    final = read_predictions(out / "oof.csv", all_names, spec.id_col, ids=train_df[spec.id_col])[all_names].to_numpy()
    arrays[final_key] = final
    zs_oof = final[:, C:]
    final, raw, arrays = final[:, :C], raw[:, :C], {k: a[:, :C] for k, a in arrays.items()}   # trained classes
    groups = count_groups(train_pos, *spec.group_counts) if spec.multiclass else None
    result = evaluate(y, final, names, train_pos, n_train, groups=groups)
    result.update(_validation(cfg, spec, train_df, y, final, raw, fold_of, arrays, final_key, train_pos, n_train))
    if spec.multiclass:     # the benchmark's figures per labelled split (the OOF one first)
        result["multiclass"] = {"oof": dict(multiclass_metrics(y, final, names, train_pos, spec.group_counts),
                                            csv=display_path(spec.csv("val" if given_split(cfg) else "train")))}
    result.update(init=sorted(set(inits.values()))[0], variants=variants, final=final_key,
                  tta_views={v: map_score(y, p[:, :C]) for v, p in oof_views.items()},
                  settings=_settings(cfg), inputs=inputs, n_folds=len(ckpts), seconds=round(time.time() - t0, 1))
    if zs:
        result["zero_shot"] = dict(_zero_shot_block(train_df, zs_oof, zs, result["mAP"], final) or {}, columns=zs)
    written = {"oof": out / "oof.csv"}
    if pc.oof_normalise != "none":      # the fitted maps, for the web page to apply the same ones
        norm.save(out / post.NORMALISER)
        written["normaliser"] = out / post.NORMALISER
    else:
        (out / post.NORMALISER).unlink(missing_ok=True)
    for s, (df, _) in others.items():
        members = {k: p for k, p in per_model[s].items() if pc.use_full_fit != "alone" or k == FULL}
        # without normalisation the mean over models, then aggregation and gating; with it each
        # fold model aggregated, gated and through its own map, then the mean
        probs = post.over_models(members, *_studies(spec, df), ps, norm)
        name = "development.csv" if s == "dev" else "test.csv"
        write_predictions(out / name, df[spec.id_col], probs, all_names, spec.id_col)
        written[s] = out / name
        if all(c in df.columns for c in names):   # labelled: reported apart, never fitted on
            key, split_y, zs_probs, probs = ("development" if s == "dev" else "test"), df[names].to_numpy(), \
                probs[:, C:], probs[:, :C]
            result[key] = {k: v for k, v in evaluate(split_y, probs, names, train_pos, n_train, groups=groups).items()
                           if k != "per_class"}
            split_zs = _zero_shot_block(df, zs_probs, zs, result[key]["mAP"], probs) if zs else None
            if split_zs:
                result[key]["zero_shot"] = split_zs
            if spec.view_col and spec.view_col in df.columns:
                result[key]["by_view"] = view_figures(split_y, probs, view_groups(df[spec.view_col]), names,
                                                      train_pos, n_train, class_groups=groups)
            if spec.multiclass:
                result["multiclass"][key] = dict(multiclass_metrics(split_y, probs, names, train_pos, spec.group_counts),
                                                 csv=display_path(spec.csv(s)))
    from cxrlt.evaluate.report import plot_per_class_ap, plot_pr_curves

    plot_per_class_ap(result, out / "per_class_ap.png", title=f"{cfg.name}: OOF AP per class")
    plot_pr_curves(y, final, names, train_pos, out / "pr_rarest.png", title=f"{cfg.name}: rarest classes (OOF)")
    save_resolved(cfg, out / "predict_config.yaml")
    # metrics.json is written last and vouches for every output: a run killed before it leaves the
    # old metrics.json whose stamps no longer match, so the next run redoes the stage
    result = frame.seal(result, outputs=[*written.values(), out / "per_class_ap.png", out / "pr_rarest.png"])
    return dict(result, skipped=False, dir=out, written=written)


def _logits(net, arch, spec, df, files, accelerator, ck, views, cfg) -> dict:
    """{view: logits (n, C)} of a fold model for the rows of `df` (in its order): one pass over the
    images, or over the studies for a study model (every image gets its study's logits)."""
    pc = cfg.predict
    bs, workers, cl = int(pc.batch_size), int(pc.workers), bool(cfg.train.channels_last)
    if arch.get("kind") == "study_fusion":
        groups = (study_groups(df, spec) if spec.study_col and spec.study_col in df.columns
                  else [np.array([i]) for i in range(len(df))])      # no study column: each image alone
        vocab = arch.get("view_kinds") or []
        kinds = (view_kinds(df[spec.view_col], vocab) if vocab and spec.view_col and spec.view_col in df.columns
                 else np.zeros(len(df), np.int64))
        ds = StudyDataset(files, groups, kinds, int(arch["max_views"]))
        loader = accelerator.prepare(make_loader(ds, max(1, bs // int(arch["max_views"])), workers, False))
        to_input = study_input(ck["mean"], ck["std"], cl)
        study_of = np.empty(len(df), np.int64)
        for i, g in enumerate(groups):
            study_of[g] = i
    else:
        loader = accelerator.prepare(make_loader(CxrDataset(files), bs, workers, False))
        to_input, study_of = None, None
    logits, _, idx, extra = predict_loader(net, loader, accelerator, ck["mean"], ck["std"], cl, views=views,
                                           to_input=to_input)
    order = np.argsort(idx.numpy())
    by_view = {"none": logits[order], **{v: t[order] for v, t in (extra or {}).items()}}
    return by_view if study_of is None else {v: t[study_of] for v, t in by_view.items()}




def _full_fit(cfg, spec) -> dict | None:
    """The full-data fit's checkpoint when `predict.use_full_fit` asks for it, checked; else None."""
    use = cfg.predict.use_full_fit
    if use not in USE_FULL:
        raise CxrltError(f"predict.use_full_fit must be one of {', '.join(USE_FULL)}, not '{use}'")
    if use == "none":
        return None
    if (cfg.get("stage2") or {}).get("from"):
        raise CxrltError(f"predict.use_full_fit={use}: a second stage has no full-data fit; set it to none")
    path = best_checkpoint(cfg, FULL)
    if not path.is_file() or not (path.parent / "done.json").is_file():   # a full fit still training is not one
        raise CxrltError(f"predict.use_full_fit={use}: no full-data fit {display_path(path)}; train it with "
                         + rerun_hint(cfg, "03_train.py", "--full"))
    if cfg.predict.oof_normalise != "none":
        raise CxrltError(f"predict.use_full_fit={use} with predict.oof_normalise={cfg.predict.oof_normalise}: the "
                         f"full-data fit has no OOF scores to fit its normalisation on")
    verified(path.parent / "done.json", [path.name], rerun_hint(cfg, "03_train.py", "--full", "--force"), strict=False)
    ck = load(path)
    check_fingerprint(ck["fingerprint"], Experiment.of(cfg).fingerprint(FULL), path,
                      "retrain it: " + rerun_hint(cfg, "03_train.py", "--full", "--force"))
    return ck


def _settings(cfg) -> dict:
    """The prediction settings that decide, with the inputs, whether stage 04 is up to date."""
    pc = cfg.predict
    gating = pc.normal_gating
    return dict(tta=pc.tta, tta_mean=pc.tta_mean, study_aggregation=bool(pc.study_aggregation),
                view_weights=dict(pc.view_weights), other_view_weight=float(pc.other_view_weight),
                normal_gating=None if gating is None else float(gating), oof_normalise=pc.oof_normalise,
                use_full_fit=pc.use_full_fit,
                bootstrap=int(pc.bootstrap), zero_shot=list(pc.get("zero_shot_labels") or []),
                data_zero_shot=list(cfg.data.get("zero_shot_labels") or []),
                group_counts=list(cfg.data.get("group_counts") or []))


def _validation(cfg, spec, train_df, y, final, raw, fold_of, arrays: dict, final_key: str, pos, n) -> dict:
    """metrics.json's validation fields: per-fold figures (`folds`; `per_fold` is their mAP), the
    drift check (scales measured on `raw`, the OOF before normalisation), figures per view group,
    and each variant against the final OOF (paired bootstrap over patients, `predict.bootstrap`
    resamples, seed 0)."""
    names = list(spec.labels)
    class_groups = count_groups(pos, *spec.group_counts) if spec.multiclass else None   # as the headline's
    folds = fold_summary(y, final, fold_of, names, pos, n, class_groups)
    pooled = map_score(y, final)
    out = dict(folds=folds, per_fold={k: v["mAP"] for k, v in folds["per_fold"].items()},
               drift=drift_check(y, pooled, folds["mean"]["mAP"], raw, fold_of, names,
                                 best_epochs(experiment_dir(cfg), folds["per_fold"]), normalised=cfg.predict.oof_normalise))
    if spec.view_col and spec.view_col in train_df.columns:
        out["by_view"] = view_figures(y, final, view_groups(train_df[spec.view_col]), names, pos, n, folds=fold_of,
                                      class_groups=class_groups)
    n_boot = int(cfg.predict.bootstrap)
    if n_boot and len(arrays) > 1:
        ap = bootstrap_ap(y, arrays, train_df[spec.patient_col], n_boot, seed=0)
        base = subset_map(ap[final_key])
        vs = {}
        for k in arrays:
            if k != final_key:
                lo, hi = interval(subset_map(ap[k]) - base)
                vs[k] = dict(d_mAP=map_score(y, arrays[k]) - pooled, lo=lo, hi=hi, distinguishable=distinguishable(lo, hi))
        out["variants_vs_final"] = vs
    return out


def _num(v, spec: str = ".4f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def summary_lines(r: dict) -> list[str]:
    """A one-screen summary of metrics.json."""
    vs, scale = r.get("variants_vs_final") or {}, (r.get("drift") or {}).get("fold_mean_prob", {})
    lines = [f"OOF mAP {r['mAP']:.4f}  mAUC {r['mAUC']:.4f}  mF1@0.5 {r['mF1']:.4f}  ({r['final']}, {r['n_images']} images)",
             *figure_lines(r),
             "  variants: " + ", ".join(f"{k} {v:.4f}" for k, v in r["variants"].items()),
             *(["  against the final, 95 % interval over patients: " + ", ".join(
                 f"{k} {_num(v['d_mAP'], '+.4f')} [{_num(v['lo'], '+.4f')}, {_num(v['hi'], '+.4f')}]"
                 + (" n.d." if v["distinguishable"] is False else "") for k, v in vs.items())] if vs else []),
             *(["  views:    " + ", ".join(f"{k} {v:.4f}" for k, v in r["tta_views"].items())
                + " (image level; combined: tta/image)"] if len(r.get("tta_views", {})) > 1 else []),
             "  folds:    " + ", ".join(f"{k}: {_num(v)}" + (f" (mean prob {scale[k]:.3f})" if k in scale else "")
                                       for k, v in r["per_fold"].items())]
    lines += multiclass_lines(r)
    pcs = sorted(((v["AP"], k) for k, v in r["per_class"].items() if v["AP"] is not None), reverse=True)
    lines.append("  best:  " + ", ".join(f"{k} {a:.3f}" for a, k in pcs[:4]))
    lines.append("  worst: " + ", ".join(f"{k} {a:.3f}" for a, k in pcs[-4:]))
    if r["left_out"]:
        lines.append(f"  no positive in the scored set (left out): {', '.join(r['left_out'])}")
    z = r.get("zero_shot") or {}
    if z.get("labels"):
        lines.append(f"  zero-shot (never trained on): mAP {_num(z['mAP'])} vs chance {_num(z['chance'])} (prevalence; "
                     f"random scores {_num(z.get('chance_random'))}), label-agnostic (mean trained prob) "
                     f"{_num(z.get('agnostic'))}, "
                     f"trained mAP {_num(z['trained_mAP'])}: " + ", ".join(
                         f"{k} {_num(v['AP'], '.3f')} (chance {_num(v['prevalence'], '.3f')})" for k, v in z["labels"].items()))
    elif z.get("columns"):
        lines.append(f"  zero-shot columns (no labels here to score them): {', '.join(z['columns'])}")
    return lines


def multiclass_lines(r: dict) -> list[str]:
    """The single-label benchmark's figures of each labelled split (argmax of the softmax)."""
    mc = r.get("multiclass") or {}
    if not mc:
        return []
    first = next(iter(mc.values()))
    lines = [f"  multiclass (argmax; groups: {first['group_rule']}):",
             f"    {'split':34s} {'head':>6s} {'medium':>6s} {'tail':>6s} {'avg':>6s} {'overall':>7s} {'acc':>6s} "
             f"{'bAcc':>6s} {'mF1':>6s}"]
    for key, m in mc.items():
        g = m["groups"]
        lines.append(f"    {key + ': ' + str(m['csv']).split('/')[-1]:34.34s} {_num(g['head'], '.3f'):>6s} "
                     f"{_num(g['medium'], '.3f'):>6s} {_num(g['tail'], '.3f'):>6s} {_num(m['avg'], '.3f'):>6s} "
                     f"{_num(m['overall'], '.3f'):>7s} {_num(m['accuracy'], '.3f'):>6s} {_num(m['bAcc'], '.3f'):>6s} "
                     f"{_num(m['mF1'], '.3f'):>6s}")
    return lines
