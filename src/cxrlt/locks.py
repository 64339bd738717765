"""One process at a time on the same outputs: a second run of the same fold, experiment stage or
cache stops at once with a line naming the process that holds it, instead of both working (wasted
GPU-hours) or racing on the same files.

The lock is `filelock`'s OS-level lock (flock) on a `.lock` file: the operating system releases it
when its holder dies, even by kill -9, so a stale lock never blocks. On taking it, the holder writes
who it is (pid, host, start time, command) into the lock file, for the message a second run prints.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path


def sign_holder(fd: int) -> None:
    """filelock `on_acquired` hook: write who holds the lock into the lock file."""
    who = (f"process {os.getpid()} on {socket.gethostname()} (started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
           f"{' '.join(sys.argv)[:200]})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, who.encode(), 0)


def holder(lock_file: str | os.PathLike) -> str:
    try:
        return Path(lock_file).read_text(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike, what: str, enabled: bool = True, timeout: float = 0.0) -> Iterator[None]:
    """Hold the lock `lock_file` while the block runs (waiting up to `timeout` s for it), or raise a
    one-line CxrltError saying `what` is in use and by whom. enabled=False (e.g. a non-main
    accelerate process) does nothing."""
    if not enabled:
        yield
        return
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout, on_acquired=sign_holder)
    try:
        lock.acquire()
    except Timeout:
        raise CxrltError(f"{what} is in use by {holder(path)}; wait for it to finish or stop it "
                         f"(lock {display_path(path)})") from None
    try:
        yield
    finally:
        lock.release()
