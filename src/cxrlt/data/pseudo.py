"""Teacher soft targets with a leak guard (issue 26: pseudo-labels and distillation), from files alone.

A student fold k may train on soft targets sigmoid(z / T) of films it is not scored on: the
competition's test or development films (pseudo-labels), or its own fold-k training films
(distillation). Each target must come from the teacher's fold-k model only: that model was trained
on the same folds (the same assignment hash) without fold k, so nothing of fold k's labels reaches
student fold k. A teacher's fold-mean test predictions, or its OOF values, would carry fold k's labels
(its other fold models trained on fold k) and are never used.

Refused in one line: a teacher trained with another fold assignment (or whose fold k is not
finished, or was retrained since its logits were written); a teacher that trained on a film to be
pseudo-labelled (its training or validation CSV, or its data.extra, holds the film: its output
there is a memory of the label, not a prediction); a student that would be its own teacher.

The teacher's fold-k logits per split are written beside it by one inference pass
(`cxrlt.train.teacher.teacher_logits`, also `python -m cxrlt.train.teacher`), as
`<teacher>/fold<k>/teacher_logits_<split>.csv` with a `.json` stamp naming the checkpoint (size,
mtime), its fold assignment hash and the films; this module reads them (no torch) and checks the
stamp against the checkpoint as it is now.

What the trainer calls: `pseudo_targets(cfg, teacher, splits, fold, temperature) -> PseudoRows`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlt.errors import CxrltError
from cxrlt.experiment import experiment_path
from cxrlt.fileio import display_path, intact, project_path, read_table, stamps
from cxrlt.findings import match_labels

PSEUDO_SPLITS = ("test", "dev", "train", "folder")   # train: the fold's own films (distillation); folder: unlabelled
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
FOLDER_PREFIX = "folder:"
ID_COL = "id"


def logits_file(teacher_dir: Path, fold: int, split: str) -> Path:
    return Path(teacher_dir) / f"fold{int(fold)}" / f"teacher_logits_{split}.csv"


def ids_hash(ids) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(f"{i}\n".encode())
    return h.hexdigest()[:16]


def pseudo_folder(cfg) -> Path | None:
    """train.pseudo.folder under data.input_dir, or None."""
    f = cfg.train.pseudo.folder
    return project_path(cfg.data.input_dir) / f if f else None


def folder_films(cfg) -> list[tuple[str, str]]:
    """(id, path) of every image file under train.pseudo.folder, in path order; ids are
    folder:<path relative to the folder>, so they never collide with a dataset's."""
    root = pseudo_folder(cfg)
    if root is None or not root.is_dir():
        raise CxrltError(f"train.pseudo.folder: {display_path(root) if root else 'null'} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CxrltError(f"train.pseudo.folder: no {'/'.join(IMAGE_SUFFIXES)} file under {display_path(root)}")
    return [(FOLDER_PREFIX + p.relative_to(root).as_posix(), str(p)) for p in files]


def folder_cache(cache_cfg, cfg):
    """Where the films of cfg's train.pseudo.folder are cached at cache_cfg's image size (the student's,
    or a teacher's): <cache.dir>/pseudo/<folder name>/<size>_<resize>_<format>/."""
    from cxrlt.data.images import Cache

    c = cache_cfg.cache
    name = Path(cfg.train.pseudo.folder).name or "folder"
    return Cache(project_path(c.dir) / "pseudo" / name / f"{int(c.size)}_{c.resize}_{c.format}", int(c.size),
                 c.resize, c.format)


def pseudo_films(cfg, split: str, fold: int, cache_cfg=None, check_cache: bool = True):
    """(ids, image files) of the student's films that get soft targets for fold `fold`: every film of
    the test or development CSV, the student's fold-k training part (split train), or every film of
    train.pseudo.folder. cache_cfg: whose image cache (size) the files are looked up in (default the
    student's; a teacher's for its inference pass); check_cache: each must be cached (stage 01)."""
    from cxrlt.data.experiment import Experiment
    from cxrlt.data.images import Cache

    cache_cfg = cache_cfg or cfg
    ids, source = _film_ids(cfg, split, fold)
    cache = folder_cache(cache_cfg, cfg) if split == "folder" else Cache.from_config(cache_cfg, Experiment.of(cfg).spec.name)
    return ids, (cache.require(ids, source, cfg) if check_cache else [cache.path(i) for i in ids])


def teacher_parts(cfg, teacher: str | Path, fold: int) -> list[tuple[Path, float]]:
    """[(experiment folder, weight)] behind a teacher for student fold `fold`: an experiment is itself
    (weight 1); a blend (its folder holds weights.json) is its members, weighted as the blend weighs
    them, with the weights fitted without fold k (blend.mode fit: weights.json's honest_weights) or
    equal (mean). A rank or view-routed blend gives no probabilities to learn from: refused."""
    from cxrlt.data.experiment import Experiment

    tdir = experiment_path(str(teacher))   # a name under experiments/ or a folder
    wfile = tdir / "weights.json"
    if not wfile.is_file():
        return [(tdir, 1.0)]
    rec = json.loads(wfile.read_text())
    members = list(Experiment.from_folder(tdir).cfg.blend.members)
    if rec.get("mode") == "mean":
        weights = {m: 1.0 / len(members) for m in members}
    elif rec.get("mode") == "fit" and (rec.get("honest_weights") or {}).get(str(int(fold))) is not None:
        weights = rec["honest_weights"][str(int(fold))]    # fitted on the other folds' OOF rows only
    else:
        raise CxrltError(f"teacher {display_path(tdir)}: a blend.mode={rec.get('mode')} blend"
                         + (" without weights fitted per held-out fold" if rec.get("mode") == "fit" else "")
                         + "; a teacher blend must be mode fit (K folds) or mean: its members' probabilities, weighted")
    return [(experiment_path(m), float(w)) for m, w in weights.items() if float(w) > 0]


def check_teacher(cfg, teacher: str | Path, splits) -> "object":
    """The teacher's Experiment, after the checks that need no checkpoint: not the student itself,
    the same folds (scheme, k), every student fold finished there, and no pseudo-labelled film among
    what it trained on. The fold assignment itself is compared with each checkpoint's record
    (teacher_logits) and with each logits file's stamp (pseudo_targets)."""
    from cxrlt.data.datasets import read_split
    from cxrlt.data.experiment import Experiment
    from cxrlt.experiment import fold_ids

    tdir = experiment_path(str(teacher))   # a name under experiments/ or a folder
    student = Experiment.of(cfg)
    if tdir.resolve() == student.dir.resolve():
        raise CxrltError(f"teacher {display_path(tdir)} is the student's own folder; name a finished experiment")
    t = Experiment.from_folder(tdir)
    tc = t.cfg
    if (tc.folds.scheme, int(tc.folds.k)) != (cfg.folds.scheme, int(cfg.folds.k)):
        raise CxrltError(f"teacher {display_path(tdir)}: trained with folds.scheme={tc.folds.scheme}, "
                         f"folds.k={tc.folds.k}, the student has {cfg.folds.scheme}, {cfg.folds.k}: its fold-k model "
                         f"saw the student's fold-k films; use a teacher trained on the student's folds")
    for k in fold_ids(cfg):
        if not t.layout.finished(k):
            raise CxrltError(f"teacher {display_path(tdir)}: fold {k} is not finished (no best.pt and done.json in "
                             f"{display_path(t.layout.fold(k))}); a fold's targets come from that fold's model only")
    films = {s for s in splits if s != "train"}
    if films:
        trained = set(read_split(t.spec, "train", labels="none")[t.spec.id_col].astype(str))
        if t.spec.val_csv is not None and t.spec.val_csv.is_file():
            trained |= set(read_split(t.spec, "val", labels="none")[t.spec.id_col].astype(str))
        if (tc.data.get("extra") or []):
            from cxrlt.data.external import extra_tables

            for tab in extra_tables(tc, t.spec.labels):
                trained |= set(map(str, tab.ids))
        if "folder" in films:
            _check_folder_unseen(cfg, t, tdir)
        for s in sorted(films - {"folder"}):
            path = student.spec.csv(s)
            if path is None or not path.is_file():
                continue
            ids = set(read_split(student.spec, s, labels="none")[student.spec.id_col].astype(str))
            both = trained & ids
            if both:
                raise CxrltError(f"teacher {display_path(tdir)} trained on {len(both)} of the {s} films to be "
                                 f"pseudo-labelled (e.g. '{sorted(both)[0]}'): its outputs there remember their labels; "
                                 f"use a teacher that never trained on them")
    return t


def _check_folder_unseen(cfg, t, tdir) -> None:
    """A film of train.pseudo.folder that is one of the teacher's training images (the same file) is
    refused: the teacher's output there remembers its label."""
    import os

    from cxrlt.data.datasets import image_paths, read_split

    mine = {os.path.realpath(p): i for i, p in folder_films(cfg)}
    seen = set()
    for split in ("train", "val"):
        if split == "val" and (t.spec.val_csv is None or not t.spec.val_csv.is_file()):
            continue
        df = read_split(t.spec, split, labels="none")
        seen |= {os.path.realpath(p) for p in image_paths(t.spec, df, split, True)}
    both = sorted(set(mine) & seen)
    if both:
        raise CxrltError(f"teacher {display_path(tdir)} trained on {len(both)} of the films of train.pseudo.folder "
                         f"(e.g. '{mine[both[0]]}'): its outputs there remember their labels; leave them out of the folder")


@dataclass(frozen=True)
class PseudoRows:
    """Soft targets of student fold k: rows of the films of `splits` (split by split, in CSV order)."""
    ids: np.ndarray          # the films' own ids (the student's cache holds them)
    files: list[Path]        # cached images
    y: np.ndarray            # (N, C) float32 in [0, 1] over the student's labels; NaN: the teacher has no such label
    splits: np.ndarray       # the split of each row
    fold: int

    def __len__(self) -> int:
        return len(self.ids)


def read_teacher_logits(cfg, teacher, fold: int, split: str, ids, assignment: str) -> tuple[np.ndarray, list[str]]:
    """The teacher's fold-k logits of `ids` (in order) and its label names, after checking the stamp:
    written from fold k's best.pt as it is now, with the student's fold assignment, for these films."""
    f = logits_file(teacher.dir, fold, split)
    stamp = f.with_suffix(".json")
    hint = (f"write them with python -m cxrlt.train.teacher --config {display_path(cfg.recipe)} "
            f"--teacher {display_path(teacher.dir)} --splits {split}")
    if not f.is_file() or not stamp.is_file():
        raise CxrltError(f"{display_path(f)}: no fold-{fold} teacher logits for '{split}' yet; {hint}")
    rec = json.loads(stamp.read_text())
    best = teacher.layout.best(fold)
    if rec.get("checkpoint") != stamps({"best.pt": best})["best.pt"] or not intact(rec.get("outputs"), f.parent):
        raise CxrltError(f"{display_path(f)}: written from another {display_path(best)} (retrained since) or "
                         f"rewritten; {hint}")
    if rec.get("folds") != assignment:
        raise CxrltError(f"{display_path(best)}: trained with fold assignment {rec.get('folds')}, the student's is "
                         f"{assignment}: its fold-{fold} model may have seen the student's fold-{fold} films; use a "
                         f"teacher trained on the student's folds (or re-make the folds it was trained with)")
    if rec.get("ids") != ids_hash(ids):
        raise CxrltError(f"{display_path(f)}: written for other '{split}' films than the student's; {hint}")
    labels = list(rec["labels"])
    df = read_table(f, ID_COL)
    if list(df.columns) != [ID_COL, *labels] or list(df[ID_COL].astype(str)) != [str(i) for i in ids]:
        raise CxrltError(f"{display_path(f)}: columns or rows differ from its stamp; {hint}")
    return df[labels].to_numpy(np.float64), labels


def pseudo_targets(cfg, teacher: str | Path, splits, fold: int, temperature: float = 1.0,
                   check_cache: bool = True) -> PseudoRows:
    """Student fold `fold`'s soft targets sigmoid(z / temperature) from the teacher's fold-`fold`
    model only, for the films of `splits` (test, dev: pseudo-labels; train: distillation on the
    fold's training part). Student labels the teacher lacks (matched by name and alias) are NaN:
    left out of the loss. check_cache=False skips the student's image-cache check (tests)."""
    from cxrlt.data.experiment import Experiment

    if not float(temperature) > 0:
        raise CxrltError(f"pseudo-label temperature must be > 0, not {temperature}")
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise CxrltError("pseudo-labels: name at least one split (test, dev or train)")
    parts = [(check_teacher(cfg, d, splits), w) for d, w in teacher_parts(cfg, teacher, fold)]
    spec, assignment = Experiment.of(cfg).spec, Experiment.of(cfg).assignment()
    ids_all, files_all, y_all, split_all = [], [], [], []
    for s in splits:
        ids, files = pseudo_films(cfg, s, fold, check_cache=check_cache)
        y = np.zeros((len(ids), len(spec.labels)), np.float64)
        for t, w in parts:      # a blend: its members' probabilities, weighted
            z, tl = read_teacher_logits(cfg, t, fold, s, ids, assignment)
            match = match_labels(tl, list(spec.labels))    # {student column: teacher column}
            if not match:
                raise CxrltError(f"teacher {display_path(t.dir)}: none of its labels names one of the student's")
            p = np.full((len(ids), len(spec.labels)), np.nan)
            for j, c in match.items():
                p[:, j] = 1.0 / (1.0 + np.exp(-z[:, c] / float(temperature)))
            y += w * p          # a label some member lacks stays NaN: left out of the loss
        y = y.astype(np.float32)
        ids_all.append(np.asarray(ids, dtype=object))
        files_all += list(files)
        y_all.append(y)
        split_all.append(np.full(len(ids), s, dtype=object))
    return PseudoRows(np.concatenate(ids_all), files_all, np.concatenate(y_all), np.concatenate(split_all), int(fold))


def _film_ids(cfg, split: str, fold: int):
    """(ids, the CSV they come from) of pseudo_films."""
    from cxrlt.data.datasets import read_split
    from cxrlt.data.experiment import Experiment
    from cxrlt.data.folds import folds_path, read_folds
    from cxrlt.data.splits import given_table, view_rows
    from cxrlt.experiment import given_split

    spec = Experiment.of(cfg).spec
    if split not in PSEUDO_SPLITS:
        raise CxrltError(f"pseudo-label splits are {', '.join(PSEUDO_SPLITS)}, not '{split}'")
    if split == "folder":
        return np.array([i for i, _ in folder_films(cfg)], dtype=object), pseudo_folder(cfg)
    if split == "train":
        if given_split(cfg):
            df, fold_of = given_table(cfg, spec, labels="none")
        else:
            df = read_split(spec, "train", labels="none")
            folds = read_folds(folds_path(cfg, spec), spec, df, k=int(cfg.folds.k)).set_index(spec.id_col).fold
            df = view_rows(cfg, spec, df)
            fold_of = folds.loc[df[spec.id_col]].to_numpy()
        if not (fold_of == int(fold)).any():
            raise CxrltError(f"fold {fold}: the student's folds hold no such fold ({sorted(set(fold_of.tolist()))})")
        return df[spec.id_col].to_numpy()[fold_of != int(fold)], spec.train_csv
    path = spec.csv(split)
    if path is None or not path.is_file():
        raise CxrltError(f"pseudo-labels on '{split}': dataset '{spec.name}' has no such CSV "
                         f"({display_path(path) if path else 'none in the preset'})")
    return read_split(spec, split, labels="none")[spec.id_col].to_numpy(), path

