
import numpy as np
import pandas as pd
import pytest
from conftest import REALDATA
from PIL import Image

from cxrlt.config import load_config
from cxrlt.data.datasets import resolve_dataset
from cxrlt.data.images import Cache, decode_gray, read_cached, resize_square
from cxrlt.data.stages import prepare_dataset_cache
from cxrlt.errors import CxrltError


def ramp(h=40, w=30):
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA"])
def test_decode_8bit_modes(tmp_path, mode):
    g = ramp()
    Image.fromarray(g).convert(mode).save(tmp_path / "x.png")
    out = decode_gray(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == g.shape
    tol = 0 if mode in ("L", "RGB", "RGBA", "LA") else 8   # a palette quantises
    assert np.abs(out.astype(int) - g).max() <= tol


def test_decode_16bit_scales_full_range(tmp_path):
    a = np.linspace(1000, 5000, 40 * 30).reshape(40, 30).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "x16.png")
    out = decode_gray(tmp_path / "x16.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)   # order kept


def test_decode_jpeg_with_draft_keeps_size_at_least_hint(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 600), dtype=np.uint8)).save(tmp_path / "a.jpg")
    out = decode_gray(tmp_path / "a.jpg", size_hint=128)
    assert min(out.shape) >= 128 and out.shape[0] < 800     # decoded at a reduced DCT scale


def test_resize_modes():
    img = np.full((100, 50), 200, np.uint8)
    s = resize_square(img, 64, "stretch")
    assert s.shape == (64, 64) and s.min() == 200
    p = resize_square(img, 64, "pad")
    cols = np.flatnonzero(p[32] > 0)
    assert p.shape == (64, 64) and len(cols) == 32 and cols[0] == 16   # aspect kept, centred


def test_cache_round_trip_and_resume(tiny_cfg):
    r = prepare_dataset_cache(tiny_cfg, progress=False)
    assert r["written"] == r["total"] == 320 and r["skipped"] == 0
    spec = resolve_dataset(tiny_cfg.data)
    cache = Cache.from_config(tiny_cfg, spec.name)
    train = pd.read_csv(spec.train_csv)
    src = spec.image_root / train.path[0]
    cached = read_cached(cache.path(train.dicom_id[0]))
    assert np.array_equal(cached, resize_square(decode_gray(src, 64), 64, "stretch"))   # png is lossless
    assert (cache.folder / "prepare_config.yaml").is_file()
    # resume: remove three files; only they are redone, the others are not touched
    gone = [cache.path(i) for i in train.dicom_id[:3]]
    kept = cache.path(train.dicom_id[10])
    before = kept.stat().st_mtime_ns
    for p in gone:
        p.unlink()
    r2 = prepare_dataset_cache(tiny_cfg, progress=False)
    assert r2["written"] == 3 and r2["skipped"] == 317
    assert all(p.is_file() for p in gone) and kept.stat().st_mtime_ns == before


def test_bad_images_reported_and_the_rest_cached(tiny_cfg, tiny_root, tmp_path):
    # a copy of the tiny demo with one corrupt and one missing image
    import shutil

    root = tmp_path / "input"
    shutil.copytree(tiny_root / "demo", root / "demo")
    train = pd.read_csv(root / "demo" / "train.csv")
    (root / "demo" / train.path[0]).write_bytes(b"not a jpeg")
    (root / "demo" / train.path[1]).unlink()
    cfg = load_config(tiny_cfg.recipe, [f"data.input_dir={root}", f"cache.dir={tmp_path / 'c'}", "cache.size=32",
                                        "cache.workers=1"])
    with pytest.raises(CxrltError, match=r"^2 of 320 images could not be cached") as e:
        prepare_dataset_cache(cfg, progress=False)
    assert "\n" not in str(e.value)
    cache = Cache.from_config(cfg, "demo")
    failed = pd.read_csv(cache.folder / "failed.csv")
    assert set(failed.id) == {train.dicom_id[0], train.dicom_id[1]}
    assert "file not found" in failed.set_index("id").reason[train.dicom_id[1]]
    assert len(list(cache.folder.glob("*.png"))) == 318


def test_stage_script_reports_one_line_error(tmp_path, stage):
    r = stage("src/01_prepare_images.py", "--config", "experiments/demo.yaml", f"data.input_dir={tmp_path}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "file not found" in r.stderr


@pytest.mark.skipif(not REALDATA.is_dir(), reason="shared/realdata/covid_sample not present")
def test_real_radiographs_of_mixed_formats_cache(tmp_path):
    labels = pd.read_csv(REALDATA / "labels.csv")
    findings = [c for c in labels.columns if c not in ("image_id", "patient_id", "view", "path", "license")]
    import yaml

    recipe = tmp_path / "real.yaml"
    recipe.write_text(yaml.safe_dump({"data": dict(
        preset="custom", input_dir=str(REALDATA.parent), dir=REALDATA.name, train_csv="labels.csv",
        id_col="image_id", path_col="path", patient_col="patient_id", labels=findings),
        "cache": dict(size=128, dir=str(tmp_path / "cache"), workers=2)}))
    cfg = load_config(recipe)
    r = prepare_dataset_cache(cfg, progress=False)
    assert r["written"] == len(labels) and r["total"] == len(labels)
    cache = Cache.from_config(cfg, REALDATA.name)
    for i in labels.image_id:
        img = read_cached(cache.path(i))
        assert img.shape == (128, 128) and img.dtype == np.uint8 and img.std() > 5
