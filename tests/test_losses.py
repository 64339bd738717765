import numpy as np
import pytest
import torch

from cxrlt.config import Config
from cxrlt.schema import defaults as recipe_defaults
from cxrlt.errors import CxrltError
from cxrlt.losses import FocalLoss, build_loss, class_weights
from cxrlt.losses.ldam import ldam_margins

DEFAULT_LOSS = recipe_defaults()["loss"]


def lcfg(**kw):
    return Config({**DEFAULT_LOSS, "label_smoothing": 0.0, **kw})


def sig(z):
    return 1 / (1 + np.exp(-z))


def bce(z, t):
    p = sig(z)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def focal_by_hand(logits, y, alpha, gamma, ls):
    t = y * (1 - ls) + 0.5 * ls
    p = sig(logits)
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return a_t * (1 - p_t) ** gamma * bce(logits, t)


LOGITS = np.array([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]])
Y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def test_focal_equals_its_formula():
    for alpha, gamma, ls in [(0.25, 2.0, 0.0), (0.25, 2.0, 0.01), (0.5, 0.0, 0.1)]:
        got = FocalLoss(alpha, gamma, ls)(torch.tensor(LOGITS), torch.tensor(Y)).item()
        assert got == pytest.approx(focal_by_hand(LOGITS, Y, alpha, gamma, ls).mean(), rel=1e-6)


def test_focal_with_class_weights():
    logits, y = np.array([[1.0, -2.0]]), np.array([[0.0, 1.0]])
    w = torch.tensor([0.5, 1.5])
    got = FocalLoss(0.25, 2.0, 0.0, w)(torch.tensor(logits), torch.tensor(y)).item()
    assert got == pytest.approx((focal_by_hand(logits, y, 0.25, 2.0, 0.0) * w.numpy()).mean(), rel=1e-6)


def test_class_weight_schemes_by_hand():
    pos, n = np.array([1000, 100, 10]), 10000
    w = class_weights(pos, n, "inverse_sqrt").numpy()
    assert w.mean() == pytest.approx(1.0) and w[2] / w[0] == pytest.approx(10.0)
    assert class_weights(pos, n, None) is None
    beta = 0.999
    cb = np.array([(1 - beta) / (1 - beta ** c) for c in (1000, 100, 10)])
    np.testing.assert_allclose(class_weights(pos, n, "cb", beta).numpy(), cb / cb.mean(), rtol=1e-6)
    rw = np.array([10000 / (3 * c) for c in (1000, 100, 10)])       # sklearn 'balanced': n / (C n_c)
    np.testing.assert_allclose(class_weights(pos, n, "rw").numpy(), rw / rw.mean(), rtol=1e-6)
    with pytest.raises(CxrltError, match="class_weights"):
        class_weights(pos, n, "nope")


def test_drw_switches_weights_on_at_its_epoch():
    loss = build_loss(lcfg(name="bce", class_weights="inverse", drw_epoch=2), np.array([90, 10]), 100, epochs=4)
    y, z = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.3, -0.2]])
    plain = bce(z.numpy(), y.numpy())
    w = np.array([1 / 0.9, 1 / 0.1])
    w = w / w.mean()
    for epoch, weighted in [(0, False), (1, False), (2, True), (3, True)]:
        loss.set_epoch(epoch)
        want = (plain * w).mean() if weighted else plain.mean()
        assert loss(z, y).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(CxrltError, match="class_weights is null"):
        build_loss(lcfg(name="bce", drw_epoch=2), np.array([9, 1]), 10, epochs=4)
    with pytest.raises(CxrltError, match="drw_epoch=5"):
        build_loss(lcfg(name="bce", class_weights="cb", drw_epoch=5), np.array([9, 1]), 10, epochs=4)


def test_ldam_by_hand():
    pos = np.array([1600, 100, 1])
    m = np.array([1600 ** -0.25, 100 ** -0.25, 1.0])
    m = 0.5 * m / m.max()
    np.testing.assert_allclose(ldam_margins(pos, 0.5).numpy(), m, rtol=1e-6)
    loss = build_loss(lcfg(name="ldam", ldam_max_m=0.5, ldam_s=30.0), pos, 2000)
    want = bce(30.0 * (LOGITS / 10 - m * Y), Y).mean()            # positives lowered by m_c, then scaled
    assert loss(torch.tensor(LOGITS / 10), torch.tensor(Y)).item() == pytest.approx(want, rel=1e-6)


def test_asl_by_hand_and_independent_of_batch_size():
    loss = build_loss(lcfg(name="asl", gamma_neg=4, gamma_pos=1, clip=0.05), np.array([5, 50, 9]), 100)
    p = sig(LOGITS)
    pm = np.minimum(1 - p + 0.05, 1)                                 # shifted negative probability
    want = -(Y * (1 - p) ** 1 * np.log(p) + (1 - Y) * (1 - pm) ** 4 * np.log(pm))
    assert loss(torch.tensor(LOGITS), torch.tensor(Y)).item() == pytest.approx(want.mean(), rel=1e-5)
    z, y = torch.randn(8, 3), (torch.rand(8, 3) < 0.3).float()
    one = loss(z, y).item()
    assert loss(z.repeat(4, 1), y.repeat(4, 1)).item() == pytest.approx(one, rel=1e-6)   # 4x the batch, same loss
    assert loss(z.repeat(1, 2), y.repeat(1, 2)).item() == pytest.approx(one, rel=1e-6)   # 2x the classes, too


@pytest.mark.parametrize("name", ["focal", "bce", "weighted_bce", "asl", "ldam"])
def test_registry_losses_reward_right_answers(name):
    loss = build_loss(lcfg(name=name), np.array([5, 50]), 100)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good, bad = loss(4 * (2 * y - 1), y).item(), loss(-4 * (2 * y - 1), y).item()
    assert 0 <= good < bad


@pytest.mark.parametrize("name", ["focal", "bce", "asl", "ldam", "weighted_bce"])
def test_each_loss_trains(name):
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    y = (x[:, :4] + 0.3 * torch.randn(32, 4) > 0.5).float()
    net = torch.nn.Linear(8, 4)
    loss = build_loss(lcfg(name=name), y.sum(0).numpy(), 32)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    first = loss(net(x), y).item()
    for _ in range(60):
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    assert loss(net(x), y).item() < 0.6 * first


def test_weighted_bce_pos_weight_and_unknown_loss():
    loss = build_loss(lcfg(name="weighted_bce", max_pos_weight=50), np.array([10, 1]), 101)
    assert loss.pos_weight.tolist() == pytest.approx([9.1, 50.0])
    with pytest.raises(CxrltError, match="loss.name"):
        build_loss(lcfg(name="nope"), np.array([1]), 2)


def test_keys_a_loss_does_not_read_are_refused():
    with pytest.raises(CxrltError, match=r"loss.gamma_neg=2 has no effect with loss.name=bce"):
        build_loss(lcfg(name="bce", gamma_neg=2), np.array([5, 5]), 10)
    with pytest.raises(CxrltError, match=r"loss.alpha=0.5 has no effect with loss.name=ldam"):
        build_loss(lcfg(name="ldam", alpha=0.5), np.array([5, 5]), 10)
    build_loss(lcfg(name="bce", gamma_neg=DEFAULT_LOSS["gamma_neg"]), np.array([5, 5]), 10)   # default: fine
