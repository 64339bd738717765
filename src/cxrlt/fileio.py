"""Atomic writes: every output is written to a temporary file in the same folder, then renamed.

A killed run therefore leaves either the old file or the complete new one, never half a file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import yaml

from cxrlt.errors import CxrltError, clip

# Repository root: src/cxrlt/fileio.py -> parents[2].
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_path(p: str | os.PathLike) -> Path:
    """A path from a recipe: absolute stays, relative is taken from the project root."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def display_path(p: str | os.PathLike) -> str:
    """Short form for messages: relative to the project root when inside it."""
    p = Path(p)
    try:
        return str(p.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(p)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; a renamed output gets the mode a plain open() would have given it
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else remove it.

    The temporary name carries the writer's pid (`.name.<pid>.XXXX.tmp`), so `remove_stale_tmp` can
    tell a file left by a killed run from one being written now. A full disk is a one-line error
    naming the path; the previous `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CxrltError(f"{display_path(path)}: no space left on the device (disk or quota full); "
                             f"the previous version of the file is kept") from None
        raise
    except RuntimeError as e:  # torch.save reports a full disk as a RuntimeError of its zip writer
        if "write" in str(e).lower() and shutil.disk_usage(path.parent).free < 64 * 2**20:
            raise CxrltError(f"{display_path(path)}: no space left on the device (disk or quota full); "
                             f"the previous version of the file is kept") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_tmp(folder: str | os.PathLike) -> int:
    """Delete temporary files in `folder` left by writers that no longer run (a kill -9 mid-write);
    returns how many. Files of a live process (or of an unknown writer) are left alone."""
    n = 0
    for f in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else ():
        parts = f.name.split(".")
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        f.unlink(missing_ok=True)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp_path)` and move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda t: t.write_text(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda t: t.write_bytes(data))


def write_csv(path: str | os.PathLike, df, **kwargs) -> Path:
    kwargs.setdefault("index", False)
    return write_atomic(path, lambda t: df.to_csv(t, **kwargs))


def write_yaml(path: str | os.PathLike, obj) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def save_figure(path: str | os.PathLike, fig) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    out = write_atomic(path, lambda t: fig.savefig(t, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return out


# pandas' default missing-value markers, used for every column but the id column
_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
       "NULL", "NaN", "None", "n/a", "nan", "null"]


HEADER_LIMIT = 1 << 20  # bytes: a first line longer than this is not the header of a table this project reads


def first_line(src, limit: int = HEADER_LIMIT, where: str | None = None) -> bytes:
    """The first line of `src` (a path, or a binary buffer left where it was), reading at most
    `limit` bytes: a longer first line (a file of one huge line) is a one-line error naming
    `where`, not a read of the whole line."""
    if hasattr(src, "readline"):
        pos = src.tell()
        line = src.readline(limit + 1)
        src.seek(pos)
    else:   # a compressed CSV (pandas reads x.csv.gz etc. as it is) is read through its decompressor
        import bz2
        import gzip
        import lzma

        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(Path(src).suffix.lower(), open)
        with opener(src, "rb") as f:
            line = f.readline(limit + 1)
    if len(line) > limit:
        where = where or (display_path(src) if isinstance(src, (str, os.PathLike)) else "CSV")
        raise CxrltError(f"{where}: the first line is longer than {limit} bytes, not a CSV header "
                         f"(it starts '{clip(line[:40].decode('utf-8', 'replace'), 40)}')")
    return line


def read_header(src, limit: int = HEADER_LIMIT, where: str | None = None) -> list[str]:
    """Column names of CSV `src` from its first line (first_line: at most `limit` bytes); [] for
    an empty file."""
    import io

    import pandas as pd

    line = first_line(src, limit, where)
    return pd.read_csv(io.BytesIO(line), nrows=0).columns.tolist() if line.strip() else []


def read_table(src, id_col: str | None = None, **kwargs):
    """The project's one CSV reader (pandas.read_csv of a path or buffer; src/ reads no CSV otherwise).

    The id column `id_col` is read as plain strings: an id `NA`, `null`, `None`, `nan` or `N/A` stays
    an id (pandas would read it as missing); other columns keep pandas' usual missing-value markers,
    unless kwargs choose (`dtype=str, keep_default_na=False`: every cell as written). The header is
    read first with a byte limit (read_header)."""
    import pandas as pd

    columns = read_header(src)
    if id_col is not None:
        if kwargs.get("keep_default_na", True) and "na_values" not in kwargs:
            kwargs.update(keep_default_na=False, na_values={c: _NA for c in columns if c != id_col})
        dtype = kwargs.get("dtype")
        if dtype is None or isinstance(dtype, dict):
            kwargs["dtype"] = {**(dtype or {}), id_col: str}
    return pd.read_csv(src, **kwargs)


def to_json(obj, **kwargs) -> str:
    """json.dumps with NaN and infinities written as null (a bare NaN is not JSON)."""
    import json
    import math

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), allow_nan=False, **kwargs)


def stamps(paths: dict) -> dict:
    """{key: [size, mtime_ns]} of files: what an "outputs are up to date" check compares."""
    return {str(k): [Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for k, p in paths.items()}


def intact(recorded: dict | None, folder: str | os.PathLike) -> bool:
    """True when every file named in `recorded` ({name: stamp}, from `stamps`) is in `folder` with
    that stamp: outputs a run vouched for, not rewritten since by a run killed half-way."""
    if not recorded:
        return False
    files = {k: Path(folder) / k for k in recorded}
    return all(p.is_file() for p in files.values()) and stamps(files) == recorded
