"""Chest X-ray foundation weights: each converter, fed a random model saved the way its publisher
saves it, gives a timm model with the same features on the same input."""
import json

import pytest
import torch
from conftest import DEMO

from cxrlt.config import load_config
from cxrlt.errors import CxrltError
from cxrlt.models.checkpoint import load_model, save
from cxrlt.models.factory import arch_record, create_model, input_stats


def mcfg(**kw):
    return load_config(DEMO, [f"model.{k}={v}" for k, v in kw.items()]).model


@pytest.mark.parametrize("pickled", [False, True])
def test_torchxrayvision_densenet_gives_the_same_features(tmp_path, pickled):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.densenet121(num_classes=18)
    tv.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)     # xrv's one-channel stem
    for m in tv.modules():                                              # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    tv.eval()
    path = tmp_path / "xrv.pt"
    if pickled:
        torch.save(tv, path)                                            # what TorchXRayVision ships
    else:
        sd = tv.state_dict()
        k = "features.denseblock1.denselayer1.norm1.weight"
        sd["features.denseblock1.denselayer1.norm.1.weight"] = sd.pop(k)   # the legacy key spelling
        torch.save(sd, path)
    m = mcfg(name="densenet121", pretrained_path=str(path), pretrained_format="torchxrayvision", drop_path_rate=0)
    net = create_model(m, 26).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.forward_features(x), torch.relu(tv.features(x)), atol=1e-5)
    assert input_stats(net) == (0.5, 1 / 2048)                          # [-1024, 1024], as xrv expects
    assert net.init_source.endswith("(torchxrayvision)")


def _tiny_dinov2(folder):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                       image_size=28, patch_size=14, layerscale_value=0.5)
    hf = Dinov2Model(cfg).eval()
    hf.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5307] * 3, "image_std": [0.2583] * 3}))
    return hf


def test_hf_dinov2_folder_gives_the_same_features_and_rebuilds_from_the_checkpoint(tmp_path):
    hf = _tiny_dinov2(tmp_path / "rad-dino")
    m = mcfg(name="vit_base_patch14_dinov2", pretrained_path=str(tmp_path / "rad-dino"), pretrained_format="hf-dinov2",
             drop_path_rate=0)
    net = create_model(m, 26, image_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = hf(pixel_values=x.expand(-1, 3, -1, -1)).last_hidden_state      # the gray film as RGB
        assert torch.allclose(net.forward_features(x), want, atol=1e-5)
    mean, std = input_stats(net)
    assert mean == pytest.approx(0.5307) and std == pytest.approx(0.2583)
    path = save(dict(model=net.state_dict(), arch=arch_record(m, [str(i) for i in range(26)], 28, "stretch", mean, std,
                                                              net)), tmp_path / "best.pt")
    again, arch = load_model(path)                    # no folder needed: the arch record has the shape
    assert arch["model"]["timm_kwargs"]["embed_dim"] == 32
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


def test_foundation_files_that_do_not_fit_are_one_line(tmp_path):
    _tiny_dinov2(tmp_path / "d")
    with pytest.raises(CxrltError, match="gives a DenseNet; model.name is 'vit_base_patch14_dinov2'"):
        create_model(mcfg(name="vit_base_patch14_dinov2", pretrained_path=str(tmp_path / "d" / "config.json"),
                          pretrained_format="torchxrayvision"), 3)
    with pytest.raises(CxrltError, match="no config.json"):
        create_model(mcfg(name="vit_base_patch14_dinov2", pretrained_path=str(tmp_path),
                          pretrained_format="hf-dinov2"), 3)
    with pytest.raises(CxrltError, match="pretrained_format must be one of timm, torchxrayvision, hf-dinov2"):
        create_model(mcfg(pretrained_path=str(tmp_path / "d"), pretrained_format="onnx"), 3)
