import numpy as np
import pytest
import torch

from cxrlt.config import Config
from cxrlt.errors import CxrltError
from cxrlt.losses.binary import FocalLoss, build_loss, class_weights


def focal_by_hand(logits, y, alpha, gamma, ls):
    t = y * (1 - ls) + 0.5 * ls
    p = 1 / (1 + np.exp(-logits))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return a_t * (1 - p_t) ** gamma * ce


def test_focal_equals_its_formula():
    logits = np.array([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]])
    y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    for alpha, gamma, ls in [(0.25, 2.0, 0.0), (0.25, 2.0, 0.01), (0.5, 0.0, 0.1)]:
        got = FocalLoss(alpha, gamma, ls)(torch.tensor(logits), torch.tensor(y)).item()
        assert got == pytest.approx(focal_by_hand(logits, y, alpha, gamma, ls).mean(), rel=1e-6)


def test_focal_with_class_weights():
    logits, y = np.array([[1.0, -2.0]]), np.array([[0.0, 1.0]])
    w = torch.tensor([0.5, 1.5])
    got = FocalLoss(0.25, 2.0, 0.0, w)(torch.tensor(logits), torch.tensor(y)).item()
    assert got == pytest.approx((focal_by_hand(logits, y, 0.25, 2.0, 0.0) * w.numpy()).mean(), rel=1e-6)


def test_class_weights_favour_rare_classes_with_mean_one():
    w = class_weights(np.array([1000, 100, 10]), 10000, "inverse_sqrt").numpy()
    assert w.mean() == pytest.approx(1.0) and w[2] > w[1] > w[0]
    assert w[2] / w[0] == pytest.approx(10.0)
    assert class_weights(np.array([1, 2]), 10, None) is None


@pytest.mark.parametrize("name", ["focal", "bce", "weighted_bce", "asl"])
def test_registry_losses_reward_right_answers(name):
    cfg = Config(name=name, alpha=0.25, gamma=2.0, label_smoothing=0.0, class_weights=None, max_pos_weight=50,
                 gamma_neg=4, gamma_pos=1, clip=0.05)
    loss = build_loss(cfg, np.array([5, 50]), 100)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good, bad = loss(4 * (2 * y - 1), y).item(), loss(-4 * (2 * y - 1), y).item()
    assert 0 <= good < bad


def test_weighted_bce_pos_weight():
    cfg = Config(name="weighted_bce", label_smoothing=0.0, class_weights=None, max_pos_weight=50)
    loss = build_loss(cfg, np.array([10, 1]), 101)
    assert loss.pos_weight.tolist() == pytest.approx([9.1, 50.0])
    with pytest.raises(CxrltError, match="loss.name"):
        build_loss(Config(name="nope", class_weights=None), np.array([1]), 2)
