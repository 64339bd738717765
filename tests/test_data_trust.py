"""Issue 27, data side: NA-like ids through every CSV read, bounded --check of a one-line file,
unreadable checkpoints, truncated films, a cache keyed on its source, image paths kept under the
image root."""
import re
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_script

from cxrlt.config import load_config
from cxrlt.errors import CxrltError

NA_IDS = ["NA", "null", "None", "nan", "N/A", "x1"]
LABELS = ["A", "B"]


def na_recipe(tmp_path, ids=NA_IDS) -> Path:
    """A custom dataset whose ids are all NA-like (or `ids`), and an experiment folder for it."""
    d = tmp_path / "input" / "na"
    d.mkdir(parents=True)
    train = pd.DataFrame({"dicom_id": ids, "path": [f"{i}.png" for i in range(6)],
                          "subject_id": [f"p{i}" for i in range(6)], "A": [0, 1] * 3, "B": [1, 0] * 3})
    train.to_csv(d / "train.csv", index=False)
    train[["dicom_id", "path"]].to_csv(d / "test.csv", index=False)
    recipe = tmp_path / "na_ids.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": dict(preset="custom", input_dir=str(tmp_path / "input"), dir="na", image_root="na",
                     train_csv="train.csv", test_csv="test.csv", id_col="dicom_id", path_col="path",
                     patient_col="subject_id", labels=LABELS),
        "output_dir": str(tmp_path / "exp"), "submission": dict(dir=str(tmp_path / "subs"))}))
    return recipe


# 7. NA-like ids ---------------------------------------------------------------------------------

def test_stage_07_writes_and_checks_a_submission_of_na_like_ids(tmp_path):
    from cxrlt.ensemble.submission import check_file, make_submission
    from cxrlt.evaluate.predictions import write_predictions

    cfg = load_config(na_recipe(tmp_path))
    from cxrlt.stage import seal

    write_predictions(tmp_path / "exp" / "test.csv", NA_IDS, np.linspace(0, 1, 12).reshape(6, 2), LABELS, "dicom_id")
    seal(tmp_path / "exp" / "metrics.json", {}, [tmp_path / "exp" / "test.csv"])     # as stage 04 vouches for it
    r = make_submission(cfg)
    sub = pd.read_csv(r["csv"], dtype=str, keep_default_na=False)
    assert sub.dicom_id.tolist() == NA_IDS
    assert check_file(cfg, r["zip"]) == 6 and check_file(cfg, r["csv"]) == 6


def test_best_epoch_ap_is_logged_for_na_like_ids(tmp_path):
    from cxrlt.evaluate.predictions import write_predictions
    from cxrlt.train.tracking import log_best_ap

    class Acc:
        trackers = ["tb"]
        logged = None

        def log(self, values, step):
            self.logged = (values, step)

    y = np.array([[0, 1], [1, 0]] * 3)
    write_predictions(tmp_path / "val.csv", NA_IDS[::-1], np.linspace(0, 1, 12).reshape(6, 2), LABELS, "dicom_id")
    acc = Acc()
    log_best_ap(acc, tmp_path / "val.csv", pd.Series(NA_IDS, name="dicom_id"), y, LABELS, 3)
    assert acc.logged[1] == 3 and set(acc.logged[0]) == {"val_AP/A", "val_AP/B"}


def test_src_reads_every_csv_through_the_one_reader():
    """fileio.read_table (and read_header, its bounded header read) is the only pandas.read_csv in src/."""
    stray = []
    for f in sorted((ROOT / "src").rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"read_csv\(", line) and f.name != "fileio.py":
                stray.append(f"{f.relative_to(ROOT)}:{n}")
    fileio = (ROOT / "src" / "cxrlt" / "fileio.py").read_text()
    body = [ln for ln in fileio.splitlines() if "read_csv(" in ln]
    assert not stray, f"CSV reads outside fileio.read_table: {stray}"
    assert len(body) == 2       # read_header's parse of the first line, and read_table


# 10. --check of a file of one huge line -------------------------------------------------------------

@pytest.mark.parametrize("as_zip", [True, False])
def test_check_of_a_one_line_file_is_short_and_bounded(tmp_path, as_zip):
    from cxrlt.ensemble.submission import check_file

    cfg = load_config(na_recipe(tmp_path))
    line = b"x" * (16 << 20)            # 16 MB, no newline: what a 1 GB line does, smaller
    if as_zip:
        bad = tmp_path / "sub.zip"
        with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("sub.csv", line)
    else:
        bad = tmp_path / "sub.csv"
        bad.write_bytes(line)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(CxrltError) as e:
        check_file(cfg, bad)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    msg = str(e.value)
    assert len(msg) < 400 and "\n" not in msg and "first line is longer than" in msg, msg[:500]
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB"     # the header read stops at fileio.HEADER_LIMIT
    assert seconds < 5


def test_check_quotes_at_most_200_characters_of_an_id(tmp_path):
    from cxrlt.ensemble.submission import check_file

    ids = ["a", "b", "c", "d", "e", "f"]
    cfg = load_config(na_recipe(tmp_path, ids))
    long_id = "y" * 100_000
    pd.DataFrame({"dicom_id": [*ids, long_id], "A": 0.5, "B": 0.5}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(CxrltError, match=r"1 ids are not in the test set, e.g. 'y{200}\.\.\. \(100000 characters\)'$"):
        check_file(cfg, tmp_path / "s.csv")


# 8b. model.init_from naming a file that is not a checkpoint -----------------------------------------

@pytest.mark.parametrize("kind", ["text", "truncated", "zip", "empty", "list"])
def test_init_from_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, kind):
    import torch
    from conftest import DEMO

    from cxrlt.models.checkpoint import save
    from cxrlt.models.factory import create_model
    from cxrlt.models.transfer import init_from

    bad = tmp_path / f"{kind}.pt"
    save({"model": {"w": torch.zeros(64, 64)}}, tmp_path / "good.pt")
    if kind == "text":
        bad.write_text("these are not weights\n")
    elif kind == "truncated":
        bad.write_bytes((tmp_path / "good.pt").read_bytes()[:2000])
    elif kind == "zip":
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("notes.txt", "hello")
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        torch.save([1, 2, 3], bad)
    m = load_config(DEMO, []).model
    with pytest.raises(CxrltError, match=rf"^model.init_from .*{kind}.pt: (not a readable PyTorch checkpoint|holds a list)") as e:
        init_from(create_model(m, 2), str(bad), m, LABELS, 32)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


# 3. truncated films are unreadable, whatever PIL's LOAD_TRUNCATED_IMAGES says ------------------------

def demo_copy(tiny_root, tmp_path, *more):
    """A copy of the tiny demo (its images are JPEGs) and a recipe caching it at 32 px in tmp_path."""
    import shutil

    root = tmp_path / "input"
    shutil.copytree(tiny_root / "demo", root / "demo")
    cfg = load_config(ROOT / "experiments" / "demo.yaml", [
        f"data.input_dir={root}", f"cache.dir={tmp_path / 'c'}", "cache.size=32", "cache.workers=1", *more])
    return root / "demo", cfg


def film(h=300, w=400):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((np.sin(xx / 30) + np.cos(yy / 20)) * 60 + 128).astype(np.uint8)


@pytest.mark.parametrize("load_truncated", [False, True])
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_films_are_unreadable(tmp_path, monkeypatch, fmt, load_truncated):
    from PIL import Image, ImageFile

    from cxrlt.data.images import decode_gray

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)   # some library may set it
    Image.fromarray(film()).save(tmp_path / f"whole.{fmt}")
    data = (tmp_path / f"whole.{fmt}").read_bytes()
    assert decode_gray(tmp_path / f"whole.{fmt}").shape == (300, 400)
    # cut at 30%, 90%, and just before the end (a PNG's IEND chunk, a JPEG's end-of-image marker)
    for n in (int(len(data) * 0.3), int(len(data) * 0.9), len(data) - 2):
        (tmp_path / f"cut.{fmt}").write_bytes(data[:n])
        with pytest.raises(Exception, match="truncated"):
            decode_gray(tmp_path / f"cut.{fmt}", size_hint=64)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_stage_01_fails_listing_a_truncated_film(tiny_root, tmp_path, monkeypatch, fmt):
    from PIL import Image, ImageFile

    from cxrlt.data.images import Cache
    from cxrlt.data.stages import prepare_dataset_cache

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    demo, cfg = demo_copy(tiny_root, tmp_path)
    train = pd.read_csv(demo / "train.csv", dtype=str)
    Image.fromarray(film()).save(tmp_path / f"whole.{fmt}")
    data = (tmp_path / f"whole.{fmt}").read_bytes()
    (demo / train.path[0]).write_bytes(data[:len(data) // 3])    # a PNG or JPEG under the .jpg name: PIL reads either
    with pytest.raises(CxrltError, match=r"^1 of 320 images could not be cached"):
        prepare_dataset_cache(cfg, progress=False)
    cache = Cache.from_config(cfg, "demo")
    failed = pd.read_csv(cache.folder / "failed.csv", dtype=str)
    assert failed.id.tolist() == [train.dicom_id[0]] and "truncated" in failed.reason[0]
    assert not cache.path(train.dicom_id[0]).exists()


# 4. the cache is keyed on the source it decoded ---------------------------------------------------

def test_a_changed_path_or_replaced_source_is_decoded_again(tiny_root, tmp_path):
    import os

    from cxrlt.data.images import Cache, decode_gray, read_cached, resize_square
    from cxrlt.data.stages import prepare_dataset_cache

    demo, cfg = demo_copy(tiny_root, tmp_path)
    cache = Cache.from_config(cfg, "demo")
    assert prepare_dataset_cache(cfg, progress=False)["written"] == 320
    train = pd.read_csv(demo / "train.csv", dtype=str, keep_default_na=False)
    a, b, c = train.dicom_id[:3]
    untouched = cache.path(train.dicom_id[10]).stat().st_mtime_ns
    # a's row now names another film (c's); b's film is replaced in place by another one
    other = demo / "other.jpg"
    other.write_bytes((demo / train.path[2]).read_bytes())
    train.loc[0, "path"] = "other.jpg"
    train.to_csv(demo / "train.csv", index=False)
    src_b = demo / train.path[1]
    st = src_b.stat()
    src_b.write_bytes((demo / train.path[5]).read_bytes())
    os.utime(src_b, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = prepare_dataset_cache(cfg, progress=False)
    assert (r["written"], r["skipped"]) == (2, 318)
    for i, src in ((a, other), (b, src_b)):
        assert np.array_equal(read_cached(cache.path(i)), resize_square(decode_gray(src, 32), 32, "stretch"))
    assert cache.path(train.dicom_id[10]).stat().st_mtime_ns == untouched
    assert prepare_dataset_cache(cfg, progress=False)["written"] == 0          # and then it is up to date


def test_a_killed_stage_01_resumes_from_its_manifest(tiny_root, tmp_path, monkeypatch):
    from cxrlt.data import images, stages

    demo, cfg = demo_copy(tiny_root, tmp_path)
    real, calls = images._cache_one, []

    def dies_after_50(job):
        if len(calls) == 50:
            raise KeyboardInterrupt
        calls.append(job[0])
        return real(job)

    monkeypatch.setattr(images, "MANIFEST_EVERY_S", 0.0)
    monkeypatch.setattr(images, "_cache_one", dies_after_50)
    with pytest.raises(KeyboardInterrupt):
        stages.prepare_dataset_cache(cfg, progress=False)
    monkeypatch.setattr(images, "_cache_one", real)
    cache = images.Cache.from_config(cfg, "demo")
    assert sorted(cache.read_manifest()) == sorted(calls)
    r = stages.prepare_dataset_cache(cfg, progress=False)
    assert (r["written"], r["skipped"]) == (270, 50)


# 14. image paths stay under data.image_root -----------------------------------------------------------

@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_image_paths_outside_the_root_are_refused(tiny_root, tmp_path, how):
    from cxrlt.data.images import Cache
    from cxrlt.data.stages import prepare_dataset_cache

    demo, cfg = demo_copy(tiny_root, tmp_path)
    train = pd.read_csv(demo / "train.csv", dtype=str, keep_default_na=False)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((demo / train.path[0]).read_bytes())
    bad = "../../secret.jpg" if how == "dotdot" else str(secret)
    train.loc[4, "path"] = bad
    train.to_csv(demo / "train.csv", index=False)
    with pytest.raises(CxrltError, match=r"train.csv: row 6, column 'path': image path '" + re.escape(bad)
                       + r"' leads outside data.image_root .*data.allow_outside_root=true") as e:
        prepare_dataset_cache(cfg, progress=False)
    assert "\n" not in str(e.value)
    cache = Cache.from_config(cfg, "demo")
    assert not cache.path(train.dicom_id[4]).exists()                  # nothing was opened
    cfg.data.allow_outside_root = True                                 # allowed explicitly: cached
    assert prepare_dataset_cache(cfg, progress=False)["written"] == 320
    assert cache.path(train.dicom_id[4]).is_file()


def test_stage_01_script_names_the_row_of_a_path_outside_the_root(tiny_root, tmp_path):
    demo, cfg = demo_copy(tiny_root, tmp_path)
    train = pd.read_csv(demo / "train.csv", dtype=str, keep_default_na=False)
    (tmp_path / "secret.jpg").write_bytes((demo / train.path[0]).read_bytes())
    train.loc[0, "path"] = "../../secret.jpg"
    train.to_csv(demo / "train.csv", index=False)
    r = run_script("src/01_prepare_images.py", "--config", "experiments/demo.yaml", f"data.input_dir={demo.parent}",
                   f"cache.dir={tmp_path / 'c'}", "cache.size=32", "cache.workers=1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "row 2, column 'path': image path '../../secret.jpg' leads outside" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
