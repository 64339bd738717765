"""Atomic writes: every output is written to a temporary file in the same folder, then renamed.

A killed run therefore leaves either the old file or the complete new one, never half a file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import yaml

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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def stamps(paths: dict) -> dict:
    """{key: [size, mtime_ns]} of files: what an "outputs are up to date" check compares."""
    return {str(k): [Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for k, p in paths.items()}
