"""Stage 07: the leaderboard file (DESIGN.md section 6), validated before anything is written.

`submissions/<name>.csv` and `<name>.zip` (the CSV alone at the zip root): the id column and the
preset's labels in order, rows in sample_submission.csv order (else test CSV order), every test id
once, no NaN, values in [0, 1]. Probabilities by default (what mAP scores); `binary` writes 0/1
with the tuned thresholds, for leaderboards that score F1.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlt.config import Config
from cxrlt.data.datasets import read_split, resolve_dataset
from cxrlt.errors import CxrltError
from cxrlt.experiment import experiment_dir
from cxrlt.fileio import display_path, project_path, write_atomic, write_csv


def expected_ids(spec) -> list[str]:
    """Row order of a submission: sample_submission.csv when the preset has one, else the test CSV."""
    if spec.sample_submission is not None and spec.sample_submission.is_file():
        sub = pd.read_csv(spec.sample_submission, dtype={spec.id_col: str})
        if spec.id_col not in sub.columns:
            raise CxrltError(f"{display_path(spec.sample_submission)}: no '{spec.id_col}' column")
        return sub[spec.id_col].tolist()
    return read_split(spec, "test", labels="none")[spec.id_col].tolist()


def validate(df: pd.DataFrame, spec, ids: list[str], source: str = "submission", binary: bool = False) -> None:
    """Raise CxrltError with one line saying why a leaderboard would reject this table."""
    cols = [spec.id_col, *spec.labels]
    if list(df.columns) != cols:
        if set(df.columns) == set(cols):
            raise CxrltError(f"{source}: columns are in the wrong order (expected {spec.id_col}, then the labels in "
                             f"preset order, starting {', '.join(cols[1:4])}...)")
        missing = [c for c in cols if c not in df.columns]
        extra = [c for c in df.columns if c not in cols]
        raise CxrltError(f"{source}: wrong columns (missing: {missing[:3] or 'none'}; unexpected: {extra[:3] or 'none'})")
    got = df[spec.id_col].astype(str)
    dup = got[got.duplicated()]
    if len(dup):
        raise CxrltError(f"{source}: id '{dup.iloc[0]}' appears more than once ({dup.nunique()} duplicated ids)")
    missing = [i for i in ids if i not in set(got)]
    if missing:
        raise CxrltError(f"{source}: {len(missing)} test ids are missing, e.g. '{missing[0]}'")
    extra = [i for i in got if i not in set(ids)]
    if extra:
        raise CxrltError(f"{source}: {len(extra)} ids are not in the test set, e.g. '{extra[0]}'")
    if got.tolist() != list(ids):
        raise CxrltError(f"{source}: rows are not in the order of the sample submission / test CSV")
    values = df[list(spec.labels)].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise CxrltError(f"{source}: NaN or non-numeric value at row {r + 2}, column '{spec.labels[c]}'")
    v = values.to_numpy()
    out = (v < 0) | (v > 1)
    if out.any():
        r, c = np.argwhere(out)[0]
        raise CxrltError(f"{source}: value {v[r, c]} at row {r + 2}, column '{spec.labels[c]}' is outside [0, 1]")
    if binary and not np.isin(v, (0, 1)).all():
        raise CxrltError(f"{source}: --binary expects only 0 and 1")


def read_upload(path: str | Path, spec) -> pd.DataFrame:
    """A CSV, or a zip holding exactly one CSV at its root, as a table of strings for the ids."""
    path = Path(path)
    if not path.is_file():
        raise CxrltError(f"{path}: file not found")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            csvs = [n for n in z.namelist() if n.lower().endswith(".csv")]
            if len(csvs) != 1 or "/" in csvs[0] or len(z.namelist()) != 1:
                raise CxrltError(f"{path}: a zip must hold exactly one CSV at its root (has {z.namelist()[:4]})")
            data = z.read(csvs[0])
        return pd.read_csv(io.BytesIO(data), dtype={spec.id_col: str})
    return pd.read_csv(path, dtype={spec.id_col: str})


def check_file(cfg: Config, path: str | Path) -> int:
    spec = resolve_dataset(cfg.data)
    df = read_upload(path, spec)
    validate(df, spec, expected_ids(spec), source=str(path))
    return len(df)


def make_submission(cfg: Config, binary: bool = False, name: str | None = None) -> dict:
    spec = resolve_dataset(cfg.data)
    exp = experiment_dir(cfg)
    src = exp / "test.csv"
    if not src.is_file():
        raise CxrltError(f"{display_path(src)} not found: run src/04_predict.py (or 05_blend.py) for {cfg.name}")
    ids = expected_ids(spec)
    pred = pd.read_csv(src, dtype={spec.id_col: str})
    got = pred[spec.id_col] if spec.id_col in pred.columns else pd.Series([], dtype=str)
    if got.duplicated().any() or set(got) != set(ids):
        raise CxrltError(f"{display_path(src)}: its ids are not the test set's ({len(set(ids) - set(got))} missing, "
                         f"{len(set(got) - set(ids))} extra); re-run src/04_predict.py")
    sub = pred.set_index(spec.id_col).loc[ids].reset_index()[[spec.id_col, *spec.labels]]
    if binary:
        tfile = exp / "thresholds.json"
        if not tfile.is_file():
            raise CxrltError(f"{display_path(tfile)} not found: run src/06_thresholds.py first, or drop --binary")
        t = json.loads(tfile.read_text())["thresholds"]
        sub[list(spec.labels)] = (sub[list(spec.labels)].to_numpy() >= np.array([t[c] for c in spec.labels])).astype(int)
    validate(sub, spec, ids, source="submission", binary=binary)
    name = name or cfg.submission.name or (cfg.name + ("_binary" if binary else ""))
    folder = project_path(cfg.submission.dir)
    csv_path, zip_path = folder / f"{name}.csv", folder / f"{name}.zip"
    write_csv(csv_path, sub, float_format=None if binary else "%.6f")
    data = csv_path.read_bytes()

    def write_zip(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(cfg.submission.inner_name or csv_path.name, data)

    write_atomic(zip_path, write_zip)
    sha = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    metrics = json.loads((exp / "metrics.json").read_text()) if (exp / "metrics.json").is_file() else {}
    members = ",".join(metrics.get("members", {}) or [cfg.name])
    row = pd.DataFrame([dict(time=time.strftime("%Y-%m-%d %H:%M:%S"), file=zip_path.name, sha256=sha,
                             members=members, oof_mAP=metrics.get("mAP"), oof_mAP_honest=metrics.get("mAP_honest"),
                             binary=binary)])
    log = folder / "log.csv"
    old = pd.read_csv(log) if log.is_file() else None
    write_csv(log, row if old is None else pd.concat([old, row], ignore_index=True))
    return dict(csv=csv_path, zip=zip_path, size=zip_path.stat().st_size, sha256=sha, rows=len(sub),
                oof_mAP=metrics.get("mAP"), members=members)
