"""The drivers of stages 01 and 02 over the data wing's pieces: the image cache of a recipe (its
competition CSVs, then each external set of data.extra) and its folds file, each under its stage
frame (lock, skip when complete, --force). They sit above the `Experiment` (data.experiment), which
resolves the recipe's dataset; the modules they call (images, folds, external) take a resolved spec.
"""
from __future__ import annotations

import os

from cxrlt.data.experiment import Experiment
from cxrlt.data.folds import folds_path, imbalance, make_folds, positives_per_fold, read_folds
from cxrlt.data.images import Cache, cache_images, safe_name
from cxrlt.errors import CxrltError


def build_folds(cfg, force: bool = False) -> dict:
    """Stage 02 under the folds file's lock: a second run on the same folds stops at once."""
    from cxrlt.stage import stage_frame

    path = folds_path(cfg, Experiment.of(cfg).spec)
    with stage_frame(path.parent, None, f"folds file {path.name}", force=force, lock=path.with_name(f".{path.name}.lock")):
        return _build_folds(cfg, force)


def _build_folds(cfg, force: bool = False) -> dict:
    """Stage 02: write folds/<dataset>_folds.csv (+ the resolved config beside it) unless present."""
    from cxrlt.config import rerun_hint, save_resolved
    from cxrlt.data.datasets import read_split
    from cxrlt.fileio import display_path, write_csv

    spec = Experiment.of(cfg).spec
    df = read_split(spec, "train", labels="required")
    path = folds_path(cfg, spec)
    skipped = False
    if path.is_file() and not force:
        folds = read_folds(path, spec, df, k=int(cfg.folds.k))
        made = path.with_suffix(".yaml")
        if made.is_file():
            import yaml

            seed = (yaml.safe_load(made.read_text()) or {}).get("folds", {}).get("seed")
            if seed is not None and int(seed) != int(cfg.folds.seed):
                raise CxrltError(f"{display_path(path)}: made with folds.seed={seed}, the recipe says "
                                 f"{cfg.folds.seed}; rebuild with {rerun_hint(cfg, '02_make_folds.py', '--force')}")
        skipped = True
    else:
        folds = make_folds(df, spec, int(cfg.folds.k), int(cfg.folds.seed))
        write_csv(path, folds)
        save_resolved(cfg, path.with_suffix(".yaml"))
    table = positives_per_fold(df, folds, spec)
    table.loc["(images)"] = folds.fold.value_counts().sort_index()
    table["total"] = table.sum(axis=1)
    k = int(cfg.folds.k)
    checked = table[table["total"] >= 5 * k].drop(columns="total")
    return dict(path=path, skipped=skipped, table=table, imbalance=imbalance(checked),
                n_images=len(df), n_patients=df[spec.patient_col].nunique())


def prepare_dataset_cache(cfg, force: bool = False, progress: bool = True) -> dict:
    """Stage 01 under the cache folder's lock: a second run on the same cache stops at once. Then
    each external set of data.extra into its own cache folder, under that folder's lock
    (`extra`: one result per set, see prepare_extra_cache), and the films of train.pseudo.folder
    (`pseudo`, see prepare_pseudo_cache)."""
    from cxrlt.stage import stage_frame

    folder = Cache.from_config(cfg, Experiment.of(cfg).spec.name).folder
    with stage_frame(folder, None, f"image cache {folder.name}", force=force, lock=folder.parent / f".{folder.name}.lock"):
        out = _prepare_dataset_cache(cfg, force, progress)
    out["extra"] = prepare_extra_cache(cfg, force, progress)
    out["pseudo"] = prepare_pseudo_cache(cfg, force, progress)
    return out


def prepare_extra_cache(cfg, force: bool = False, progress: bool = True) -> list[dict]:
    """Stage 01 for data.extra: every external set's films into <cache.dir>/extra/<set>/<size>_<resize>_<format>/,
    keyed by the set's own ids, resumable and skipping what is cached as the main cache does (sources.csv).
    Missing or undecodable films fail the stage after the others are cached, listed in the set's failed.csv."""
    from cxrlt.data.external import extra_cache_jobs
    from cxrlt.fileio import display_path

    jobs = [(spec.name, spec.csv, f"{spec.where} under {display_path(spec.image_root)}", cache, items)
            for spec, cache, items in extra_cache_jobs(cfg)]
    return _cache_sets(cfg, jobs, force, progress, "external sets")


def prepare_pseudo_cache(cfg, force: bool = False, progress: bool = True) -> list[dict]:
    """Stage 01 for train.pseudo.folder: its films cached at the student's image size and at each
    teacher model's (the teacher's inference pass reads them there), in <cache.dir>/pseudo/<folder>/."""
    from cxrlt.data.pseudo import folder_cache, folder_films, pseudo_folder, teacher_parts
    from cxrlt.fileio import display_path

    if not (cfg.train.pseudo["from"] and cfg.train.pseudo.folder):
        return []
    items = folder_films(cfg)
    sizing = [cfg]
    try:
        parts = {d for k in Experiment.of(cfg).fold_ids for d, _ in teacher_parts(cfg, cfg.train.pseudo["from"], k)}
        sizing += [Experiment.from_folder(d).cfg for d in sorted(parts)]
    except CxrltError as e:       # no teacher yet: its size is cached when stage 01 runs again after it
        print(f"note: train.pseudo.folder cached at the student's size only ({e})")
    caches = {folder_cache(c, cfg).folder: folder_cache(c, cfg) for c in sizing}
    where = display_path(pseudo_folder(cfg))
    jobs = [("train.pseudo.folder", pseudo_folder(cfg), where, cache, items) for cache in caches.values()]
    return _cache_sets(cfg, jobs, force, progress, "train.pseudo.folder")


def _cache_sets(cfg, jobs, force: bool, progress: bool, what: str) -> list[dict]:
    """Cache each (name, source file or folder, where, Cache, [(id, path)]) under its own frame."""
    import shutil
    import sys

    import pandas as pd

    from cxrlt.config import save_resolved
    from cxrlt.fileio import display_path, write_csv
    from cxrlt.stage import stage_frame

    results, failed = [], []
    for name, source, where, cache, items in jobs:
        folder = cache.folder
        names = pd.Series([safe_name(i) for i, _ in items])
        if names.duplicated().any():
            clash = [i for (i, _), n in zip(items, names) if n == names[names.duplicated()].iloc[0]]
            raise CxrltError(f"{display_path(source)}: ids {clash[:2]} map to the same cache file name")
        with stage_frame(folder, None, f"image cache {name}/{folder.name}", force=force,
                         lock=folder.parent / f".{folder.name}.lock"):
            if force and folder.exists():
                shutil.rmtree(folder)
            missing = [(i, p) for i, p in items if not os.path.isfile(p)]
            if missing:
                print(f"warning: {display_path(source)}: {len(missing)} of {len(items)} image files of {where} "
                      f"missing, e.g. {missing[0][1]}", file=sys.stderr)
            written, skipped, failures = cache_images(cache, items, int(cfg.cache.workers or 0), progress,
                                                      int(cfg.cache.max_image_pixels))
            save_resolved(cfg, folder / "prepare_config.yaml")
            failed_csv = folder / "failed.csv"
            if failures:
                write_csv(failed_csv, pd.DataFrame(failures, columns=["id", "path", "reason"]))
                for image_id, src, reason in failures[:20]:
                    print(f"  failed: {name} {image_id} ({display_path(src)}): {reason}", file=sys.stderr)
                failed.append(f"{len(failures)} of {len(items)} in {display_path(failed_csv)}")
            else:
                failed_csv.unlink(missing_ok=True)
        results.append(dict(name=name, folder=folder, written=written, skipped=skipped, total=len(items)))
    if failed:
        raise CxrltError(f"{what}: images could not be cached ({'; '.join(failed)}); fix or remove them and re-run")
    return results


def _prepare_dataset_cache(cfg, force: bool = False, progress: bool = True) -> dict:
    """Stage 01: cache every image the train/dev/test CSVs reference.

    Missing or undecodable images are reported with id and path; the others are cached, and the
    stage then fails listing them all (failed.csv beside the cache), so a re-run after fixing
    them only does what is left.
    """
    import shutil
    import sys

    import pandas as pd

    from cxrlt.config import save_resolved
    from cxrlt.data.datasets import SPLITS, image_paths, missing_images, read_split
    from cxrlt.fileio import display_path, write_csv

    spec = Experiment.of(cfg).spec
    cache = Cache.from_config(cfg, spec.name)
    frames, notes = {}, []
    for split in SPLITS:
        path = spec.csv(split)
        if split != "train" and (path is None or not path.is_file()):
            if not (split == "val" and path is None):     # most presets have no validation CSV: no note
                notes.append(f"no {split} CSV ({display_path(path) if path else 'none in preset'}); skipped")
            continue
        frames[split] = read_split(spec, split, labels={"train": "required", "val": "auto", "dev": "auto",
                                                        "test": "none"}[split])
    allow_outside = bool(cfg.data.allow_outside_root)
    items: dict[str, str] = {}
    for split, df in frames.items():
        for image_id, path in zip(df[spec.id_col], image_paths(spec, df, split, allow_outside)):
            src = str(path)
            if items.setdefault(image_id, src) != src:
                raise CxrltError(f"{display_path(spec.csv(split))}: id '{image_id}' points to two files "
                                 f"({items[image_id]} and {src})")
    names = pd.Series([safe_name(i) for i in items])
    if names.duplicated().any():
        clash = [i for i, n in zip(items, names) if n == names[names.duplicated()].iloc[0]]
        raise CxrltError(f"ids {clash[:2]} map to the same cache file name; rename them in the CSVs")
    if "train" in frames and "test" in frames:
        both = set(frames["train"][spec.id_col]) & set(frames["test"][spec.id_col])
        if both:
            print(f"warning: {len(both)} test ids are training ids too (e.g. '{sorted(both)[0]}'): the test CSV "
                  f"{display_path(spec.csv('test'))} may be the wrong file", file=sys.stderr)
    if force and cache.folder.exists():
        shutil.rmtree(cache.folder)
    for split, df in frames.items():
        msg = missing_images(spec, df, split, allow_outside)
        if msg:
            print(f"warning: {msg}", file=sys.stderr)
    written, skipped, failures = cache_images(cache, list(items.items()), int(cfg.cache.workers or 0), progress,
                                              int(cfg.cache.max_image_pixels))
    save_resolved(cfg, cache.folder / "prepare_config.yaml")
    failed_csv = cache.folder / "failed.csv"
    if failures:
        write_csv(failed_csv, pd.DataFrame(failures, columns=["id", "path", "reason"]))
        for image_id, src, reason in failures:
            print(f"  failed: {image_id} ({display_path(src)}): {reason}", file=sys.stderr)
        raise CxrltError(f"{len(failures)} of {len(items)} images could not be cached (listed above and in "
                         f"{display_path(failed_csv)}); fix or remove them and re-run")
    failed_csv.unlink(missing_ok=True)
    return dict(folder=cache.folder, written=written, skipped=skipped, total=len(items),
                splits={k: len(v) for k, v in frames.items()}, notes=notes)
