"""TTA views (predict.tta lists), the gmean combination and normal gating (predict.normal_gating)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cfg_at

from cxrlt.data.labels import LABELS_2023
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predict import predict_experiment
from cxrlt.evaluate.predictions import normal_gating
from cxrlt.models.inference import apply_view, combine_tta, parse_views


def test_gating_matches_a_hand_computation_and_keeps_normal_and_allowed_columns():
    p = np.array([[0.8, 0.5, 0.4, 0.9],      # columns: normal, finding, finding, allowed (Support Devices)
                  [0.1, 0.6, 0.2, 0.3]])
    g = normal_gating(p, 0, [3], alpha=2.0)
    hand = np.array([[0.8, 0.5 * 0.2 ** 2, 0.4 * 0.2 ** 2, 0.9],
                     [0.1, 0.6 * 0.9 ** 2, 0.2 * 0.9 ** 2, 0.3]])
    assert np.allclose(g, hand, rtol=0, atol=1e-15)
    assert np.array_equal(normal_gating(p, 0, [], alpha=0.0), p)      # alpha 0: no effect


def test_gmean_prob_and_logit_means_match_numpy():
    rng = np.random.default_rng(0)
    views = rng.normal(size=(3, 5, 4)) * 3                             # 3 views' logits
    probs = 1 / (1 + np.exp(-views))
    t = torch.from_numpy(views)
    extra = {"hflip": t[1], "scale_0.9": t[2]}
    assert np.allclose(combine_tta(t[0], extra, "gmean").numpy(), np.exp(np.log(probs).mean(0)), atol=1e-12)
    assert np.allclose(combine_tta(t[0], list(t[1:]), "prob").numpy(), probs.mean(0), atol=1e-12)
    assert np.allclose(combine_tta(t[0], t[1], "logit").numpy(), 1 / (1 + np.exp(-views[:2].mean(0))), atol=1e-12)


def test_identity_views_and_hflip():
    x = torch.randn(2, 1, 12, 16)
    for v in ("none", "scale_1.0", "rotate_0"):
        assert torch.allclose(apply_view(x, v, fill=-2.0), x, atol=1e-5)
    assert torch.equal(apply_view(x, "hflip"), torch.flip(x, dims=[3]))


def test_rotation_direction_matches_rot90_and_outside_is_the_fill():
    """Positive degrees turn the image counter-clockwise as displayed: torch.rot90(x, 1, dims=(-2, -1))."""
    x = torch.randn(2, 1, 10, 10)
    assert torch.allclose(apply_view(x, "rotate_90"), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    assert torch.allclose(apply_view(x, "rotate_-90"), torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5)
    small = apply_view(torch.full((1, 1, 8, 8), 5.0), "scale_0.5", fill=-1.5)[0, 0]
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    assert torch.allclose(small, torch.where(inside, 5.0, -1.5), atol=1e-5)


def test_view_names_are_checked():
    assert parse_views("none") == [] and parse_views("hflip") == ["hflip"]
    assert parse_views(["none", "hflip", "scale_0.9", "rotate_-5", "hflip"]) == ["hflip", "scale_0.9", "rotate_-5"]
    for bad in ("vflip", ["hflip", "zoom_2"], ["scale_0"], ["rotate_x"], 3):
        with pytest.raises(CxrltError, match=r"^predict\.tta") as e:
            parse_views(bad)
        assert "\n" not in str(e.value)


def test_bad_settings_fail_before_any_work(base, tmp_path):
    empty = tmp_path / "no-checkpoints"                                 # errors come before the checkpoint check
    with pytest.raises(CxrltError, match=r"^predict\.tta: unknown view 'shear_5'"):
        predict_experiment(cfg_at(base, empty, "predict.tta=[hflip,shear_5]"), progress=False)
    with pytest.raises(CxrltError, match=r"^predict\.tta_mean .*not 'median'"):
        predict_experiment(cfg_at(base, empty, "predict.tta_mean=median"), progress=False)
    with pytest.raises(CxrltError, match=r"^predict\.normal_gating='abc': must be a number or null$"):
        predict_experiment(cfg_at(base, empty, "predict.normal_gating=abc"), progress=False)


def test_stage04_reports_each_view_and_writes_the_gated_variant(base, trained, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(trained, out)
    cfg = cfg_at(base, out, "predict.tta=[hflip,scale_0.9]", "predict.normal_gating=1.0", "predict.tta_mean=gmean")
    predict_experiment(cfg, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["tta_views"]) == {"none", "hflip", "scale_0.9"}
    assert m["tta_views"]["none"] == pytest.approx(m["variants"]["no_tta/image"])
    assert m["final"] == "tta/study/gated"
    assert set(m["variants"]) == {"no_tta/image", "no_tta/study", "tta/image", "tta/study", "tta/study/gated"}
    assert m["settings"]["normal_gating"] == 1.0 and m["settings"]["tta"] == ["hflip", "scale_0.9"]
    assert m["mAP"] == pytest.approx(m["variants"]["tta/study/gated"], abs=1e-6)
    assert predict_experiment(cfg, progress=False)["skipped"]
    gated = {f: pd.read_csv(out / f, dtype={"dicom_id": str})[LABELS_2023].to_numpy() for f in ("oof.csv", "test.csv")}
    # the same run without gating (not skipped: gating is part of the settings), then gated here
    plain = cfg_at(base, out, "predict.tta=[hflip,scale_0.9]", "predict.tta_mean=gmean")
    assert not predict_experiment(plain, progress=False)["skipped"]
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["final"] == "tta/study" and m2["variants"]["tta/study"] == pytest.approx(m["variants"]["tta/study"])
    normal, keep = LABELS_2023.index("No Finding"), [LABELS_2023.index("Support Devices")]
    for f, g in gated.items():
        ungated = pd.read_csv(out / f, dtype={"dicom_id": str})[LABELS_2023].to_numpy()
        assert np.allclose(normal_gating(ungated, normal, keep, 1.0), g, atol=1e-7), f
        assert not np.allclose(ungated, g, atol=1e-3)


def test_gating_needs_a_normal_label():
    from types import SimpleNamespace

    from cxrlt.config import Config
    from cxrlt.evaluate.predict import _check_settings

    pc = Config(tta="hflip", tta_mean="prob", normal_gating=0.5)
    spec = SimpleNamespace(name="custom", labels=("A", "B"), normal_label=None, normal_allows=())
    with pytest.raises(CxrltError, match=r"^predict\.normal_gating=0\.5: dataset preset 'custom' has no normal label"):
        _check_settings(pc, spec)
    views, gate = _check_settings(pc, SimpleNamespace(**dict(spec.__dict__, normal_label="B")))
    assert views == ["hflip"] and gate == (1, [], 0.5)
