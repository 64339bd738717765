import pytest
import timm
import torch

from cxrlt.config import Config
from cxrlt.errors import CxrltError
from cxrlt.models.factory import create_model, input_stats


def mcfg(**kw):
    base = dict(name="test_resnet", pretrained=False, pretrained_path=None, require_pretrained=False, in_chans=1,
                drop_rate=0.0, drop_path_rate=0.0)
    return Config(dict(base, **kw))


def test_local_weights_fold_rgb_stem_into_gray(tmp_path):
    src = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    gray = create_model(mcfg(pretrained_path=str(path)), 26).eval()
    stem = src.pretrained_cfg["first_conv"] + ".weight"
    assert torch.allclose(gray.state_dict()[stem], src.state_dict()[stem].sum(1, keepdim=True))
    assert gray.get_classifier().out_features == 26
    # a gray image through the folded stem == the same image replicated to RGB through the original
    x = torch.rand(2, 1, 64, 64)
    src.eval()
    assert torch.allclose(gray.forward_features(x), src.forward_features(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_missing_local_weights_is_a_clear_error(tmp_path):
    with pytest.raises(CxrltError, match="pretrained_path .*file not found"):
        create_model(mcfg(pretrained_path=str(tmp_path / "none.pth")), 26)


def test_failed_download_warns_once_and_trains_from_scratch(monkeypatch, capsys):
    def offline(*a, **k):
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr("timm.models._builder.load_pretrained", offline)
    m = create_model(mcfg(pretrained=True), 26)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no pretrained weights for test_resnet" in err[0] and "pretrained_path" in err[0]
    assert m.get_classifier().out_features == 26
    with pytest.raises(CxrltError, match="could not get weights for test_resnet"):
        create_model(mcfg(pretrained=True, require_pretrained=True), 26)


def test_unknown_model_name():
    with pytest.raises(CxrltError, match="model.name 'no_such_net'"):
        create_model(mcfg(name="no_such_net"), 26)


def test_input_stats_average_rgb():
    m = create_model(mcfg(), 3)
    mean, std = input_stats(m)
    assert mean == pytest.approx(sum(m.pretrained_cfg["mean"]) / 3)


@pytest.mark.parametrize("recipe,arch", [("effv2s_768", "tf_efficientnetv2_s"), ("convnext_768", "convnext_small")])
def test_real_recipes_build_their_backbones(recipe, arch):
    from conftest import ROOT

    from cxrlt.config import load_config

    cfg = load_config(ROOT / "experiments" / f"{recipe}.yaml", ["model.pretrained=false"])
    assert cfg.cache.size == 768 and cfg.loss.name == "focal" and cfg.model.name == arch
    m = create_model(cfg.model, 26).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 1, 64, 64)).shape == (1, 26)
