"""The frame every stage runs in: one place for what each stage used to re-write around its work.

    with stage_frame(folder, "metrics.json", f"experiment '{name}' (stage 04)", force=force) as frame:
        old = frame.vouched(inputs=..., settings=...)
        if old is not None:
            return dict(old, skipped=True)          # up to date: the stage says so and does nothing
        ... work, writing outputs atomically (fileio) ...
        frame.seal(record, outputs=[...])           # the stamp, written last

The frame: takes the folder's lock (locks.exclusive: a second run stops at once with one line naming
the holder); removes temporary files left by a killed writer; puts back what a killed `--force` run
had set aside (below); answers "are the outputs vouched for by the stamp?" (`vouched`); writes the
stamp last (`seal`: the record plus size and mtime of every output it vouches for, so an output
rewritten after it by a run killed before its own stamp is seen); and, for `--force`, sets the old
outputs aside (`set_aside`) instead of deleting them: they come back when the run fails and are
deleted only when it completes.

A stage checks what its predecessor left with `verified(stamp, files, rerun)` before using it: the
predecessor's stamp must vouch for those files as they are now, or a one-line error says which
stage to re-run (a stage killed after replacing oof.csv but before its metrics.json leaves an
oof.csv that no later stage may use).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Iterator

from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, intact, remove_stale_tmp, stamps, to_json, write_text
from cxrlt.locks import exclusive

ASIDE = ".replaced"   # where --force puts the previous outputs until the new run completes


def read_stamp(stamp: str | os.PathLike) -> dict | None:
    """A stamp file's record; None when it is absent or unreadable (a stamp is written atomically,
    so an unreadable one was not written by this pipeline)."""
    try:
        rec = json.loads(Path(stamp).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def verified(stamp: str | os.PathLike, files: Iterable[str], rerun: str, strict: bool = True) -> dict:
    """The record of a predecessor's stamp after checking that it vouches for `files` (names beside
    it) as they are now; else a one-line CxrltError telling to re-run `rerun` (the command).
    strict=False accepts a stamp that records no outputs at all (written before stamps did)."""
    stamp = Path(stamp)
    rec = read_stamp(stamp)
    if rec is None:
        raise CxrltError(f"{display_path(stamp)} not found: nothing vouches for "
                         f"{', '.join(files)} (a run killed before its end?); re-run {rerun}")
    outputs = rec.get("outputs")
    if outputs is None and not strict:
        return rec
    for name in files:
        if not (stamp.parent / name).is_file():
            raise CxrltError(f"{display_path(stamp.parent / name)} not found; re-run {rerun}")
        if name not in (outputs or {}) or not intact({name: outputs[name]}, stamp.parent):
            raise CxrltError(f"{display_path(stamp.parent / name)} is not the file {stamp.name} vouches for "
                             f"(rewritten by a run killed before its end?); re-run {rerun}")
    return rec


def seal(stamp: str | os.PathLike, record: dict, outputs: Iterable[str | os.PathLike] = ()) -> dict:
    """Write the stamp file `stamp`: `record` plus `outputs` ({file name: [size, mtime_ns]} of each
    output path that exists, in the stamp's folder). Returns the record written."""
    outputs = list(outputs)
    if outputs:
        record = dict(record, outputs=stamps({Path(p).name: p for p in outputs if Path(p).is_file()}))
    write_text(stamp, to_json(record, indent=1))
    return record


class Frame:
    """One run of a stage on its output folder (made by `stage_frame`)."""

    def __init__(self, folder: Path, stamp: Path | None, force: bool, main: bool):
        self.folder, self.stamp, self.force, self.main = folder, stamp, force, main
        self.aside: Path | None = None

    def record(self) -> dict | None:
        return read_stamp(self.stamp) if self.stamp is not None else None

    def vouched(self, outputs: bool = True, **depends) -> dict | None:
        """The stamp's record when the outputs are up to date: not --force, the stamp there, made
        with the same `depends` (each compared with the stamp's key of that name: input stamps,
        settings) and, with `outputs`, every output it vouches for unchanged since. Else None."""
        if self.force:
            return None
        old = self.record()
        if old is None or any(old.get(k) != v for k, v in depends.items()):
            return None
        if outputs and not intact(old.get("outputs"), self.folder):
            return None
        return old

    def seal(self, record: dict, outputs: Iterable[str | os.PathLike] = ()) -> dict:
        """Write the stamp, last: `record` plus `outputs` ({file name: [size, mtime_ns]} of each
        output path, in the stamp's folder). Returns the record written."""
        if not self.main:
            return record
        return seal(self.stamp, record, outputs)

    def set_aside(self, names: Iterable[str]) -> None:
        """--force: move the named outputs (files or folders) of the previous run into `.replaced/`;
        they are put back if this run fails and deleted when it completes."""
        if not self.main:
            return
        aside = self.folder / ASIDE
        shutil.rmtree(aside, ignore_errors=True)
        for name in names:
            if (self.folder / name).exists():
                aside.mkdir(parents=True, exist_ok=True)
                os.replace(self.folder / name, aside / name)
        self.aside = aside if aside.is_dir() else None

    def _restore(self) -> None:
        restore_aside(self.folder)
        self.aside = None

    def _commit(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None


def restore_aside(folder: Path) -> bool:
    """Put back the outputs a `--force` run set aside (replacing what that run wrote of them)."""
    aside = Path(folder) / ASIDE
    if not aside.is_dir():
        return False
    for p in aside.iterdir():
        dest = Path(folder) / p.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(p, dest)
    shutil.rmtree(aside, ignore_errors=True)
    return True


@contextlib.contextmanager
def stage_frame(folder: str | os.PathLike, stamp: str | None, what: str, force: bool = False, main: bool = True,
                lock: str | os.PathLike | None = None) -> Iterator[Frame]:
    """Run a stage on `folder` (its outputs) whose stamp file is `stamp` (a name in `folder`, or a
    path; None for a stage whose outputs are always rewritten): under the lock (`lock`, default `folder/.stage.lock`; `what` names the work in the
    message a second run gets), after stale temporary files are removed and what a killed --force
    run set aside is put back. main=False (a non-main accelerate process): no lock, no cleanup.
    An exception in the block puts back what `set_aside` moved; leaving it normally deletes it."""
    folder = Path(folder)
    frame = Frame(folder, folder / stamp if stamp else None, force, main)
    with exclusive(lock or folder / ".stage.lock", what, enabled=main):
        if main:
            remove_stale_tmp(folder)   # left by a run killed mid-write
            if restore_aside(folder):
                print(f"{display_path(folder)}: put back the outputs a --force run killed before its end had set "
                      f"aside", file=sys.stderr)
        try:
            yield frame
        except BaseException:
            if frame.aside is not None:
                frame._restore()
            raise
        frame._commit()
