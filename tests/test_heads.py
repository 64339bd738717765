"""Heads (ML-Decoder, CSRA), multi-view fusion, and models rebuilt from a checkpoint file alone."""
import pytest
import torch

from cxrlt.config import Config, load_config
from cxrlt.errors import CxrltError
from cxrlt.experiment import check_fingerprint, head_spec
from cxrlt.models.checkpoint import load_model, save
from cxrlt.models.factory import arch_record, create_model
from cxrlt.models.fusion import StudyFusion, StudyFusionNet
from cxrlt.models.heads import CSRA, MLDecoder
from conftest import DEMO


def mcfg(**kw):
    return load_config(DEMO, [f"model.{k}={v}" for k, v in kw.items()]).model


@pytest.mark.parametrize("head", ["linear", "ml_decoder", "csra"])
def test_head_shapes_training_steps_and_reload_from_file_alone(head, tmp_path):
    torch.manual_seed(0)
    extra = {"ml_decoder": dict(decoder_dim=32, decoder_heads=4), "csra": {"csra_temperatures": "[1,99]"}}.get(head, {})
    m = mcfg(head=head, **extra)
    net = create_model(m, 5)
    x, y = torch.randn(4, 1, 32, 32), (torch.rand(4, 5) > 0.5).float()
    assert net(x).shape == (4, 5)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    net.train()
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]          # the head learns a fixed batch
    path = save(dict(model=net.state_dict(), arch=arch_record(m, list("abcde"), 32, "stretch", 0.5, 0.25)),
                tmp_path / "best.pt")
    again, arch = load_model(path)                 # no recipe: the file alone
    net.eval()
    assert arch["model"]["head"] == head and arch["labels"] == list("abcde")
    assert torch.equal(net(x), again(x))


def test_csra_is_mean_plus_lambda_attention():
    torch.manual_seed(0)
    head = CSRA(8, 3, temperatures=(1, 99), lam=0.3)
    tok = torch.randn(2, 6, 8)
    out = head(tok)
    want = 0
    for t, lin in zip((1, 99), head.heads):
        s = (tok @ lin.weight.T / lin.weight.norm(dim=1)).transpose(1, 2)
        att = s.amax(2) if t == 99 else (torch.softmax(s * t, 2) * s).sum(2)
        want = want + s.mean(2) + 0.3 * att
    assert torch.allclose(out, want, atol=1e-6)
    one = head(tok[:, :1])                          # one location: base = att = the score
    s1 = sum(tok[:, 0] @ lin.weight.T / lin.weight.norm(dim=1) for lin in head.heads)
    assert torch.allclose(one, 1.3 * s1, atol=1e-6)


def test_ml_decoder_ignores_masked_tokens():
    torch.manual_seed(0)
    dec = MLDecoder(8, 4, dim=16, heads=4).eval()
    tok = torch.randn(2, 5, 8)
    mask = torch.tensor([[False] * 3 + [True] * 2] * 2)
    noisy = tok.clone()
    noisy[:, 3:] = 100 * torch.randn(2, 2, 8)
    assert torch.allclose(dec(tok, mask), dec(noisy, mask), atol=1e-5)
    assert torch.allclose(dec(tok[:, :3]), dec(tok, mask), atol=1e-5)


def test_head_keys_are_checked_and_join_the_fingerprint():
    with pytest.raises(CxrltError, match=r"model.decoder_dim=64 is read by model.head=ml_decoder only"):
        create_model(mcfg(head="csra", decoder_dim=64), 3)
    with pytest.raises(CxrltError, match="model.head must be one of"):
        create_model(mcfg(head="mlp"), 3)
    assert head_spec(mcfg()) == "linear"
    assert head_spec(mcfg(head="csra")).startswith("csra(csra_lambda=0.1")
    saved = dict(model="test_resnet", head="linear")
    with pytest.raises(CxrltError, match=r"head: 'linear' -> 'csra\(") as e:
        check_fingerprint(saved, dict(model="test_resnet", head=head_spec(mcfg(head="csra"))), "best.pt", "retrain")
    assert "\n" not in str(e.value)
    check_fingerprint(dict(model="test_resnet"), dict(model="test_resnet", head="linear"), "best.pt", "x")  # older file


def _fusion(grid=2, n_kinds=4):
    torch.manual_seed(1)
    return StudyFusion(in_dim=12, num_classes=5, grid=grid, n_kinds=n_kinds, dim=16, layers=2, heads=4).eval()


def test_fusion_is_invariant_to_view_order_and_padding():
    f = _fusion()
    tok = torch.randn(3, 2, 4, 12)                                  # 3 studies, 2 views, 2x2 tokens
    kinds = torch.tensor([[1, 3], [2, 2], [1, 0]])
    present = torch.ones(3, 2, dtype=torch.bool)
    out = f(tok, kinds, present)
    swapped = f(tok.flip(1), kinds.flip(1), present)
    assert torch.allclose(out, swapped, atol=1e-5)
    padded = torch.cat([tok, 50 * torch.randn(3, 2, 4, 12)], 1)      # garbage in the 2 padding slots
    pk = torch.cat([kinds, torch.tensor([[3, 1]] * 3)], 1)
    pp = torch.cat([present, torch.zeros(3, 2, dtype=torch.bool)], 1)
    assert torch.allclose(out, f(padded, pk, pp), atol=1e-5)
    # a study with one view among studies with two: its output is its own, whatever the others have
    mixed = present.clone()
    mixed[0, 1] = False
    alone = f(tok[:1, :1], kinds[:1, :1], present[:1, :1])
    assert torch.allclose(f(tok, kinds, mixed)[0], alone[0], atol=1e-5)
    assert not torch.allclose(out[0], alone[0], atol=1e-3)          # the second view did count


def test_fusion_model_reloads_from_file_alone(tmp_path):
    m = mcfg()
    backbone = create_model(m, 5).eval()
    net = StudyFusionNet(backbone, StudyFusion(backbone.num_features, 5, 1, 3, 16, 1, 4), grid=1).eval()
    arch = dict(kind="study_fusion", backbone=arch_record(m, list("abcde"), 32, "stretch", 0.5, 0.25),
                labels=list("abcde"), num_classes=5, image_size=32, resize="stretch", mean=0.5, std=0.25,
                fusion=dict(in_dim=backbone.num_features, grid=1, dim=16, layers=1, heads=4),
                view_kinds=["AP", "PA"], max_views=3)
    path = save(dict(model=net.state_dict(), arch=arch), tmp_path / "best.pt")
    again, _ = load_model(path)
    x = torch.randn(2, 3, 1, 32, 32)
    kinds, present = torch.tensor([[1, 2, 0], [2, 0, 0]]), torch.tensor([[True, True, False], [True, False, False]])
    assert torch.equal(net(x, kinds, present), again(x, kinds, present))
    assert not any(p.requires_grad for p in again.backbone.parameters())   # frozen


def test_old_checkpoint_without_description_is_one_line(tmp_path):
    path = save(dict(model={}), tmp_path / "old.pt")
    with pytest.raises(CxrltError, match=r"old.pt: records no model description"):
        load_model(path)


def test_config_mcfg_is_a_config():
    assert isinstance(mcfg(), Config)
