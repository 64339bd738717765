"""The feature cache of a second stage: what a frozen fold-k backbone sees in every training image,
computed once and kept on disk, so second-stage epochs cost seconds instead of a backbone pass.

Layout: experiments/<first stage>/features/fold<k>/<kind>/ with one .npy per view (rows in
training-CSV order, one flattened feature vector a row: `pooled` = what the classifier reads,
`grid<g>` = the feature map average-pooled to g x g tokens) and manifest.json. The cache belongs to
the first stage's fold-k checkpoint: its key records that file's size and time, the training ids,
the views and the dtype; any change recomputes it. Filling is resumable like the image cache: rows
are written in chunks to <view>.partial.npy (a memory map) and progress.json records the rows done
after each chunk, so a killed fill resumes at its last chunk.

Size: rows x views x dim x bytes. For 377k images, pooled ConvNeXt-B features (1024) in float16 take
0.77 GB per view and fold; a 4 x 4 grid (16 tokens) 12.4 GB, 8 x 8 49 GB: `stage2.grid` bounds it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from cxrlt.choices import CACHE_DTYPES as DTYPES
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, stamps, to_json, write_text



def cache_key(checkpoint: Path, ids, views, dtype: str, kind: str) -> dict:
    """What the cached features depend on: the backbone file, the rows, the views, the storage."""
    h = hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]
    return dict(checkpoint=stamps({"best": checkpoint})["best"], ids=h, n=len(ids), views=list(views), dtype=dtype,
                kind=kind)


class FeatureStore:
    """One fold's cached features: `complete()`, `fill(compute, chunk, bar)`, `arrays()` (read-only memory maps)."""

    def __init__(self, folder: Path, key: dict):
        if key["dtype"] not in DTYPES:
            raise CxrltError(f"stage2.cache_dtype must be one of {', '.join(DTYPES)}, not '{key['dtype']}'")
        self.folder, self.key = Path(folder), key
        self.manifest, self.progress = self.folder / "manifest.json", self.folder / "progress.json"

    def final(self, view: str) -> Path:
        return self.folder / f"{view}.npy"

    def partial(self, view: str) -> Path:
        return self.folder / f"{view}.partial.npy"

    def complete(self) -> bool:
        if not self.manifest.is_file():
            return False
        m = json.loads(self.manifest.read_text())
        return m.get("key") == self.key and all(self.final(v).is_file() for v in self.key["views"])

    def _rows_done(self) -> int:
        """Rows already written by an interrupted fill of the same key (0 if none)."""
        if not self.progress.is_file():
            return 0
        p = json.loads(self.progress.read_text())
        if p.get("key") != self.key or not all(self.partial(v).is_file() for v in self.key["views"]):
            return 0
        return int(p["rows"])

    def fill(self, compute, chunk: int, bar=None, writer: bool = True) -> dict | None:
        """compute(lo, hi) -> {view: array (hi - lo, dim)}; fills rows [0, n) chunk by chunk (resuming
        after the last chunk recorded) and returns {view: read-only memory map (n, dim)}. Several
        processes (a launched job) all call it and compute their shard of each chunk; only the
        `writer` (the main process) writes, and the others get None: they open the arrays after a
        barrier."""
        if self.complete():
            return self.arrays()
        n, views, start = self.key["n"], self.key["views"], self._rows_done()
        if not writer:
            for lo in range(start, n, chunk):
                compute(lo, min(n, lo + chunk))
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        if start == 0:
            self.manifest.unlink(missing_ok=True)
        maps = {v: np.load(self.partial(v), mmap_mode="r+") for v in views} if start else None
        if bar is not None and start:
            bar.update(start)
        for lo in range(start, n, chunk):
            hi = min(n, lo + chunk)
            out = compute(lo, hi)
            if maps is None:   # first chunk: the width is known now
                maps = {v: np.lib.format.open_memmap(self.partial(v), mode="w+", dtype=self.key["dtype"],
                                                     shape=(n, out[v].shape[1])) for v in views}
            for v in views:
                maps[v][lo:hi] = out[v]
                maps[v].flush()
            write_text(self.progress, to_json(dict(key=self.key, rows=hi)))
            if bar is not None:
                bar.update(hi - lo)
        del maps
        for v in views:
            if self.partial(v).is_file():
                os.replace(self.partial(v), self.final(v))
        write_text(self.manifest, to_json(dict(key=self.key)))
        self.progress.unlink(missing_ok=True)
        return self.arrays()

    def arrays(self) -> dict:
        out = {}
        for v in self.key["views"]:
            a = np.load(self.final(v), mmap_mode="r")
            if len(a) != self.key["n"]:
                raise CxrltError(f"{display_path(self.final(v))}: {len(a)} rows, expected {self.key['n']}; "
                                 f"delete {display_path(self.folder)} to recompute it")
            out[v] = a
        return out
