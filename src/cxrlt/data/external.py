"""External labelled chest X-ray sets (`data.extra`, docs/external_data.md): more training films with
partial labels.

Each entry of `data.extra` names a label file the public releases ship (a preset: ChestX-ray14's
`Data_Entry_2017_v2020.csv`, CheXpert's `train.csv`, PadChest's label CSV, VinDr-CXR's
`image_labels_train.csv`) or any CSV with 0/1 label columns (`custom`). Its labels are mapped to the
competition's (`spec.labels`): the entry's `map` first, then the preset's own map, then the finding
name itself, matched through the alias table (`cxrlt.findings`). A competition finding that no label
of the set maps to is NaN ("unlabelled") for every film of the set: the losses leave it out
(losses/base.py), never take it as a negative. Several labels mapped to one finding are OR-ed.

The rows are training-only: the trainer adds them to the training part of every fold, and they
never enter OOF, blend fitting or thresholds (they have no fold). Their ids are namespaced,
`extra:<set>:<id>`, and their patients `<set>:<patient>`, so they cannot collide with the
competition's nor with another set's; a set whose films are competition films (the same id in the
competition's train, dev or test CSV) is refused in one line, since test films trained on would leak.

What the trainer calls: `extra_training_rows(cfg) -> ExtraRows` (cached files checked: stage 01
caches each set under `<cache.dir>/extra/<set>/`). Stage 01 calls `extra_cache_jobs(cfg)`.
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.choices import EXTRA_BLANK, EXTRA_PRESETS, EXTRA_RATERS, EXTRA_UNCERTAIN
from cxrlt.errors import CxrltError, clip
from cxrlt.fileio import display_path, project_path, read_table
from cxrlt.findings import label_key

ID_PREFIX = "extra:"

# The label columns of the releases, in file order.
NIH14_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
                "No Finding")
CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                   "Fracture", "Support Devices")
VINDR_LABELS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
                "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
                "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
                "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD",
                "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")

# Per preset: where the files are by default (relative to data.input_dir), the columns, the label
# format, and the preset's own map (their name -> a finding name the alias table knows; only names
# that do not already match). `path_suffix`: no path column, the file is <image root>/<id><suffix>.
PRESETS: dict[str, dict] = {
    "nih14": dict(dir="nih-chestxray14", csv="Data_Entry_2017_v2020.csv", image_root="nih-chestxray14/images",
                  id_col="Image Index", path_col="Image Index", patient_col="Patient ID", view_col="View Position",
                  format="nih", labels=NIH14_LABELS, map={"Effusion": "Pleural Effusion"}),
    "chexpert": dict(dir="chexpert", csv="train.csv", image_root=None, id_col="Path", path_col="Path",
                     patient_col=None, view_col="Frontal/Lateral", format="chexpert", labels=CHEXPERT_LABELS, map={}),
    "padchest": dict(dir="padchest", csv="PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
                     image_root="padchest/images", id_col="ImageID", path_col="ImageID", patient_col="PatientID",
                     view_col="Projection", format="padchest", labels=None, map={"hiatal hernia": "Hernia"}),
    "vindr": dict(dir="vindr-cxr", csv="annotations/image_labels_train.csv", image_root="vindr-cxr/train", id_col="image_id",
                  path_col=None, path_suffix=".dicom", patient_col=None, view_col=None, format="vindr",
                  labels=VINDR_LABELS, map={"Pulmonary fibrosis": "Fibrosis"}),
    "custom": dict(dir=None, csv=None, image_root=None, id_col=None, path_col=None, patient_col=None, view_col=None,
                   format="columns", labels=None, map={}),
}
assert tuple(PRESETS) == EXTRA_PRESETS
_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


@dataclass(frozen=True)
class ExtraSpec:
    """One resolved entry of data.extra: absolute paths, columns, label format and policies."""
    index: int                      # its position in data.extra (for messages)
    name: str
    preset: str
    csv: Path
    image_root: Path
    id_col: str
    path_col: str | None
    path_suffix: str
    patient_col: str | None
    view_col: str | None
    format: str                     # nih | chexpert | padchest | vindr | columns
    labels: tuple[str, ...] | None  # their label columns (None: read from the file, padchest)
    map: dict = field(default_factory=dict)        # the entry's own map (their -> ours, None drops)
    preset_map: dict = field(default_factory=dict)
    uncertain: str = "ignore"
    blank: str = "negative"
    raters: str = "majority"
    views: tuple[str, ...] | None = None

    @property
    def where(self) -> str:
        return f"data.extra[{self.index}] ({self.name})"

    def cache(self, cfg):
        """The set's image cache: <cache.dir>/extra/<name>/<size>_<resize>_<format>/, keyed by its own ids."""
        from cxrlt.data.images import Cache

        return Cache.from_config(cfg, f"extra/{self.name}")


def extra_specs(cfg) -> list[ExtraSpec]:
    """data.extra resolved: the preset's values under every non-null key of the entry."""
    entries = (cfg.get("data") or {}).get("extra") or []
    input_dir = project_path(cfg.data.get("input_dir") or "input")
    out, names = [], set()
    for i, e in enumerate(entries):
        preset = e.get("preset") or "custom"
        if preset not in PRESETS:
            raise CxrltError(f"data.extra[{i}].preset must be one of {', '.join(EXTRA_PRESETS)}, not '{preset}'")
        v = dict(PRESETS[preset])
        v.update({k: e[k] for k in ("dir", "csv", "image_root", "id_col", "path_col", "patient_col", "view_col",
                                    "labels") if e.get(k) is not None})
        name = e.get("name") or (preset if preset != "custom" else None)
        where = f"data.extra[{i}]"
        if not name:
            raise CxrltError(f"{where}: a custom set needs a name (its ids become {ID_PREFIX}<name>:<id>)")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)):
            raise CxrltError(f"{where}.name '{clip(name)}': letters, digits, '.', '_' and '-' only (it names a cache folder)")
        if name in names:
            raise CxrltError(f"{where}.name '{name}': two sets of data.extra have this name; give each its own")
        names.add(name)
        if preset == "custom":
            missing = [k for k in ("dir", "csv", "id_col", "labels") if not v.get(k)]
            if missing:
                raise CxrltError(f"{where}: preset custom needs {', '.join(missing)}")
            v["path_col"] = v.get("path_col") or v["id_col"]
        for key, choices in (("uncertain", EXTRA_UNCERTAIN), ("blank", EXTRA_BLANK), ("raters", EXTRA_RATERS)):
            if e.get(key) is not None and e[key] not in choices:
                raise CxrltError(f"{where}.{key} must be one of {', '.join(choices)}, not '{e[key]}'")
        ddir = input_dir / v["dir"]
        csv = Path(v["csv"]) if Path(v["csv"]).is_absolute() else ddir / v["csv"]
        root = v.get("image_root")
        root = ddir if root is None else (Path(root) if Path(root).is_absolute() else input_dir / root)
        views = e.get("views")
        out.append(ExtraSpec(
            index=i, name=str(name), preset=preset, csv=csv, image_root=root, id_col=v["id_col"],
            path_col=v.get("path_col"), path_suffix=v.get("path_suffix", ""), patient_col=v.get("patient_col"),
            view_col=v.get("view_col"), format=v["format"],
            labels=tuple(v["labels"]) if v.get("labels") else None,
            map=dict(e.get("map") or {}), preset_map=dict(v.get("map") or {}),
            uncertain=e.get("uncertain") or "ignore", blank=e.get("blank") or "negative",
            raters=e.get("raters") or "majority",
            views=tuple(str(x).strip().upper() for x in views) if views else None))
    return out


# ---------------------------------------------------------------- reading a set
@dataclass
class ExtraTable:
    """One set read and mapped: a row per film, y (N, C) float32 over the competition's labels."""
    spec: ExtraSpec
    ids: np.ndarray                 # the set's own ids
    paths: list[Path]               # source image files
    patients: np.ndarray            # the set's own patient ids
    views: np.ndarray               # upper-case view per row ("" unknown)
    y: np.ndarray
    mapped: dict[str, tuple[str, ...]]    # competition label -> their labels that give it
    dropped: dict[str, int]               # why rows were left out -> how many


def _line(i: int) -> int:
    return int(i) + 2    # file line of data row i (line 1 is the header)


def _need(df: pd.DataFrame, cols, shown: str) -> None:
    missing = [c for c in cols if c and c not in df.columns]
    if missing:
        listed = ", ".join(f"'{c}'" for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CxrltError(f"{shown}: missing column{'s' if len(missing) > 1 else ''} {listed}")


def _cells(df: pd.DataFrame, col: str, spec: ExtraSpec, shown: str) -> np.ndarray:
    """A 1 / 0 / -1 / empty label column as float: 1, 0, the uncertain policy for -1 (NaN when
    ignored), the blank policy for an empty cell. Anything else is a one-line error naming the row."""
    codes, texts = pd.factorize(df[col].astype(str).str.strip(), use_na_sentinel=False)
    blank = 0.0 if spec.blank == "negative" else np.nan
    unc = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[spec.uncertain]
    vals = np.empty(len(texts))
    for k, t in enumerate(texts):
        if t in ("", "nan", "NaN"):
            vals[k] = blank
            continue
        try:
            f = float(t)
        except ValueError:
            f = None
        if f not in (0.0, 1.0, -1.0):
            i = int(np.flatnonzero(codes == k)[0])
            raise CxrltError(f"{shown}: row {_line(i)}, column '{col}': label value '{clip(t)}' is not 1, 0, -1 or "
                             f"empty; {int((codes == k).sum())} such cells in this column")
        vals[k] = unc if f == -1.0 else f
    return vals[codes]


def _parse_nih(df, spec, shown):
    """`Finding Labels`: findings joined by '|', or 'No Finding'. Every film labels all 15 (0/1)."""
    _need(df, ["Finding Labels"], shown)
    vocab = spec.labels
    texts = df["Finding Labels"].astype(str).str.strip()
    codes, uniq = pd.factorize(texts, use_na_sentinel=False)
    table = np.zeros((len(uniq), len(vocab)), np.float32)
    for k, t in enumerate(uniq):
        for item in (x.strip() for x in t.split("|")):
            if item not in vocab:
                i = int(np.flatnonzero(codes == k)[0])
                raise CxrltError(f"{shown}: row {_line(i)}, column 'Finding Labels': '{clip(item)}' is not one of the "
                                 f"ChestX-ray14 findings ({', '.join(vocab)})")
            table[k, vocab.index(item)] = 1
    return list(vocab), table[codes], np.ones(len(df), bool)


def _parse_padchest(df, spec, shown):
    """`Labels`: a Python list literal, e.g. "['cardiomegaly', 'pleural effusion']" or "['normal']".
    The set labels every finding that occurs in the file or that the maps name (0 where a film's list
    lacks it); films marked 'exclude' and films without a list are left out."""
    _need(df, ["Labels"], shown)
    texts = df["Labels"].astype(str).str.strip()
    codes, uniq = pd.factorize(texts, use_na_sentinel=False)
    parsed = []
    for k, t in enumerate(uniq):
        if t in ("", "nan", "NaN", "[]", "['']"):
            parsed.append(None)
            continue
        try:
            items = ast.literal_eval(t)
        except (ValueError, SyntaxError):
            items = None
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            i = int(np.flatnonzero(codes == k)[0])
            raise CxrltError(f"{shown}: row {_line(i)}, column 'Labels': '{clip(t)}' is not a list of findings "
                             f"like ['cardiomegaly', 'pleural effusion']")
        items = [x.strip().lower() for x in items if x.strip()]
        parsed.append(None if not items or "exclude" in items else items)
    vocab = sorted({x for p in parsed if p for x in p} | {k.strip().lower() for k in (*spec.map, *spec.preset_map)})
    pos = {x: j for j, x in enumerate(vocab)}
    table = np.zeros((len(uniq), len(vocab)), np.float32)
    for k, p in enumerate(parsed):
        for x in p or ():
            table[k, pos[x]] = 1
    keep = np.array([p is not None for p in parsed], bool)[codes]
    return vocab, table[codes], keep


def _parse_columns(df, spec, shown):
    cols = list(spec.labels)
    _need(df, cols, shown)
    y = np.stack([_cells(df, c, spec, shown) for c in cols], 1).astype(np.float32) if cols else np.zeros((len(df), 0))
    return cols, y, np.ones(len(df), bool)


def _aggregate_raters(df, spec, shown):
    """VinDr-CXR: one row per (image, radiologist), 0/1 per finding: one row per image, `raters`
    majority (> half of its readers), any, or mean (the share of readers: a soft target)."""
    cols = list(spec.labels)
    _need(df, cols, shown)
    y = np.stack([_cells(df, c, spec, shown) for c in cols], 1)
    g = pd.DataFrame(y, columns=range(len(cols)))
    g["_id"] = df[spec.id_col].to_numpy()
    grouped = g.groupby("_id", sort=False)
    share = grouped.mean()          # NaN (an ignored -1) is left out of the share
    if spec.raters == "mean":
        agg = share
    elif spec.raters == "any":
        agg = grouped.max()
    else:
        agg = (share > 0.5).astype(np.float64).where(share.notna())
    first = ~df[spec.id_col].duplicated().to_numpy()
    return cols, agg.to_numpy(np.float32), df[first].reset_index(drop=True)


def _targets(spec: ExtraSpec, theirs: list[str], labels) -> dict[int, list[int]]:
    """{competition label index: [their label indices]} through the entry's map, the preset's map, then
    the name itself, all matched by the alias table's key."""
    ours = {label_key(n): j for j, n in enumerate(labels)}
    by_key = {label_key(t): k for k, t in enumerate(theirs)}
    for src, dst in spec.map.items():
        if label_key(src) not in by_key:
            raise CxrltError(f"{spec.where}.map: '{clip(src)}' is not one of the set's labels "
                             f"({', '.join(theirs[:12])}{' ...' if len(theirs) > 12 else ''})")
        if dst is not None and label_key(dst) not in ours:
            raise CxrltError(f"{spec.where}.map: '{clip(src)}' -> '{clip(dst)}': '{clip(dst)}' is not one of the "
                             f"competition's labels")
    user = {label_key(k): v for k, v in spec.map.items()}
    preset = {label_key(k): v for k, v in spec.preset_map.items()}
    out: dict[int, list[int]] = {}
    for k, t in enumerate(theirs):
        key = label_key(t)
        dst = user[key] if key in user else preset.get(key, t)
        if dst is not None and label_key(dst) in ours:
            out.setdefault(ours[label_key(dst)], []).append(k)
    return out


def read_extra(spec: ExtraSpec, labels, allow_outside_root: bool = False) -> ExtraTable:
    """Read one set's label file (through fileio.read_table) and map it to `labels` (the competition's
    trained labels). One-line errors name the file, row and column."""
    shown = display_path(spec.csv)
    if not spec.csv.is_file():
        raise CxrltError(f"{shown}: file not found (the label file of {spec.where}; see docs/external_data.md)")
    try:
        df = read_table(spec.csv, dtype=str, keep_default_na=False)
    except CxrltError:
        raise
    except Exception as e:  # pandas raises several types for broken files
        raise CxrltError(f"{shown}: cannot be read as CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    _need(df, [spec.id_col, spec.path_col, spec.patient_col, spec.view_col], shown)
    if len(df) == 0:
        raise CxrltError(f"{shown}: no data rows")
    empty = np.flatnonzero(df[spec.id_col].str.strip() == "")
    if len(empty):
        raise CxrltError(f"{shown}: row {_line(empty[0])}, column '{spec.id_col}': empty id")
    if spec.format == "vindr":
        theirs, y, df = _aggregate_raters(df, spec, shown)
        keep = np.ones(len(df), bool)
    else:
        dup = df[spec.id_col].duplicated(keep=False)
        if dup.any():
            first = df[spec.id_col][dup].iloc[0]
            rows = [_line(i) for i in np.flatnonzero(df[spec.id_col] == first)[:3]]
            raise CxrltError(f"{shown}: id '{clip(first)}' in column '{spec.id_col}' appears more than once (rows "
                             f"{', '.join(map(str, rows))})")
        parse = {"nih": _parse_nih, "padchest": _parse_padchest}.get(spec.format, _parse_columns)
        theirs, y, keep = parse(df, spec, shown)
    dropped = {}
    if not keep.all():
        dropped["no labels, or marked exclude"] = int((~keep).sum())
    ids = df[spec.id_col].astype(str).str.strip().to_numpy()
    if spec.format == "chexpert":
        pats = df[spec.id_col].str.extract(_CHEXPERT_PATIENT, expand=False)
        bad = np.flatnonzero(pats.isna().to_numpy())
        if len(bad):
            raise CxrltError(f"{shown}: row {_line(bad[0])}, column '{spec.id_col}': no patientNNNNN folder in "
                             f"'{clip(ids[bad[0]])}' (CheXpert's Path names its patient)")
        patients = pats.to_numpy(str)
        lateral = df[spec.view_col].str.strip().str.lower() == "lateral"
        ap_pa = df["AP/PA"].str.strip().str.upper() if "AP/PA" in df.columns else pd.Series("", index=df.index)
        views = np.where(lateral, "LATERAL", np.where(ap_pa != "", ap_pa, "FRONTAL")).astype(str)
    else:
        patients = df[spec.patient_col].astype(str).str.strip().to_numpy() if spec.patient_col else ids
        views = (df[spec.view_col].astype(str).str.strip().str.upper().to_numpy() if spec.view_col
                 else np.full(len(df), "", dtype=object))
    if spec.views is not None:
        if spec.view_col is None:
            raise CxrltError(f"{spec.where}.views={list(spec.views)}: the set has no view column (set view_col)")
        in_view = np.isin(views.astype(str), spec.views)
        if (keep & ~in_view).any():
            dropped["other views"] = int((keep & ~in_view).sum())
        keep &= in_view
    targets = _targets(spec, theirs, labels)
    if not targets:
        raise CxrltError(f"{spec.where}: none of its labels ({', '.join(theirs[:8])}{' ...' if len(theirs) > 8 else ''}) "
                         f"names one of the competition's; map them with data.extra[{spec.index}].map")
    out = np.full((len(df), len(labels)), np.nan, np.float32)
    for j, ks in targets.items():
        col = y[:, ks[0]]
        for k in ks[1:]:
            col = np.fmax(col, y[:, k])         # OR of the labels mapped to one finding; NaN only if all are
        out[:, j] = col
    nothing = np.isnan(out).all(1) & keep
    if nothing.any():
        dropped["none of the mapped findings labelled"] = int(nothing.sum())
    keep &= ~nothing
    if spec.path_col:
        rel = df[spec.path_col].astype(str).str.strip().to_numpy()
    else:
        rel = np.array([i + spec.path_suffix for i in ids], dtype=object)
    rows = np.flatnonzero(keep)
    paths = _confined(spec, rel, rows, shown, allow_outside_root)
    return ExtraTable(spec, ids[rows], paths, np.asarray(patients)[rows], np.asarray(views)[rows].astype(str),
                      out[rows], {labels[j]: tuple(theirs[k] for k in ks) for j, ks in sorted(targets.items())},
                      dropped)


def _confined(spec: ExtraSpec, rel, rows, shown: str, allow_outside_root: bool) -> list[Path]:
    """Image files under the set's image root; a path leading outside it (`..`, absolute) is refused
    naming its row, unless data.allow_outside_root."""
    root = os.path.normpath(os.path.abspath(spec.image_root))
    inside = root.rstrip(os.sep) + os.sep
    out = []
    for i in rows:
        full = os.path.normpath(os.path.join(root, str(rel[i])))
        if not allow_outside_root and full != root and not full.startswith(inside):
            col = spec.path_col or spec.id_col
            raise CxrltError(f"{shown}: row {_line(i)}, column '{col}': image path '{clip(rel[i])}' leads outside "
                             f"the set's image root ({display_path(spec.image_root)}); fix the file, or set "
                             f"data.allow_outside_root=true")
        out.append(Path(full))
    return out


# ---------------------------------------------------------------- what the trainer and stage 01 call
@dataclass(frozen=True)
class ExtraRows:
    """Every external set's training rows, in data.extra order: fold -1 in every fold (always trained
    on, never held out, never scored)."""
    ids: np.ndarray                 # extra:<set>:<id>
    files: list[Path]               # the cached image of each row
    y: np.ndarray                   # (N, C) float32 over spec.labels; NaN = the set does not label it
    patients: np.ndarray            # <set>:<patient>
    sets: np.ndarray                # the set's name per row
    views: np.ndarray               # upper-case view per row ("" unknown)
    labelled: dict = field(default_factory=dict)   # set name -> the competition labels it labels

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def folds(self) -> np.ndarray:
        return np.full(len(self.ids), -1, np.int64)


def _competition_ids(spec) -> dict[str, set]:
    from cxrlt.data.datasets import read_split

    out = {}
    for split in ("train", "val", "dev", "test"):
        path = spec.csv(split)
        if path is not None and (split == "train" or path.is_file()):
            out[split] = set(read_split(spec, split, labels="none")[spec.id_col].astype(str))
    return out


def check_disjoint(spec, tables: list[ExtraTable]) -> None:
    """No film of an external set is a competition film: an id of the competition's train, val,
    dev or test CSV in a set is refused (a test film trained on leaks; a training film counted twice
    escapes its fold)."""
    comp = _competition_ids(spec)
    for t in tables:
        for split, ids in comp.items():
            both = ids.intersection(t.ids.tolist())
            if both:
                raise CxrltError(f"{display_path(t.spec.csv)}: {len(both)} films of {t.spec.where} are in the "
                                 f"competition's {split} CSV {display_path(spec.csv(split))}, e.g. '{sorted(both)[0]}'; "
                                 f"remove them from the set")
        if any(i.startswith(ID_PREFIX) for s in comp.values() for i in s):
            raise CxrltError(f"the competition's CSVs hold ids starting with '{ID_PREFIX}', the external sets' namespace")


def extra_tables(cfg, labels=None) -> list[ExtraTable]:
    """Every set of data.extra read and mapped to the competition's trained labels."""
    from cxrlt.data.experiment import Experiment

    labels = tuple(labels if labels is not None else Experiment.of(cfg).spec.labels)
    allow = bool(cfg.data.get("allow_outside_root"))
    return [read_extra(s, labels, allow) for s in extra_specs(cfg)]


def extra_training_rows(cfg, check_cache: bool = True) -> ExtraRows:
    """The external sets' training rows for the recipe `cfg` (empty without data.extra).

    Checks: the sets' ids are not competition ids (check_disjoint); with check_cache, each film has
    its cached image (stage 01), else a one-line error naming the set and the command to run.
    The trainer appends these rows to the training part of every fold (fold -1), builds its loss
    with `losses.label_counts(y)` over the concatenated targets, and never predicts or scores them.
    """
    from cxrlt.data.experiment import Experiment

    spec = Experiment.of(cfg).spec
    if spec.multiclass and extra_specs(cfg):
        raise CxrltError("data.extra: partial labels need data.task=multilabel (a softmax has no unlabelled entries)")
    tables = extra_tables(cfg, spec.labels)
    if not tables:
        return ExtraRows(np.array([], dtype=object), [], np.zeros((0, len(spec.labels)), np.float32),
                         np.array([], dtype=object), np.array([], dtype=object), np.array([], dtype=object), {})
    check_disjoint(spec, tables)
    files = []
    for t in tables:
        files += (t.spec.cache(cfg).require(t.ids, t.spec.csv, cfg) if check_cache else
                  [t.spec.cache(cfg).path(i) for i in t.ids])
    cat = np.concatenate
    return ExtraRows(
        ids=cat([np.array([f"{ID_PREFIX}{t.spec.name}:{i}" for i in t.ids], dtype=object) for t in tables]),
        files=files,
        y=cat([t.y for t in tables]).astype(np.float32),
        patients=cat([np.array([f"{t.spec.name}:{p}" for p in t.patients], dtype=object) for t in tables]),
        sets=cat([np.full(len(t.ids), t.spec.name, dtype=object) for t in tables]),
        views=cat([t.views.astype(object) for t in tables]),
        labelled={t.spec.name: tuple(t.mapped) for t in tables})


def extra_cache_jobs(cfg) -> list[tuple[ExtraSpec, object, list[tuple[str, str]]]]:
    """Stage 01: (set, its Cache, [(id, source image path)]) per set of data.extra."""
    from cxrlt.data.experiment import Experiment

    tables = extra_tables(cfg)
    if tables:
        check_disjoint(Experiment.of(cfg).spec, tables)
    return [(t.spec, t.spec.cache(cfg), [(i, str(p)) for i, p in zip(t.ids, t.paths)]) for t in tables]
