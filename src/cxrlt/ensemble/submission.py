"""Stage 07: the leaderboard file (docs/design.md, "Submissions"), validated before anything is written.

`submissions/<name>.csv` and `<name>.zip` (the CSV alone at the zip root): the id column and the
preset's submission labels in order (its labels; a zero-shot preset's findings, e.g. the 5 of
cxr-lt-2024-task3, scored as extra columns of test.csv by stage 04), rows in sample_submission.csv order (else test CSV order), every test id
once, no NaN, values in [0, 1]. Probabilities by default (what mAP scores); `binary` writes 0/1
with the tuned thresholds, for leaderboards that score F1. Every check is linear in the rows (sets
built once), and a file that cannot be read at all (empty, binary, a broken zip) is one line too.
`submissions/log.csv` is appended under an OS file lock, so concurrent runs never lose a row.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from cxrlt.config import Config, rerun_hint
from cxrlt.data.datasets import read_split
from cxrlt.data.experiment import Experiment
from cxrlt.errors import CxrltError, clip
from cxrlt.ensemble.thresholds import predictions_stage
from cxrlt.experiment import experiment_dir
from cxrlt.fileio import display_path, first_line, project_path, read_header, read_table, write_atomic, write_csv
from cxrlt.locks import holder, sign_holder
from cxrlt.runtime import is_main_process
from cxrlt.stage import stage_frame, verified


def expected_ids(spec) -> list[str]:
    """Row order of a submission: sample_submission.csv when the preset has one, else the test CSV."""
    if spec.sample_submission is not None and spec.sample_submission.is_file():
        sub = read_table(spec.sample_submission, spec.id_col)
        if spec.id_col not in sub.columns:
            raise CxrltError(f"{display_path(spec.sample_submission)}: no '{spec.id_col}' column")
        return sub[spec.id_col].tolist()
    return read_split(spec, "test", labels="none")[spec.id_col].tolist()


def validate(df: pd.DataFrame, spec, ids: list[str], source: str = "submission", binary: bool = False) -> None:
    """Raise CxrltError with one line saying why a leaderboard would reject this table."""
    labels = list(spec.submission_labels)
    cols = [spec.id_col, *labels]
    if list(df.columns) != cols:
        if set(df.columns) == set(cols):
            raise CxrltError(f"{source}: columns are in the wrong order (expected {spec.id_col}, then the labels in "
                             f"preset order, starting {', '.join(cols[1:4])}...)")
        have, want = set(df.columns), set(cols)
        missing = [clip(c, 60) for c in cols if c not in have]
        extra = [clip(c, 60) for c in df.columns if c not in want]
        raise CxrltError(f"{source}: wrong columns (missing: {missing[:3] or 'none'}; unexpected: {extra[:3] or 'none'})")
    got = df[spec.id_col].astype(str)
    dup = got[got.duplicated()]
    if len(dup):
        raise CxrltError(f"{source}: id '{clip(dup.iloc[0])}' appears more than once ({dup.nunique()} duplicated ids)")
    have, want = set(got), set(ids)               # built once: every check below is linear
    missing = [i for i in ids if i not in have]
    if missing:
        raise CxrltError(f"{source}: {len(missing)} test ids are missing, e.g. '{clip(missing[0])}'")
    extra = [i for i in got if i not in want]
    if extra:
        raise CxrltError(f"{source}: {len(extra)} ids are not in the test set, e.g. '{clip(extra[0])}'")
    if got.tolist() != list(ids):
        raise CxrltError(f"{source}: rows are not in the order of the sample submission / test CSV")
    values = df[labels].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise CxrltError(f"{source}: NaN or non-numeric value at row {r + 2}, column '{labels[c]}'")
    v = values.to_numpy()
    out = (v < 0) | (v > 1)
    if out.any():
        r, c = np.argwhere(out)[0]
        raise CxrltError(f"{source}: value {v[r, c]} at row {r + 2}, column '{labels[c]}' is outside [0, 1]")
    if binary and not np.isin(v, (0, 1)).all():
        raise CxrltError(f"{source}: --binary expects only 0 and 1")


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")  # local file header, empty zip, spanned zip


def read_upload(path: str | Path, spec) -> pd.DataFrame:
    """A CSV, or a zip holding exactly one CSV at its root, as a table of strings for the ids.

    A file that cannot be read (empty, binary, not CSV, a truncated or corrupt zip, a zip without
    exactly one CSV at its root) raises CxrltError with one line naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrltError(f"{path}: file not found")
    with path.open("rb") as f:
        head = f.read(8192)
    if path.suffix.lower() == ".zip" or head[:4] in ZIP_MAGIC:
        name, data = _zip_member(path)
        return _parse_csv(io.BytesIO(data), data[:8192], f"{path} ({clip(name)} in the zip)", spec.id_col)
    return _parse_csv(path, head, str(path), spec.id_col)


def _zip_member(path: Path) -> tuple[str, bytes]:
    """(name, bytes) of the single CSV at the root of zip `path`, or CxrltError saying what is wrong."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if len(names) != 1:
                shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
                raise CxrltError(f"{path}: the zip holds {len(names)} entries ({clip(shown) or 'none'}); "
                                 f"it must hold exactly one CSV at its root")
            name = names[0]
            if not name.lower().endswith(".csv") or "/" in name:
                raise CxrltError(f"{path}: the zip holds '{clip(name)}', not one CSV at its root")
            with z.open(name) as f:   # a header of one huge line is refused before the member is read
                first_line(f, where=f"{path} ({clip(name)} in the zip)")
                return name, f.read()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise CxrltError(f"{path}: not a readable zip, truncated or corrupt ({clip(e)})") from None


def _parse_csv(src, head: bytes, where: str, id_col: str) -> pd.DataFrame:
    """pandas.read_csv of `src` (path or buffer; `head` its first bytes); an unreadable file is one line."""
    if b"\x00" in head:
        raise CxrltError(f"{where}: binary data (NUL bytes), not a UTF-8 CSV")
    try:
        read_header(src, where=where)   # a first line over fileio.HEADER_LIMIT bytes: refused unread
        return read_table(src, id_col)
    except pd.errors.EmptyDataError:
        raise CxrltError(f"{where}: empty file, not a CSV (no header, no rows)") from None
    except UnicodeDecodeError:
        raise CxrltError(f"{where}: not a text CSV (binary data, or text that is not UTF-8)") from None
    except ValueError as e:  # pandas' ParserError (ragged rows, unclosed quote) and its other complaints
        raise CxrltError(f"{where}: not a readable CSV ({clip(str(e).strip().splitlines()[0])})") from None


def check_file(cfg: Config, path: str | Path) -> int:
    """What `07_make_submission.py --check FILE` runs: read FILE and validate it; returns its row count."""
    spec = Experiment.of(cfg).spec
    df = read_upload(path, spec)
    validate(df, spec, expected_ids(spec), source=str(path))
    return len(df)


def make_submission(cfg: Config, binary: bool = False, name: str | None = None) -> dict:
    """Stage 07 under the experiment's lock: a second run for the same experiment stops at once."""
    with stage_frame(experiment_dir(cfg), None, f"experiment '{cfg.name}' (stage 07)", main=is_main_process()):
        return _make_submission(cfg, binary, name)


def _make_submission(cfg: Config, binary: bool = False, name: str | None = None) -> dict:
    spec = Experiment.of(cfg).spec
    exp = experiment_dir(cfg)
    src = exp / "test.csv"
    if not src.is_file():
        raise CxrltError(f"{display_path(src)} not found: run {rerun_hint(cfg, '04_predict.py')} "
                         f"(src/05_blend.py for a blend)")
    # test.csv as its stage vouched for it, and that stage's figures for the log
    metrics = verified(exp / "metrics.json", ["test.csv"], predictions_stage(cfg, "--force"))
    ids = expected_ids(spec)
    pred = read_table(src, spec.id_col)
    got = pred[spec.id_col] if spec.id_col in pred.columns else pd.Series([], dtype=str)
    if got.duplicated().any() or set(got) != set(ids):
        raise CxrltError(f"{display_path(src)}: its ids are not the test set's ({len(set(ids) - set(got))} missing, "
                         f"{len(set(got) - set(ids))} extra); re-run src/04_predict.py")
    labels = list(spec.submission_labels)
    absent = [c for c in labels if c not in pred.columns]
    if absent:
        raise CxrltError(f"{display_path(src)}: no column '{absent[0]}' ({len(absent)} submission labels missing); "
                         f"zero-shot labels need stage 04 of a model.class_queries=text recipe: "
                         f"{rerun_hint(cfg, '04_predict.py', '--force')}")
    sub = pred.set_index(spec.id_col).loc[ids].reset_index()[[spec.id_col, *labels]]
    if binary:
        tfile = exp / "thresholds.json"
        if not tfile.is_file():
            raise CxrltError(f"{display_path(tfile)} not found: run {rerun_hint(cfg, '06_thresholds.py')} first, "
                             f"or drop --binary")
        tuned = json.loads(tfile.read_text())
        if tuned.get("inputs", {}).get("oof.csv") != metrics["outputs"].get("oof.csv"):
            raise CxrltError(f"{display_path(tfile)} was tuned on another oof.csv than the one that goes with "
                             f"test.csv (stage 04/05 redone since); re-run {rerun_hint(cfg, '06_thresholds.py')}")
        t = tuned["thresholds"]
        untuned = [c for c in labels if c not in t]
        if untuned:   # thresholds are tuned on OOF labels, which a zero-shot finding does not have
            raise CxrltError(f"{display_path(tfile)}: no threshold for '{untuned[0]}' (a label without OOF labels, "
                             f"e.g. zero-shot); submit probabilities (drop --binary)")
        sub[labels] = (sub[labels].to_numpy() >= np.array([t[c] for c in labels])).astype(int)
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
    members = ",".join(metrics.get("members", {}) or [cfg.name])
    append_log(folder / "log.csv", dict(time=time.strftime("%Y-%m-%d %H:%M:%S"), file=zip_path.name, sha256=sha,
                                        members=members, **local_figures(metrics), binary=binary))
    return dict(csv=csv_path, zip=zip_path, size=zip_path.stat().st_size, sha256=sha, rows=len(sub),
                oof_mAP=metrics.get("mAP"), members=members)


def local_figures(metrics: dict) -> dict:
    """The local figures a submission is logged with (blank where its metrics.json has none): the
    pooled OOF mAP (after per-fold normalisation when `predict.oof_normalise` is set, as stage 04
    reports it), a blend's honest OOF mAP, the per-fold mean, the normalised OOF mAP (only when
    normalised) and the development mAP (a labelled split kept apart)."""
    norm = (metrics.get("settings") or {}).get("oof_normalise", "none")
    return dict(oof_mAP=metrics.get("mAP"), oof_mAP_honest=metrics.get("mAP_honest"),
                oof_mAP_fold_mean=((metrics.get("folds") or {}).get("mean") or {}).get("mAP"),
                oof_mAP_normalised=metrics.get("mAP") if norm not in (None, "none") else None,
                dev_mAP=(metrics.get("development") or {}).get("mAP"))


LOG_LOCK_TIMEOUT = 60.0  # seconds; an append takes milliseconds, so a longer wait means a stuck holder


def log_lock(log: str | Path, timeout: float = LOG_LOCK_TIMEOUT) -> FileLock:
    """The lock on `log` (an OS flock on `<log>.lock`: the kernel drops it when its holder dies)."""
    return FileLock(f"{log}.lock", timeout=timeout, on_acquired=sign_holder)


def append_log(log: str | Path, row: dict, timeout: float = LOG_LOCK_TIMEOUT) -> None:
    """Add `row` to the CSV `log`: read, append, atomic rewrite, all under `log_lock`.

    Concurrent runs are serialised, so none loses another's row; a lock left by a killed process
    does not block (flock dies with its process). If the lock cannot be taken within `timeout` s,
    CxrltError names the lock and its holder.
    """
    def add(rows):   # old rows as strings: rewritten exactly as they were
        new = pd.DataFrame([row])
        return (new if len(rows.columns) == 0 else pd.concat([rows, new], ignore_index=True)), None

    update_log(log, add, timeout)


def update_log(log: str | Path, edit, timeout: float = LOG_LOCK_TIMEOUT):
    """Rewrite the CSV `log` under `log_lock`: `edit(rows)` gets every row as strings (a DataFrame,
    blank for a missing value) and returns the table to write (new columns and rows allowed) and a
    result handed back to the caller. Rows keep their order, so a row's index stays its identity."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    lock = log_lock(log, timeout)
    try:
        with lock:
            rows = read_table(log, dtype=str, keep_default_na=False) if log.is_file() else pd.DataFrame()
            rows, result = edit(rows)
            write_csv(log, rows.fillna(""))
            return result
    except Timeout:
        raise CxrltError(f"{display_path(lock.lock_file)}: lock not taken within {timeout:g} s (held by "
                         f"{holder(lock.lock_file)}); {display_path(log)} not updated") from None
