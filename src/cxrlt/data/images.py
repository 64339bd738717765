"""Decode radiographs of any common format to 8-bit gray, resize, and keep a resumable cache.

Each full-size film is decoded once (docs/design.md, "Throughput principles"): `prepare_cache` writes
<cache.dir>/<dataset>/<size>_<resize>_<format>/<id>.<ext>, and training reads only that.
"""
from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from cxrlt.choices import RESIZE_MODES
from cxrlt.fileio import project_path, read_table, write_bytes, write_csv

FORMATS = {"png": ".png", "jpg": ".jpg"}


MAX_PIXELS = 200_000_000  # default cache.max_image_pixels: a 14000 x 14000 film


def decode_gray(path, size_hint: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read JPEG/PNG (modes L, RGB, RGBA, P, LA, 1, I;16, I, F) or DICOM as a 2-D uint8 array;
    `path` is a file path or a binary file object (the web page decodes uploads in memory).

    size_hint lets JPEG decode at a reduced DCT scale that is still >= size_hint on both sides,
    which is several times faster for 3000 px films cached at 768. A film of more than max_pixels
    pixels is refused (a decompression bomb, or a film that needs cache.max_image_pixels raised).
    High-bit-depth films are min-max scaled to 0-255 a block of rows at a time, so a 12000 x 12000
    16-bit PNG costs its own 288 MB plus the 144 MB result, not gigabytes of float64.
    """
    if is_dicom(path):
        return decode_dicom(path, max_pixels)
    Image.MAX_IMAGE_PIXELS = max(int(max_pixels), Image.MAX_IMAGE_PIXELS or 0)  # PIL's own guard: 2x this
    with Image.open(path) as im:
        if im.width * im.height > max_pixels:
            raise ValueError(f"{im.width}x{im.height} is {im.width * im.height / 1e6:.0f} MP, over "
                             f"cache.max_image_pixels={int(max_pixels)}; raise it to cache this film")
        cut = truncated(path, im.format)
        if cut:
            raise ValueError(cut)
        if size_hint and im.format == "JPEG":
            im.draft("L", (size_hint, size_hint))
        if _orientation(im) not in (None, 1):  # exif_transpose copies the whole film even when upright
            im = ImageOps.exif_transpose(im)
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im)
            im.close()  # free the decoder's pixels before the 8-bit result is made
            return _scale_to_uint8(arr)
        if mode == "P":
            im = im.convert("RGBA")
        if mode != "L":
            im = im.convert("L")
        return np.array(im, dtype=np.uint8)


TAIL_BYTES = 1 << 20  # how much of a film's end `truncated` reads
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"   # the PNG end chunk, CRC included


def truncated(src, fmt: str | None) -> str | None:
    """Why a PNG or JPEG file (path or binary file object, left where it was) is cut short, or None.

    Checked on the bytes, so that neither PIL's ImageFile.LOAD_TRUNCATED_IMAGES (set by any library
    that wants it) nor a decoder that pads what is missing (black or grey rows) can pass a partial
    film: a PNG ends with its IEND chunk (within the last TAIL_BYTES), a JPEG has its end-of-image
    marker after its last start-of-scan (neither can occur inside entropy-coded data)."""
    if fmt not in ("PNG", "JPEG"):
        return None
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
            tail = f.read()
    else:
        pos = src.tell()
        src.seek(0, os.SEEK_END)
        src.seek(max(0, src.tell() - TAIL_BYTES))
        tail = src.read()
        src.seek(pos)
    if fmt == "PNG" and _IEND not in tail:
        return "truncated PNG: the file does not end with its IEND chunk"
    if fmt == "JPEG" and tail.rfind(b"\xff\xd9") <= tail.rfind(b"\xff\xda"):
        return "truncated JPEG: no end-of-image marker after the last scan"
    return None


def is_dicom(src) -> bool:
    """A DICOM Part 10 file ('DICM' at byte 128), or a path ending in .dcm."""
    if isinstance(src, (str, os.PathLike)):
        if str(src).lower().endswith(".dcm"):
            return True
        with open(src, "rb") as f:
            head = f.read(132)
    else:
        pos = src.tell()
        head = src.read(132)
        src.seek(pos)
    return head[128:132] == b"DICM"


def decode_dicom(src, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A DICOM film as 2-D uint8: the first frame, min-max scaled, MONOCHROME1 inverted (white = air
    there) so every film reads like the JPEG/PNG ones. A file without pixel data, too many pixels or
    a compressed transfer syntax that pydicom cannot decode here is a ValueError saying which."""
    import pydicom

    try:
        ds = pydicom.dcmread(src)
    except Exception as e:
        raise ValueError(f"not a readable DICOM file ({type(e).__name__}: {str(e)[:120]})") from None
    if "PixelData" not in ds:
        raise ValueError("DICOM file without pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols * int(ds.get("SamplesPerPixel", 1) or 1) > max_pixels:
        raise ValueError(f"{cols}x{rows} is {rows * cols / 1e6:.0f} MP, over cache.max_image_pixels={int(max_pixels)}")
    try:    # the first frame only: a multi-frame file is never decoded whole
        from pydicom.pixels import pixel_array

        arr = pixel_array(ds, index=0) if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ValueError(f"DICOM transfer syntax '{name}' cannot be decoded here ({type(e).__name__}); "
                         f"install pylibjpeg / python-gdcm, or convert the film to PNG") from None
    if int(ds.get("SamplesPerPixel", 1)) > 1:          # colour: rows, cols, 3
        arr = arr.astype(np.float32).mean(-1)
    out = _scale_to_uint8(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def _orientation(im) -> int | None:
    """The EXIF orientation tag, if any (exif_transpose copies the whole film even when it is 1)."""
    try:
        return im.getexif().get(0x0112)
    except Exception:  # unreadable EXIF: treat as none
        return None


def _scale_to_uint8(arr: np.ndarray, rows: int = 1024) -> np.ndarray:
    """Min-max scale to 0-255, in float32 blocks of `rows` rows (bounded extra memory)."""
    lo, hi = float(arr.min()), float(arr.max())
    scale = np.float32(255.0 / (hi - lo) if hi > lo else 0.0)
    out = np.empty(arr.shape, np.uint8)
    for r in range(0, arr.shape[0], rows):
        block = (arr[r:r + rows].astype(np.float32) - np.float32(lo)) * scale
        out[r:r + rows] = np.rint(block)
    return out


def resize_square(img: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """stretch: the whole film fills size x size; pad: keep aspect, centre on black."""
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    if mode == "stretch":
        return cv2.resize(img, (size, size), interpolation=interp)
    if mode != "pad":
        raise ValueError(f"cache.resize must be one of {RESIZE_MODES}, not '{mode}'")
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


def encode(img: np.ndarray, fmt: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(FORMATS[fmt], img, params)
    if not ok:
        raise RuntimeError("encoding failed")
    return buf.tobytes()


def read_cached(path: str | os.PathLike) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f"cached image missing or unreadable: {path}")
    return img


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(image_id: str) -> str:
    return _UNSAFE.sub("_", str(image_id))


MANIFEST = "sources.csv"
MANIFEST_EVERY_S = 60.0   # a long stage 01 rewrites the manifest this often (or 20x the rewrite's own time, if
                          # longer): a killed run decodes again at most what was cached since


def source_stamp(src: str) -> tuple[str, str] | None:
    """(size, mtime_ns) of a source film as the manifest records them, None when it is missing."""
    try:
        st = os.stat(src)
    except OSError:
        return None
    return str(st.st_size), str(st.st_mtime_ns)


@dataclass(frozen=True)
class Cache:
    folder: Path
    size: int
    resize: str
    format: str

    @classmethod
    def from_config(cls, cfg, dataset_name: str) -> "Cache":
        c = cfg.cache
        from cxrlt.errors import CxrltError

        if c.resize not in RESIZE_MODES:
            raise CxrltError(f"cache.resize must be one of {', '.join(RESIZE_MODES)}, not '{c.resize}'")
        if c.format not in FORMATS:
            raise CxrltError(f"cache.format must be one of {', '.join(FORMATS)}, not '{c.format}'")
        folder = project_path(c.dir) / dataset_name / f"{int(c.size)}_{c.resize}_{c.format}"
        return cls(folder, int(c.size), c.resize, c.format)

    def path(self, image_id: str) -> Path:
        return self.folder / (safe_name(image_id) + FORMATS[self.format])

    @property
    def manifest(self) -> Path:
        """sources.csv: id, path, size, mtime_ns of the source file each cached image was decoded from."""
        return self.folder / MANIFEST

    def read_manifest(self) -> dict[str, tuple[str, str, str]]:
        """{id: (path, size, mtime_ns)} as strings; {} without a manifest (a cache from before it)."""
        if not self.manifest.is_file():
            return {}
        m = read_table(self.manifest, "id", dtype=str, keep_default_na=False)
        return {i: (p, z, t) for i, p, z, t in zip(m["id"], m["path"], m["size"], m["mtime_ns"])}

    def write_manifest(self, entries: dict[str, tuple[str, str, str]]) -> None:
        import pandas as pd

        write_csv(self.manifest, pd.DataFrame([(i, *e) for i, e in entries.items()],
                                              columns=["id", "path", "size", "mtime_ns"]))

    def require(self, ids, source, cfg) -> list[Path]:
        """The cached files of ids, or a one-line error naming how many (and one) are not cached."""
        from cxrlt.config import rerun_hint
        from cxrlt.errors import CxrltError
        from cxrlt.fileio import display_path

        ids = list(ids)
        files = [self.path(i) for i in ids]
        missing = [i for i, f in zip(ids, files) if not f.is_file()]
        if missing:
            raise CxrltError(f"{display_path(source)}: {len(missing)} of {len(ids)} ids have no cached image in "
                             f"{display_path(self.folder)} (e.g. '{missing[0]}'); run {rerun_hint(cfg, '01_prepare_images.py')}")
        return files


def _cache_one(job):
    image_id, src, dst, size, resize, fmt, max_pixels = job
    try:
        img = decode_gray(src, size_hint=size, max_pixels=max_pixels)
        write_bytes(dst, encode(resize_square(img, size, resize), fmt))
        return image_id, src, None
    except FileNotFoundError:
        return image_id, src, "file not found"
    except Exception as e:  # any decoder failure is reported per image, the stage goes on
        return image_id, src, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def cache_images(cache: Cache, items: list[tuple[str, str]], workers: int = 0, progress: bool = True,
                 max_pixels: int = MAX_PIXELS):
    """Cache (id, source path) items not cached yet. Returns (n_written, n_skipped, failures).

    An image counts as cached when its file is there and the manifest (Cache.manifest) says it was
    decoded from this path, with the source's size and mtime as they are now: an id whose path
    changed in the CSV, or whose source file was replaced, is decoded again (a source deleted since
    keeps its cached image; stage 01 warns that it is missing). Images cached before the manifest
    existed are decoded again once (those whose source is gone are kept). failures: list of (id,
    path, reason); a failed image's old cached file is removed, so nothing trains on stale pixels.
    Each file is written atomically and the manifest rewritten every MANIFEST_EVERY_S s or so, so a
    killed run resumes about where it stopped.
    """
    from cxrlt.progress import progress_bar

    manifest = cache.read_manifest()
    jobs, stamps = [], {}
    for i, src in items:
        src, stamp = str(src), source_stamp(str(src))
        had = manifest.get(i)
        if cache.path(i).is_file():
            if had is not None and had[0] == src and (stamp is None or tuple(had[1:]) == stamp):
                continue
            if had is None and stamp is None:    # cached before the manifest, its source deleted since: kept
                continue
        manifest.pop(i, None)      # whatever was cached for i no longer vouches for its pixels
        stamps[i] = stamp
        jobs.append((i, src, cache.path(i), cache.size, cache.resize, cache.format, max_pixels))
    skipped = len(items) - len(jobs)
    cache.folder.mkdir(parents=True, exist_ok=True)
    failures = []
    workers = workers or os.cpu_count() or 1
    bar = progress_bar(len(jobs), f"cache {cache.size}px", "img", progress and bool(jobs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pool = get_context("fork").Pool(workers) if workers > 1 and len(jobs) >= 64 else None
        results = pool.imap_unordered(_cache_one, jobs, chunksize=8) if pool else map(_cache_one, jobs)
        saved, cost, changed = time.monotonic(), 0.0, bool(jobs)
        try:
            for r in results:
                if r[2]:
                    failures.append(r)
                    cache.path(r[0]).unlink(missing_ok=True)
                elif stamps[r[0]] is not None:   # the stamp taken before decoding: a file replaced meanwhile is redone
                    manifest[r[0]] = (r[1], *stamps[r[0]])
                bar.update()
                if time.monotonic() - saved > max(MANIFEST_EVERY_S, 20 * cost):   # at most ~5% of the time
                    t = time.monotonic()
                    cache.write_manifest(manifest)
                    saved, cost = time.monotonic(), time.monotonic() - t
        finally:
            if pool:
                pool.close()
                pool.join()
            if changed or not cache.manifest.is_file():
                cache.write_manifest(manifest)
    bar.close()
    return len(jobs) - len(failures), skipped, failures
