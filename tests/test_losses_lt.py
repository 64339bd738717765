"""The long-tail losses db (Wu 2020) and ral (Park 2023): against their formulas written out in NumPy,
built from the recipe's loss section, and able to train a tiny model."""
import numpy as np
import pytest
import torch

from cxrlt.config import Config
from cxrlt.schema import defaults as recipe_defaults
from cxrlt.errors import CxrltError
from cxrlt.losses import build_loss
from cxrlt.losses.db import DistributionBalancedLoss
from cxrlt.losses.ral import RobustAsymmetricLoss

LOGITS = np.array([[2.0, -1.0, 0.5], [-3.0, 0.5, 4.0], [1.0, -2.0, -0.5]])
Y = np.array([[1.0, 0.0, 1.0],   # several positives
              [0.0, 0.0, 0.0],   # none
              [0.0, 1.0, 0.0]])
POSITIVES, N = np.array([10.0, 2.0, 5.0]), 20


def sig(x):
    return 1 / (1 + np.exp(-x))


def db_by_hand(z, y, alpha, beta, mu, lam, kappa, gamma):
    C = z.shape[1]
    p_c = 1 / (C * POSITIVES)                                       # P^C_i
    r_hat = np.empty_like(z)
    for b in range(len(z)):
        p_i = (y[b] / POSITIVES).sum() / C                          # P^I(x)
        r_hat[b] = alpha + 1 if p_i == 0 else alpha + sig(beta * (p_c / p_i - mu))
    b = -np.log(N / POSITIVES - 1)                                  # sigmoid(b) = class prior
    nu = -kappa * b / lam                                           # official: logits + kappa b / lambda
    s = z - nu
    pos, neg = np.log(1 + np.exp(-s)), np.log(1 + np.exp(lam * s)) / lam
    if gamma:
        pos, neg = 2 * (1 - sig(s)) ** gamma * pos, 2 * (1 - sig(-lam * s)) ** gamma * neg
    return r_hat * (y * pos + (1 - y) * neg)


def ral_by_hand(z, y, gp, gn, clip, lam, e1, e2):
    p = sig(z)
    pm = np.maximum(p - clip, 0)
    pos = -(1 - p) ** gp * (np.log(p) + e1 * (1 - p) + e2 / 2 * (1 - p) ** 2)
    neg = -pm ** gn * (lam - p) * p ** 2 * (lam - 1 + pm) * np.log(1 - pm)
    return y * pos + (1 - y) * neg


def loss_cfg(name, **over):
    return Config({**recipe_defaults()["loss"], "name": name, **over})


@pytest.mark.parametrize("params", [(0.1, 10.0, 0.2, 2.0, 0.05, 2.0), (0.1, 10.0, 0.3, 5.0, 0.05, 0.0),
                                    (0.5, 0.0, 0.0, 1.0, 0.0, 0.0)])
def test_db_equals_its_formula(params):
    loss = DistributionBalancedLoss(POSITIVES, N, *params)
    got = loss.elementwise(torch.tensor(LOGITS), torch.tensor(Y)).double().numpy()
    assert got == pytest.approx(db_by_hand(LOGITS, Y, *params), rel=1e-5)


def test_db_row_without_positives_gets_the_top_weight():
    r_hat = DistributionBalancedLoss(POSITIVES, N, alpha=0.1).rebalance(torch.tensor(Y)).numpy()
    assert r_hat[1] == pytest.approx([1.1] * 3) and (r_hat[0] < 1.1).all()


@pytest.mark.parametrize("params", [(0.0, 4.0, 0.05, 1.5, 1.0, -2.5), (1.0, 2.0, 0.0, 2.0, 0.5, 0.0)])
def test_ral_equals_its_formula(params):
    got = RobustAsymmetricLoss(*params).elementwise(torch.tensor(LOGITS), torch.tensor(Y)).double().numpy()
    assert got == pytest.approx(ral_by_hand(LOGITS, Y, *params), rel=1e-5, abs=1e-9)


def test_registry_builds_db_and_ral_from_the_defaults():
    db = build_loss(loss_cfg("db"), POSITIVES, N, epochs=3)
    assert isinstance(db, DistributionBalancedLoss) and db.weight.numel() == 0
    assert (db.lam, db.gamma, db.mu) == (2.0, 2.0, 0.2)
    ral = build_loss(loss_cfg("ral", class_weights="inverse"), POSITIVES, N, epochs=3)
    assert isinstance(ral, RobustAsymmetricLoss) and (ral.gamma_neg, ral.lam) == (4.0, 1.5)
    assert ral.weight.numel() == 3 and ral.weight[1] > ral.weight[2] > ral.weight[0]
    z, y = torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    expect = (ral_by_hand(LOGITS, Y, 0, 4, 0.05, 1.5, 1.0, -2.5) * ral.weight.numpy()).mean()
    assert ral(z, y).item() == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("name, bad", [("db", {"alpha": 0.5}), ("db", {"class_weights": "inverse"}),
                                       ("db", {"ral_lambda": 2.0}), ("ral", {"gamma_neg": 2}),
                                       ("ral", {"db_kappa": 0.1}), ("db", {"db_lambda": 0.0}),
                                       ("ral", {"ral_lambda": 0.5})])
def test_registry_refuses_what_the_loss_does_not_read(name, bad):
    with pytest.raises(CxrltError):
        build_loss(loss_cfg(name, **bad), POSITIVES, N, epochs=3)


@pytest.mark.parametrize("name", ["db", "ral"])
def test_loss_trains_a_linear_model(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    y = (x[:, :4] + 0.3 * torch.randn(16, 4, generator=g) > 0.6).float()
    y[0] = 0                                                      # a row with no positive
    loss_fn = build_loss(loss_cfg(name), y.sum(0).numpy(), len(y), epochs=1)
    model = torch.nn.Linear(8, 4)
    torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = loss_fn(model(x), y).item()
    for _ in range(50):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and loss.item() < 0.5 * first
    z = model(x).detach()                                         # ranking (RAL shifts the threshold up)
    auc = [(z[y[:, c] > 0, c][:, None] > z[y[:, c] == 0, c]).float().mean() for c in range(4)]
    assert min(auc) > 0.9
