"""Image-cache decode speed: full JPEG decode vs the reduced-DCT decodes stage 01 can use.

    python bench/cache_decode.py FOLDER [--sizes 768 1024] [--repeat 3] [--limit 32] [--workers N]

FOLDER holds radiographs of any format and size (JPEG, PNG...). Each is made into a gray JPEG of
about 2500 x 3000 px at quality 95 (the MIMIC-CXR-JPG shape) in a temporary folder: films smaller
than that are upscaled, larger ones kept at their size. For each cache size it measures, on the
same files in the same run, interleaved so that a change of machine load hits all three alike:

  (a) full    : data.images.decode_gray(path) (full decode) + resize_square   -- the reference
  (b) pil     : decode_gray(path, size_hint=size) (PIL draft, what stage 01 does) + resize_square
  (c) cv2     : cv2.imread(path, IMREAD_REDUCED_GRAYSCALE_2/4/8) at the largest scale keeping both
                sides >= size (as PIL's draft picks it) + resize_square

and prints images/s per CPU-second (process CPU time: the per-core figure, robust to a loaded
machine), images/s of wall time, ratios against (a) and the max / mean abs pixel difference of (b)
and (c) against (a) after the resize. --workers N adds an "across cores" figure: N processes
each decoding the whole set with one method, images/s of wall time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cxrlt.data.images import decode_gray, resize_square  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
           8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
METHODS = ("full", "pil", "cv2")


def make_films(src: Path, out: Path, target=(2500, 3000), limit: int = 0, quality: int = 95) -> list[tuple[Path, tuple]]:
    """Gray JPEGs of about target (w, h) from the films in src: (path, (w, h)) each."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in EXTS and p.is_file())
    made = []
    for p in files:
        if limit and len(made) >= limit:
            break
        try:
            img = decode_gray(p)
        except Exception as e:  # not an image after all: skip it
            print(f"skip {p.name}: {type(e).__name__}", file=sys.stderr)
            continue
        h, w = img.shape
        if w < target[0] or h < target[1]:   # upscale to cover ~target, keeping the film's aspect
            s = max(target[0] / w, target[1] / h)
            img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
        dst = out / f"{len(made):03d}.jpg"
        Image.fromarray(img).save(dst, quality=quality)
        made.append((dst, (img.shape[1], img.shape[0])))
    return made


def cv2_scale(w: int, h: int, size: int) -> int:
    """The largest of 8/4/2/1 that keeps ceil(side / scale) >= size on both sides (PIL draft's rule)."""
    for s in (8, 4, 2):
        if -(-w // s) >= size and -(-h // s) >= size:
            return s
    return 1


def run_one(method: str, path: Path, wh: tuple, size: int) -> np.ndarray:
    if method == "full":
        img = decode_gray(path)
    elif method == "pil":
        img = decode_gray(path, size_hint=size)
    else:
        img = cv2.imread(str(path), REDUCED[cv2_scale(wh[0], wh[1], size)])
    return resize_square(img, size)


def _pool_job(job):
    method, films, size = job
    for p, wh in films:
        run_one(method, p, wh, size)
    return len(films)


def measure(films, size: int, repeat: int) -> dict:
    cpu = {m: 0.0 for m in METHODS}
    wall = {m: 0.0 for m in METHODS}
    diff_max = {m: 0 for m in METHODS}
    diff_sum = {m: 0.0 for m in METHODS}
    pil_cv2 = 0   # max |(b) - (c)|: are the two reduced decodes the same pixels?
    for r in range(repeat):
        for i, (p, wh) in enumerate(films):
            order = METHODS[(i + r) % 3:] + METHODS[:(i + r) % 3]   # rotate who goes first (file cache, load)
            out = {}
            for m in order:
                c0, t0 = time.process_time(), time.perf_counter()
                out[m] = run_one(m, p, wh, size)
                cpu[m] += time.process_time() - c0
                wall[m] += time.perf_counter() - t0
            if r == 0:
                ref = out["full"].astype(np.int16)
                for m in ("pil", "cv2"):
                    d = np.abs(out[m].astype(np.int16) - ref)
                    diff_max[m] = max(diff_max[m], int(d.max()))
                    diff_sum[m] += float(d.mean())
                pil_cv2 = max(pil_cv2, int(np.abs(out["pil"].astype(np.int16) - out["cv2"]).max()))
    n = len(films) * repeat
    return {"pil_vs_cv2_max_abs_diff": pil_cv2} | {m: dict(img_per_cpu_s=n / max(cpu[m], 1e-9), img_per_wall_s=n / max(wall[m], 1e-9),
                    max_abs_diff=diff_max[m], mean_abs_diff=diff_sum[m] / len(films)) for m in METHODS}


def across_cores(films, size: int, workers: int) -> dict:
    out = {}
    with ProcessPoolExecutor(workers, initializer=cv2.setNumThreads, initargs=(1,)) as ex:
        list(ex.map(_pool_job, [("full", films[:2], size)] * workers))   # warm the workers
        for m in METHODS:
            t0 = time.perf_counter()
            n = sum(ex.map(_pool_job, [(m, films, size)] * workers))
            out[m] = n / (time.perf_counter() - t0)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="radiographs to make the test films from")
    p.add_argument("--sizes", type=int, nargs="+", default=[768, 1024])
    p.add_argument("--repeat", type=int, default=3, help="passes over the films per size")
    p.add_argument("--limit", type=int, default=32, help="films to use (0: all)")
    p.add_argument("--target", type=int, nargs=2, default=[2500, 3000], metavar=("W", "H"))
    p.add_argument("--workers", type=int, default=0, help="also measure N processes at once (0: off)")
    p.add_argument("--keep", type=Path, help="make the films here and keep them (default: a temp dir, removed)")
    a = p.parse_args()
    cv2.setNumThreads(1)   # one core per process: a per-core figure, as stage 01's pool workers
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="cxrlt-decode-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        films = make_films(a.folder, tmp, tuple(a.target), a.limit)
        if not films:
            sys.exit(f"no decodable images under {a.folder}")
        ws, hs = zip(*(wh for _, wh in films))
        mb = sum(f.stat().st_size for f, _ in films) / 1e6
        print(f"{len(films)} gray JPEG films (q95), {min(ws)}-{max(ws)} x {min(hs)}-{max(hs)} px, {mb / len(films):.2f} MB each; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for size in a.sizes:
            scales = sorted({cv2_scale(w, h, size) for w, h in zip(ws, hs)})
            r = measure(films, size, a.repeat)
            ref_c, ref_w = r["full"]["img_per_cpu_s"], r["full"]["img_per_wall_s"]
            print(f"\ncache.size={size} (cv2 reduced scale {'/'.join(map(str, scales))}), {a.repeat} passes, "
                  f"load average {os.getloadavg()[0]:.1f}")
            print(f"{'method':<6} {'img/CPU-s':>10} {'x full':>7} {'img/wall-s':>11} {'x full':>7} {'max|d|':>7} {'mean|d|':>8}")
            for m in METHODS:
                x = r[m]
                d = "-" if m == "full" else f"{x['max_abs_diff']:>7d}"
                md = "-" if m == "full" else f"{x['mean_abs_diff']:.3f}"
                print(f"{m:<6} {x['img_per_cpu_s']:>10.2f} {x['img_per_cpu_s'] / ref_c:>7.2f} {x['img_per_wall_s']:>11.2f} "
                      f"{x['img_per_wall_s'] / ref_w:>7.2f} {d:>7} {md:>8}")
            print(f"max |pil - cv2| after the resize: {r['pil_vs_cv2_max_abs_diff']}")
            if a.workers:
                c = across_cores(films, size, a.workers)
                print(f"across {a.workers} processes, img/s wall: " + ", ".join(
                    f"{m} {c[m]:.1f} (x{c[m] / c['full']:.2f})" for m in METHODS))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
