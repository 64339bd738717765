"""Dataset presets (docs/design.md, "Datasets and presets") and validation of the competition CSVs.

`resolve_dataset(cfg.data)` gives a `DatasetSpec` with absolute paths and column names;
`read_split(spec, "train")` reads one CSV and checks it, raising `CxrltError` with one line that
names the file, row and column at fault.
"""
from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.choices import TASKS
from cxrlt.data.labels import (
    LABELS_2023,
    LABELS_2024,
    LABELS_2024_TASK2,
    LABELS_2026,
    ZERO_SHOT_2024_TASK3,
    ZERO_SHOT_2026_TASK2,
    LABELS_DEMO_SINGLE,
    LABELS_MIMIC_CXR_LT,
    LABELS_NIH_CXR_LT,
)
from cxrlt.errors import CxrltError, clip
from cxrlt.fileio import display_path, project_path, read_table

SPLITS = ("train", "val", "dev", "test")
# Benchmark groups of a multiclass task by training images per class (Holste et al., MICCAI DALI 2022):
# tail < 100 <= medium <= 1000 < head.
BENCHMARK_GROUPS = (100, 1000)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    dir: Path
    image_root: Path
    train_csv: Path
    val_csv: Path | None
    dev_csv: Path | None
    test_csv: Path | None
    sample_submission: Path | None
    id_col: str
    path_col: str
    patient_col: str
    study_col: str | None
    view_col: str | None
    labels: tuple[str, ...]
    normal_label: str | None = None
    normal_allows: tuple[str, ...] = ()
    label_map: dict = field(default_factory=dict)
    holdout_labels: tuple[str, ...] = ()       # dataset labels left out of training (`labels` lacks them)
    zero_shot_labels: tuple[str, ...] = ()     # labels without a training column (a zero-shot preset's)
    submission: tuple[str, ...] | None = None  # the submission's label columns; None = `labels`
    task: str = "multilabel"     # multilabel (sigmoid per class) | multiclass (one label per image, softmax)
    group_counts: tuple = ()     # multiclass: (tail below, head above) training images; () = prevalence groups

    @property
    def submission_labels(self) -> tuple[str, ...]:
        return self.submission if self.submission is not None else self.labels

    def csv(self, split: str) -> Path | None:
        return {"train": self.train_csv, "val": self.val_csv, "dev": self.dev_csv, "test": self.test_csv}[split]

    @property
    def multiclass(self) -> bool:
        return self.task == "multiclass"


_MIMIC_2023 = dict(id_col="dicom_id", path_col="path", patient_col="subject_id",
                   study_col="study_id", view_col="ViewPosition")
_MIMIC_2024 = dict(_MIMIC_2023, path_col="fpath")
# The single-label long-tail benchmark (Holste et al. 2022; github.com/VITA-Group/LongTailCXR labels/):
# train / balanced-val (15 per class) / test (natural) / balanced-test (30 per class). Here the
# balanced validation CSV is `val_csv` (folds.scheme=given selects the epoch on it), the balanced
# test set is `dev_csv` and the natural test set `test_csv`; both test sets are labelled and scored.
_SINGLE = dict(task="multiclass", group_counts=list(BENCHMARK_GROUPS))

# Paths are relative to data.input_dir (default: input/).
PRESETS: dict[str, dict] = {
    "cxr-lt-2023": dict(
        dir="cxr-lt-2023", image_root="mimic-cxr-jpg", train_csv="train.csv",
        dev_csv="development.csv", test_csv="test.csv", sample_submission=None,
        labels=LABELS_2023, normal_label="No Finding", normal_allows=["Support Devices"], **_MIMIC_2023),
    "cxr-lt-2024-task1": dict(
        dir="cxr-lt-2024", image_root="mimic-cxr-jpg", train_csv="train_labeled.csv",
        dev_csv="development.csv", test_csv="test_task1.csv", sample_submission=None,
        labels=LABELS_2024, normal_label="Normal", normal_allows=["Support Devices"], **_MIMIC_2024),
    "cxr-lt-2024-task2": dict(
        dir="cxr-lt-2024", image_root="mimic-cxr-jpg", train_csv="train_labeled.csv",
        dev_csv="development.csv", test_csv="test_task2.csv", sample_submission=None,
        labels=LABELS_2024_TASK2, normal_label="Normal", normal_allows=["Support Devices"], **_MIMIC_2024),
    # task 3: zero-shot findings on the 2024 test images; trained on the task-1 labels
    "cxr-lt-2024-task3": dict(
        dir="cxr-lt-2024", image_root="mimic-cxr-jpg", train_csv="train_labeled.csv",
        dev_csv="development.csv", test_csv="test_task3.csv", sample_submission=None,
        labels=LABELS_2024, normal_label="Normal", normal_allows=["Support Devices"],
        zero_shot_labels=ZERO_SHOT_2024_TASK3, submission_labels=ZERO_SHOT_2024_TASK3, **_MIMIC_2024),
    "cxr-lt-2026": dict(
        dir="cxr-lt-2026", image_root="cxr-lt-2026/images", train_csv="CXRLT_2026_training.csv",
        dev_csv=None, test_csv="CXRLT_2026_TEST_ALL_TASK1.csv", sample_submission=None,
        id_col="ImageID", path_col="ImageID", patient_col="PatientID", study_col=None, view_col=None,
        labels=LABELS_2026, normal_label="Normal", normal_allows=["Support Devices"]),
    # task 2: zero-shot findings on the 2026 test images; trained on the 30 PadChest labels
    "cxr-lt-2026-task2": dict(
        dir="cxr-lt-2026", image_root="cxr-lt-2026/images", train_csv="CXRLT_2026_training.csv",
        dev_csv=None, test_csv="CXRLT_2026_TEST_ALL_TASK2.csv", sample_submission=None,
        id_col="ImageID", path_col="ImageID", patient_col="PatientID", study_col=None, view_col=None,
        labels=LABELS_2026, normal_label="Normal", normal_allows=["Support Devices"],
        zero_shot_labels=ZERO_SHOT_2026_TASK2, submission_labels=ZERO_SHOT_2026_TASK2),
    "demo": dict(
        dir="demo", image_root="demo", train_csv="train.csv", dev_csv="development.csv",
        test_csv="test.csv", sample_submission="sample_submission.csv",
        labels=LABELS_2023, normal_label="No Finding", normal_allows=["Support Devices"], **_MIMIC_2023),
    "nih-cxr-lt": dict(
        dir="nih-cxr-lt", image_root="nih-chestxray14/images", train_csv="nih-cxr-lt_single-label_train.csv",
        val_csv="nih-cxr-lt_single-label_balanced-val.csv", dev_csv="nih-cxr-lt_single-label_balanced-test.csv",
        test_csv="nih-cxr-lt_single-label_test.csv", sample_submission=None, id_col="id", path_col="id",
        patient_col="subject_id", study_col=None, view_col=None, labels=LABELS_NIH_CXR_LT,
        normal_label="No Finding", **_SINGLE),
    "mimic-cxr-lt": dict(
        dir="mimic-cxr-lt", image_root="mimic-cxr-jpg", train_csv="mimic-cxr-lt_single-label_train.csv",
        val_csv="mimic-cxr-lt_single-label_balanced-val.csv", dev_csv="mimic-cxr-lt_single-label_balanced-test.csv",
        test_csv="mimic-cxr-lt_single-label_test.csv", sample_submission=None, id_col="dicom_id", path_col="path",
        patient_col="subject_id", study_col="study_id", view_col=None, labels=LABELS_MIMIC_CXR_LT,
        normal_label="No Finding", **_SINGLE),
    # the synthetic single-label demo (src/00_make_demo_data.py --single-label): NIH-CXR-LT's file layout,
    # a few hundred images, groups scaled to its size
    "demo-single-label": dict(
        dir="demo-single-label", image_root="demo-single-label", train_csv="train.csv", val_csv="balanced-val.csv",
        dev_csv="balanced-test.csv", test_csv="test.csv", sample_submission=None, id_col="id", path_col="path",
        patient_col="subject_id", study_col=None, view_col=None, labels=LABELS_DEMO_SINGLE,
        normal_label="No Finding", task="multiclass", group_counts=[40, 120]),
}
REQUIRED_CUSTOM = ("dir", "train_csv", "id_col", "path_col", "patient_col", "labels")
_FIELDS = ("name", "dir", "image_root", "train_csv", "val_csv", "dev_csv", "test_csv", "sample_submission",
           "id_col", "path_col", "patient_col", "study_col", "view_col", "labels",
           "normal_label", "normal_allows", "label_map", "holdout_labels", "zero_shot_labels", "submission_labels",
           "task", "group_counts")


def resolve_dataset(data) -> DatasetSpec:
    """Preset values, overridden by any non-null field of the recipe's `data:` section."""
    preset = data.get("preset")
    if preset == "custom":
        base: dict = {}
        missing = [k for k in REQUIRED_CUSTOM if not data.get(k)]
        if missing:
            raise CxrltError(f"data.preset=custom needs data.{', data.'.join(missing)} in the recipe")
    elif preset in PRESETS:
        base = dict(PRESETS[preset])
    else:
        raise CxrltError(f"data.preset '{preset}' is not one of {', '.join(list(PRESETS) + ['custom'])}")
    vals = dict(base, name=preset if preset != "custom" else None)
    vals.update({k: data[k] for k in _FIELDS if data.get(k) is not None})
    vals["name"] = vals.get("name") or Path(str(vals["dir"])).name
    input_dir = project_path(data.get("input_dir") or "input")
    ddir = input_dir / vals["dir"]

    def under(folder: Path, p):
        return None if p is None else (Path(p) if Path(p).is_absolute() else folder / p)

    labels = tuple(vals["labels"])
    if len(set(labels)) != len(labels):
        raise CxrltError("data.labels lists a label twice")
    holdout = tuple(dict.fromkeys(vals.get("holdout_labels") or ()))
    unknown = [x for x in holdout if x not in labels]
    if unknown:
        raise CxrltError(f"data.holdout_labels: '{unknown[0]}' is not one of the dataset's labels")
    if len(holdout) >= len(labels):
        raise CxrltError("data.holdout_labels holds out every label; nothing is left to train on")
    submission = vals.get("submission_labels")
    # a held-out label is still one of the preset's submission columns (scored zero-shot by stage 04)
    submission = tuple(submission) if submission else (labels if holdout else None)
    zero_shot = tuple(x for x in dict.fromkeys(vals.get("zero_shot_labels") or ()) if x not in labels)
    labels = tuple(x for x in labels if x not in holdout)   # never trained on; their CSV columns stay
    normal = vals.get("normal_label")
    if normal is not None and normal not in labels:
        normal = None  # e.g. a custom label set without a normal class
    task = vals.get("task") or "multilabel"
    if task not in TASKS:
        raise CxrltError(f"data.task must be one of {', '.join(TASKS)}, not '{task}'")
    if task == "multiclass" and (holdout or zero_shot):
        raise CxrltError(f"data.{'holdout_labels' if holdout else 'zero_shot_labels'}: zero-shot labels are scored "
                         f"beside the trained ones one sigmoid each, not with data.task=multiclass (one softmax)")
    groups = vals.get("group_counts") or (list(BENCHMARK_GROUPS) if task == "multiclass" else [])
    if groups and (len(groups) != 2 or not all(isinstance(g, (int, float)) for g in groups) or groups[0] > groups[1]):
        raise CxrltError(f"data.group_counts must be [tail below, head above] training images, e.g. [100, 1000], "
                         f"not {groups!r}")
    return DatasetSpec(
        name=str(vals["name"]), dir=ddir,
        image_root=under(input_dir, vals.get("image_root")) or ddir,
        train_csv=under(ddir, vals["train_csv"]), val_csv=under(ddir, vals.get("val_csv")),
        dev_csv=under(ddir, vals.get("dev_csv")),
        test_csv=under(ddir, vals.get("test_csv")),
        sample_submission=under(ddir, vals.get("sample_submission")),
        id_col=vals["id_col"], path_col=vals["path_col"], patient_col=vals["patient_col"],
        study_col=vals.get("study_col"), view_col=vals.get("view_col"), labels=labels,
        normal_label=normal,
        normal_allows=tuple(x for x in (vals.get("normal_allows") or ()) if x in labels),
        label_map={str(k): int(v) for k, v in (vals.get("label_map") or {}).items()},
        holdout_labels=holdout, zero_shot_labels=zero_shot, submission=submission,
        task=task, group_counts=tuple(int(g) for g in groups),
    )


def _row(i: int) -> int:
    """File line of data row i (line 1 is the header)."""
    return i + 2


# Checked tables of this process, keyed by file (path, size, CRC-32 of its bytes: a file rewritten
# within the file system's timestamp granularity is still seen), split, label mode and dataset:
# a stage reads the training CSV several times (folds, counts, OOF rows); it is parsed and checked
# once. Callers get a copy (they may add columns). A few entries only: a training table is large.
_READ_CACHE: dict = {}
_READ_CACHE_SIZE = 3


def read_split(spec: DatasetSpec, split: str, labels: str = "auto") -> pd.DataFrame:
    """Read and check one split's CSV.

    labels: "required" (train), "auto" (checked when the label columns are there: development),
    "none" (ignored: test). Label columns come back as uint8 0/1. Parsed and checked once per
    process while the file's bytes are unchanged; each call returns a copy.
    """
    path = spec.csv(split)
    if path is None:
        raise CxrltError(f"data: preset '{spec.name}' has no {split} CSV")
    shown = display_path(path)
    if not path.is_file():
        raise CxrltError(f"{shown}: file not found (the {split} CSV of dataset '{spec.name}'; see input/README.md)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CxrltError(f"{shown}: cannot be read ({e.strerror or e})") from None
    key = (str(path.resolve()), len(data), zlib.crc32(data), split, labels, repr(spec))
    if key not in _READ_CACHE:
        df = _read_split(spec, split, labels, io.BytesIO(data), shown)
        while len(_READ_CACHE) >= _READ_CACHE_SIZE:
            _READ_CACHE.pop(next(iter(_READ_CACHE)))
        _READ_CACHE[key] = df
    return _READ_CACHE[key].copy()


def _read_split(spec: DatasetSpec, split: str, labels: str, data, shown: str) -> pd.DataFrame:
    try:
        df = read_table(data, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises several types for broken files
        raise CxrltError(f"{shown}: cannot be read as CSV ({str(e).splitlines()[0]})") from None
    need = [spec.id_col, spec.path_col, spec.patient_col] if split != "test" else [spec.id_col, spec.path_col]
    need += [c for c in (spec.study_col, spec.view_col) if c and split != "test"]
    has_labels = all(c in df.columns for c in spec.labels)
    if labels == "required" or (labels == "auto" and any(c in df.columns for c in spec.labels)):
        need += list(spec.labels)
    missing = [c for c in dict.fromkeys(need) if c not in df.columns]
    if missing:
        listed = ", ".join(f"'{c}'" for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CxrltError(f"{shown}: missing column{'s' if len(missing) > 1 else ''} {listed}")
    if len(df) == 0:
        raise CxrltError(f"{shown}: no data rows")

    ids = df[spec.id_col]
    empty = np.flatnonzero(ids.str.strip() == "")
    if len(empty):
        raise CxrltError(f"{shown}: row {_row(empty[0])}, column '{spec.id_col}': empty id")
    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].iloc[0]
        rows = [_row(i) for i in np.flatnonzero(ids == first)[:3]]
        raise CxrltError(f"{shown}: id '{first}' in column '{spec.id_col}' appears {int((ids == first).sum())} times "
                         f"(rows {', '.join(map(str, rows))}); {int(ids[dup].nunique())} ids are duplicated")
    if labels != "none" and has_labels:
        df = _check_labels(df, spec, shown)
    if labels != "none":   # held-out and zero-shot labels, where the CSV has them (scored, never trained on)
        df = _check_labels(df, spec, shown, [c for c in (*spec.holdout_labels, *spec.zero_shot_labels) if c in df.columns])
    return df


def _check_labels(df: pd.DataFrame, spec: DatasetSpec, shown: str, cols=None) -> pd.DataFrame:
    df = df.copy()
    for col in spec.labels if cols is None else cols:
        # each distinct cell text is stripped, mapped (data.label_map) and parsed once, then spread
        # to the rows by its code: a column holds a handful of distinct texts, not 265k
        codes, texts = pd.factorize(df[col], use_na_sentinel=False)
        val = [spec.label_map.get(t.strip(), t.strip()) if isinstance(t, str) else t for t in texts]
        num = pd.to_numeric(pd.Series(val, dtype=object), errors="coerce")
        ok = num.isin([0, 1]).to_numpy()
        if not ok.all():
            bad = ~ok[codes]
            i = int(np.flatnonzero(bad)[0])
            hint = " (map such values with data.label_map)" if spec.label_map == {} else ""
            raise CxrltError(f"{shown}: row {_row(i)}, column '{col}': label value '{df[col].iloc[i]}' is not 0 or 1"
                             f"{hint}; {int(bad.sum())} such cells in this column")
        df[col] = num.to_numpy(np.float64).astype(np.uint8)[codes]
    if spec.multiclass and cols is None:   # one label per image: exactly one 1 in the label columns
        n_pos = df[list(spec.labels)].to_numpy().sum(1)
        bad = np.flatnonzero(n_pos != 1)
        if len(bad):
            i = int(bad[0])
            raise CxrltError(f"{shown}: row {_row(i)}: {int(n_pos[i])} labels set, data.task=multiclass needs exactly "
                             f"one per row; {len(bad)} such rows")
    return df


def check_inside_root(spec: DatasetSpec, df: pd.DataFrame, split: str, allow_outside_root: bool = False) -> None:
    """A one-line error naming the CSV row and path of the first image path that leads outside
    data.image_root (`..` steps, an absolute path), unless allow_outside_root. The check is on the
    path as written (normalised, symlinks not followed): a link the user placed under the root is theirs."""
    if allow_outside_root:
        return
    root = os.path.normpath(os.path.abspath(spec.image_root))
    inside = root.rstrip(os.sep) + os.sep
    for i, rel in enumerate(df[spec.path_col]):
        full = os.path.normpath(os.path.join(root, str(rel)))
        if full != root and not full.startswith(inside):
            shown = display_path(spec.csv(split)) if spec.csv(split) else f"the {split} CSV"
            raise CxrltError(f"{shown}: row {_row(i)}, column '{spec.path_col}': image path '{clip(rel)}' leads outside "
                             f"data.image_root ({display_path(spec.image_root)}); fix the CSV, or set "
                             f"data.allow_outside_root=true to allow paths outside the image root")


def image_paths(spec: DatasetSpec, df: pd.DataFrame, split: str = "train",
                allow_outside_root: bool = False) -> list[Path]:
    """The image files of `df`'s rows; a path leading outside data.image_root is refused (check_inside_root)."""
    check_inside_root(spec, df, split, allow_outside_root)
    return [spec.image_root / p for p in df[spec.path_col]]


def missing_images(spec: DatasetSpec, df: pd.DataFrame, split: str, allow_outside_root: bool = False) -> str | None:
    """One line naming how many referenced images are missing and the first few, or None."""
    paths = image_paths(spec, df, split, allow_outside_root)
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if not missing:
        return None
    first = ", ".join(f"{df[spec.path_col].iloc[i]} (row {_row(i)})" for i in missing[:3])
    return (f"{display_path(spec.csv(split))}: {len(missing)} of {len(df)} image files missing "
            f"under {display_path(spec.image_root)}, e.g. {first}")


def check_images_exist(spec: DatasetSpec, df: pd.DataFrame, split: str) -> None:
    msg = missing_images(spec, df, split)
    if msg:
        raise CxrltError(msg)


def label_matrix(spec: DatasetSpec, df: pd.DataFrame) -> np.ndarray:
    return df[list(spec.labels)].to_numpy(dtype=np.float32)


def check_task(cfg, spec: DatasetSpec) -> None:
    """Settings that contradict data.task=multiclass (one label per image), refused in one line
    before any work: mosaic (four films, several findings), the union rule of mixed labels,
    normal gating and per-class fold normalisation (each breaks the comparison across classes that
    a softmax's argmax makes)."""
    if not spec.multiclass:
        return
    a, p = cfg.augment, cfg.predict
    if float(a.get("mosaic") or 0) > 0:
        raise CxrltError(f"augment.mosaic={a.mosaic}: a 4-film mosaic shows several findings, data.task=multiclass has "
                         f"one label per image; set augment.mosaic=0")
    mixes = [k for k in ("mixup", "balanced_mixup", "cutmix") if float(a.get(k) or 0) > 0]
    if mixes and a.mix_labels != "linear":
        raise CxrltError(f"augment.{mixes[0]}={a[mixes[0]]} with augment.mix_labels={a.mix_labels}: a multiclass "
                         f"label mixes linearly (MixUp's own rule); set augment.mix_labels=linear")
    if p.get("normal_gating") is not None:
        raise CxrltError(f"predict.normal_gating={p.normal_gating}: not for data.task=multiclass (the softmax already "
                         f"weighs 'no finding' against the findings); set it to null")
    if (cfg.get("stage2") or {}).get("from") and cfg.stage2.get("method") == "fusion":
        raise CxrltError("stage2.method=fusion: a study's films share a union of labels, not one label; not for "
                         "data.task=multiclass (use crt or tau_norm)")
    if p.get("zero_shot_labels"):
        raise CxrltError("predict.zero_shot_labels: zero-shot labels are scored one sigmoid each, not with "
                         "data.task=multiclass (one softmax over the trained classes)")
    if p.get("oof_normalise", "none") != "none":
        raise CxrltError(f"predict.oof_normalise={p.oof_normalise}: a per-class map breaks the comparison across classes "
                         f"of data.task=multiclass; set it to none")
