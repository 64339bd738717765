import random

import numpy as np
import pytest
from conftest import ROOT

from cxrlt.config import load_config
from cxrlt.data.augment import build_transform, combine_labels, mosaic
from cxrlt.data.labels import LABELS_2023
from cxrlt.data.loader import CxrDataset, repeat_factors

NF, SD, AT, EF = (LABELS_2023.index(x) for x in ("No Finding", "Support Devices", "Atelectasis", "Pleural Effusion"))


def vec(*idx):
    v = np.zeros(26, np.float32)
    v[list(idx)] = 1
    return v


def mix(*ys):
    return combine_labels(np.stack(ys), NF, (SD,))


def test_union_is_clip_of_sum():
    y = mix(vec(AT), vec(AT, EF), vec(EF), vec(AT))
    assert y.max() == 1 and y[AT] == 1 and y[EF] == 1 and y.sum() == 2


def test_no_finding_only_when_nothing_else_shows():
    assert mix(vec(NF), vec(NF), vec(NF), vec(NF))[NF] == 1
    y = mix(vec(NF), vec(NF), vec(AT), vec(NF))        # a finding in one tile: not normal
    assert y[NF] == 0 and y[AT] == 1
    y = mix(vec(NF), vec(NF, SD), vec(NF), vec(NF))    # devices are allowed with normal
    assert y[NF] == 1 and y[SD] == 1
    y = mix(vec(SD), vec(SD), vec(SD), vec(SD))        # no source was normal
    assert y[NF] == 0 and y[SD] == 1
    assert combine_labels(np.stack([vec(NF), vec(AT)]))[NF] == 1   # no normal class given: plain union


def test_mosaic_resize_puts_each_image_in_its_quadrant():
    imgs = [np.full((64, 64), v, np.uint8) for v in (10, 20, 30, 40)]
    out, vis = mosaic(imgs, 64, "resize", random.Random(0))
    assert out[:32, :32].min() == out[:32, :32].max() == 10 and out[:32, 32:].max() == 20
    assert out[32:, :32].max() == 30 and out[32:, 32:].max() == 40 and vis.tolist() == [0.25] * 4


def test_mosaic_crop_areas_match_pixels():
    imgs = [np.full((64, 64), v, np.uint8) for v in (10, 20, 30, 40)]
    for seed in range(5):
        out, vis = mosaic(imgs, 64, "crop", random.Random(seed))
        counts = [(out == v).mean() for v in (10, 20, 30, 40)]
        assert np.allclose(counts, vis) and vis.sum() == pytest.approx(1.0)


def make_ds(tmp_path, labels, partner_weights=None, values=None, **aug):
    import cv2

    files = []
    for i in range(len(labels)):
        f = tmp_path / f"{i}.png"
        cv2.imwrite(str(f), np.full((32, 32), values[i] if values else 10 * (i + 1), np.uint8))
        files.append(f)
    cfg = load_config(ROOT / "experiments" / "demo.yaml", [f"augment.{k}={v}" for k, v in aug.items()] + [
        "augment.hflip=0", "augment.affine=0", "augment.brightness_contrast=0", "augment.dropout=0"])
    return CxrDataset(files, np.stack(labels), cfg.augment, NF, (SD,), partner_weights=partner_weights)


def test_dataset_mosaic_labels_follow_visible_sources(tmp_path):
    labels = [vec(NF), vec(NF), vec(NF), vec(AT)]
    ds = make_ds(tmp_path, labels, mosaic=1.0, mosaic_variants="[resize]")
    for seed in range(20):
        ds.reseed(seed)
        img, y, _ = ds[0]
        sources = {int(v) // 10 - 1 for v in np.unique(img.numpy())}
        expected = mix(*[labels[s] for s in sources])
        assert np.array_equal(y.numpy(), expected), (sources, y)


def test_dataset_mixup_and_cutmix_use_the_rule(tmp_path):
    labels = [vec(NF), vec(AT)]
    for op in ("mixup", "cutmix"):
        ds = make_ds(tmp_path, labels, mosaic=0.0, **{op: 1.0})
        ds.reseed(1)
        img, y, _ = ds[0]
        values = set(np.unique(img.numpy()).tolist())
        if op == "mixup":                                        # a blend of 10 and 20
            assert all(10 < v < 20 for v in values)
        else:                                                    # a box of 20 pasted into 10
            assert values == {10, 20}
        assert y[AT] == 1 and y[NF] == 0


def test_transform_is_seedable_and_keeps_shape(tmp_path):
    cfg = load_config(ROOT / "experiments" / "demo.yaml", ["augment.dropout=0.5"])
    t = build_transform(cfg.augment)
    img = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
    t.set_random_seed(3)
    a = t(image=img)["image"]
    t.set_random_seed(3)
    assert np.array_equal(a, t(image=img)["image"]) and a.shape == img.shape and a.dtype == np.uint8


def test_repeat_factors():
    y = np.zeros((100, 2))
    y[:50, 0] = 1
    y[:1, 1] = 1
    r = repeat_factors(y, t=0.1, cap=3.0)
    assert r[0] == pytest.approx(min(3.0, np.sqrt(0.1 / 0.01))) and r[10] == 1.0 and r[99] == 1.0


def test_unknown_mosaic_variant_is_a_config_error(tmp_path):
    from cxrlt.errors import CxrltError

    with pytest.raises(CxrltError, match="mosaic_variants"):
        make_ds(tmp_path, [vec(NF), vec(AT)], mosaic=0.5, mosaic_variants="[crop, zoom]")


def test_linear_labels_follow_pixel_shares(tmp_path):
    labels = [vec(AT), vec(EF)]
    for op in ("mixup", "cutmix"):
        ds = make_ds(tmp_path, labels, values=[200, 0], mosaic=0.0, mix_labels="linear", **{op: 1.0})
        for seed in range(5):
            ds.reseed(seed)
            img, y, _ = ds[0]
            share = img.numpy().astype(np.float64).mean() / 200          # share of image 0's pixels
            assert y[AT] == pytest.approx(share, abs=0.01) and y[EF] == pytest.approx(1 - share, abs=0.01)
            assert y.sum() == pytest.approx(1.0, abs=1e-5) and y[NF] == 0
    (tmp_path / "m").mkdir()
    ds = make_ds(tmp_path / "m", [vec(NF), vec(NF), vec(AT), vec(EF)], mosaic=1.0, mosaic_variants="[resize]",
                 mix_labels="linear")
    ds.reseed(0)
    _, y, _ = ds[0]
    assert y.sum() == pytest.approx(1.0) and set(np.round(y.numpy() * 4, 6).tolist()) <= {0, 1, 2, 3, 4}


def test_balanced_mixup_draws_partners_by_weight(tmp_path):
    labels = [vec(AT), vec(AT), vec(AT), vec(EF)]
    ds = make_ds(tmp_path, labels, partner_weights=[0, 0, 0, 1.0], values=[200, 200, 200, 0], mosaic=0.0,
                 balanced_mixup=1.0, balanced_mixup_alpha=0.2, mix_labels="linear")
    lams = []
    for seed in range(200):
        ds.reseed(seed)
        img, y, _ = ds[seed % 3]
        lam = img.numpy().astype(np.float64).mean() / 200                   # the instance's pixel share
        assert y[AT] == pytest.approx(lam, abs=0.01) and y[EF] == pytest.approx(1 - lam, abs=0.01)   # partner: image 3
        lams.append(lam)
    assert np.mean(lams) == pytest.approx(0.2 / 1.2, abs=0.05)                 # Beta(0.2, 1) has mean 1/6
    from cxrlt.errors import CxrltError

    with pytest.raises(CxrltError, match="partner"):
        make_ds(tmp_path, labels, balanced_mixup=1.0)
    with pytest.raises(CxrltError, match="mix_labels"):
        make_ds(tmp_path, labels, mix_labels="sum")


def test_the_union_rule_for_soft_and_unlabelled_targets():
    """Mixing films whose targets are probabilities (a teacher's) or unknown (NaN: a set that does not
    label the finding): 1 - prod(1 - p), unknown unless some source is a certain positive; the normal
    class = P(a source normal) x P(no other finding); on 0/1 labels it is the hard rule exactly."""
    import numpy as np

    from cxrlt.data.augment import combine_labels, soft_union

    rng = np.random.default_rng(0)
    for ys in (rng.integers(0, 2, (3, 5)).astype(np.float32) for _ in range(200)):
        for normal, allowed in [(None, ()), (0, ()), (0, (4,))]:
            assert soft_union(ys, normal, allowed).tolist() == combine_labels(ys, normal, allowed).tolist()
    nan = np.nan
    ys = np.array([[0.0, 0.5, nan, 1.0, nan], [0.0, 0.5, 0.2, nan, 0.0]], np.float32)
    got = combine_labels(ys)
    np.testing.assert_allclose(got[:2], [0.0, 0.75])
    assert np.isnan(got[2]) and got[3] == 1.0 and np.isnan(got[4])          # unknown unless certainly present
    normal = np.array([[0.9, 0.2, 0.0], [0.0, 0.5, 0.0]], np.float32)      # column 0: the normal class
    np.testing.assert_allclose(combine_labels(normal, 0), [0.9 * (1 - 0.6), 0.6, 0.0], rtol=1e-6)
    assert combine_labels(np.array([[0.0, 0.3], [0.0, nan]], np.float32), 0)[0] == 0.0   # no source can be normal
    assert np.isnan(combine_labels(np.array([[1.0, 0.0], [0.0, nan]], np.float32), 0)[0])
