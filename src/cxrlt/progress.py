"""Progress that suits where stdout goes: a tqdm bar on a terminal, plain lines in a log file.

    bar = progress_bar(len(jobs), "cache 512px", "img", enabled=progress)
    for job in jobs: ...; bar.update()
    bar.close()

When stdout is not a terminal (`nohup ... > log`, a cluster's job log, CI), carriage-return frames
would fill the log with junk, so the bar becomes one plain line every 10 % of the work and one at
its end, with the rate and the ETA. `CXRLT_PROGRESS=tty|plain|off` overrides the choice.
"""
from __future__ import annotations

import math
import os
import sys
import time

from cxrlt.errors import CxrltError

MODES = ("tty", "plain", "off")


def progress_mode() -> str:
    """tty (a tqdm bar), plain (log lines) or off: CXRLT_PROGRESS if set, else from stdout."""
    mode = os.environ.get("CXRLT_PROGRESS", "").strip().lower()
    if mode and mode not in MODES:
        raise CxrltError(f"CXRLT_PROGRESS must be one of {', '.join(MODES)}, not '{mode}'")
    return mode or ("tty" if sys.stdout.isatty() else "plain")


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, leave: bool = True, iterable=None):
    """A tqdm bar on a terminal, a PlainProgress otherwise (same update / set_postfix / close, and
    iterating over `iterable` when given); nothing is shown when `enabled` is false."""
    mode = progress_mode() if enabled else "off"
    if mode == "tty":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stdout, dynamic_ncols=True)
    return PlainProgress(total, desc, unit, enabled=mode == "plain", iterable=iterable)


def _clock(seconds: float) -> str:
    """H:MM:SS or M:SS."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PlainProgress:
    """tqdm's update / set_postfix / close as plain lines: one each `every` fraction of `total` and
    one at the end, e.g. `fold 0 epoch 2/20: 120/600 batch (20%), 3.1 batch/s, ETA 2:35, loss=0.4123`."""

    def __init__(self, total: int, desc: str, unit: str = "it", every: float = 0.1, enabled: bool = True,
                 iterable=None, file=None, clock=time.monotonic):
        self.total, self.desc, self.unit, self.enabled = int(total), desc, unit, enabled
        self.step = max(1, math.ceil(self.total * every))
        self.iterable, self.file, self.clock = iterable, file, clock
        self.n = self.shown = 0
        self.postfix = ""
        self.t0 = clock()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def update(self, n: int = 1) -> None:
        """Count n more units; print when a new `every` step is crossed or the work is complete."""
        before, self.n = self.n, self.n + n
        if self.n // self.step > before // self.step or (self.n >= self.total > before):
            self._print()

    def set_postfix(self, **values) -> None:
        """key=value pairs added to the next lines (no line of its own)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """The last line, unless the count was already shown (a loop that stopped early gets one)."""
        if self.n != self.shown:
            self._print()
        self.enabled = False  # close() twice, or after iterating, prints nothing more

    def _print(self) -> None:
        self.shown = self.n
        if not self.enabled:
            return
        elapsed = self.clock() - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        if self.n < self.total:
            when = f"ETA {_clock((self.total - self.n) / rate)}" if rate > 0 else "ETA ?"
        else:
            when = f"done in {_clock(elapsed)}"
        speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s/{self.unit}"
        line = f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {speed}, {when}"
        print(line + (f", {self.postfix}" if self.postfix else ""), file=self.file or sys.stdout, flush=True)
