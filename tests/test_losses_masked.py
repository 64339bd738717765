"""Partial labels in every multi-label loss of the registry: a NaN target entry (the image's set does
not label the finding) contributes exactly 0 to the loss and its gradient, the loss is the weighted
mean over labelled entries only, and with no NaN the value and gradients are bit for bit those of
the unmasked formula. Class statistics (weights, DB's prior, weighted_bce's ratio) count labelled
entries only. Soft targets go through every loss."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrlt.config import Config
from cxrlt.errors import CxrltError
from cxrlt.losses import LOSSES, build_loss, class_weights, label_counts
from cxrlt.schema import defaults as recipe_defaults

DEFAULT_LOSS = recipe_defaults()["loss"]
C = 5
POS, N = np.array([40, 9, 3, 1, 20]), 60
NAMES = sorted(LOSSES)


def lcfg(name, **kw):
    return Config({**DEFAULT_LOSS, "name": name, **kw})


def variants(name):
    """The loss with its defaults, and with class weights where it takes them."""
    out = [build_loss(lcfg(name), POS, N, epochs=3)]
    if LOSSES[name].weights:
        out.append(build_loss(lcfg(name, class_weights="inverse"), POS, N, epochs=3))
    return out


def batch(seed, soft=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, C, generator=g, dtype=torch.float32) * 2
    target = torch.rand(6, C, generator=g) if soft else (torch.rand(6, C, generator=g) < 0.4).float()
    mask = torch.rand(6, C, generator=g) < 0.35
    mask[0] = True                 # a row with nothing labelled
    mask[1] = False                # a fully labelled row
    return logits, target, mask


def old_formula(loss, logits, target):
    """The reduction before partial labels existed: mean over batch and classes of w_c l_ic."""
    el = loss.elementwise(logits, target)
    if loss.weighted and loss.weight.numel():
        el = el * loss.weight
    return el.mean()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("soft", [False, True])
def test_no_nan_gives_the_unmasked_value_and_gradient_bit_for_bit(name, soft):
    for loss in variants(name):
        logits, target, _ = batch(1, soft)
        a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        new, old = loss(a, target), old_formula(loss, b, target)
        assert torch.equal(new, old), (name, new.item(), old.item())
        new.backward()
        old.backward()
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("soft", [False, True])
def test_masked_entries_add_nothing_to_loss_or_gradient(name, soft):
    for loss in variants(name):
        logits, target, mask = batch(2, soft)
        x = logits.clone().requires_grad_()
        got = loss(x, target.masked_fill(mask, float("nan")))
        got.backward()
        assert torch.isfinite(got)
        assert (x.grad[mask] == 0).all(), x.grad[mask]            # exactly zero, not small
        assert (x.grad[~mask] != 0).all()                          # the labelled ones still learn
        # independently: the element losses of the labelled entries only. The per-element losses do
        # not look at other entries (DB aside: its row weight reads the row's positives, an
        # unlabelled one counting as not positive), so whatever the masked entries hold must not matter.
        for fill in (0.0, 1.0, 0.5):
            filled = target.masked_fill(mask, 0.0 if name == "db" else fill)
            el = loss.elementwise(logits, filled)
            if loss.weighted and loss.weight.numel():
                el = el * loss.weight
            want = el[~mask].sum() / (~mask).sum()
            assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)


def test_bce_and_focal_by_torch_on_the_labelled_entries():
    logits, target, mask = batch(3)
    t = target.masked_fill(mask, float("nan"))
    keep = ~mask
    want = F.binary_cross_entropy_with_logits(logits[keep], target[keep])
    assert build_loss(lcfg("bce", label_smoothing=0.0), POS, N)(logits, t).item() == pytest.approx(want.item(), rel=1e-6)
    from torchvision.ops import sigmoid_focal_loss
    want = sigmoid_focal_loss(logits[keep], target[keep], alpha=0.25, gamma=2.0, reduction="mean")
    got = build_loss(lcfg("focal", label_smoothing=0.0), POS, N)(logits, t)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_nothing_labelled_is_zero_loss_and_zero_gradient(name):
    loss = variants(name)[-1]
    x = torch.randn(3, C, requires_grad=True)
    got = loss(x, torch.full((3, C), float("nan")))
    got.backward()
    assert got.item() == 0.0 and (x.grad == 0).all()


def test_label_counts_skip_unlabelled_entries():
    y = np.array([[1, 0, np.nan], [np.nan, 1, 0], [1, np.nan, np.nan], [0, 0.25, 1]])
    pos, lab = label_counts(y)
    np.testing.assert_array_equal(pos, [2, 1.25, 1])
    np.testing.assert_array_equal(lab, [3, 3, 2])
    pos, lab = label_counts(np.nan_to_num(y))
    np.testing.assert_array_equal(lab, [4, 4, 4])


def test_class_weights_and_db_prior_count_labelled_images_only():
    pos, lab = np.array([10.0, 10.0, 5.0]), np.array([100, 20, 50])
    # inverse: f_c = n_c / m_c = 0.1, 0.5, 0.1 -> 10, 2, 10 before the mean-1 normalisation
    w = class_weights(pos, lab, "inverse").numpy()
    np.testing.assert_allclose(w, np.array([10, 2, 10]) / (22 / 3), rtol=1e-6)
    rw = class_weights(pos, lab, "rw").numpy()
    np.testing.assert_allclose(rw, w, rtol=1e-6)
    built = build_loss(lcfg("bce", class_weights="inverse"), pos, 100, epochs=2, labelled=lab)
    np.testing.assert_allclose(built.weight.numpy(), w, rtol=1e-6)
    # weighted_bce: the negative/positive ratio among labelled images: 9, 1 (clipped to >= 1), 9
    wb = build_loss(lcfg("weighted_bce"), pos, 100, labelled=lab)
    np.testing.assert_allclose(wb.pos_weight.numpy(), [9, 1, 9])
    # db: the class prior p_i = n_i / m_i, so the logit shift kappa / lambda * log(p / (1 - p))
    db = build_loss(lcfg("db"), pos, 100, labelled=lab)
    p = pos / lab
    np.testing.assert_allclose(db.shift.numpy(), 0.05 / 2.0 * np.log(p / (1 - p)), rtol=1e-5)


def test_labelled_equal_to_n_changes_nothing():
    for name in NAMES:
        for cw in ([None, "cb", "inverse"] if LOSSES[name].weights else [None]):
            a = build_loss(lcfg(name, class_weights=cw), POS, N, epochs=2)
            b = build_loss(lcfg(name, class_weights=cw), POS, N, epochs=2, labelled=np.full(C, N))
            for k, v in a.state_dict().items():
                assert torch.equal(v, b.state_dict()[k]), (name, k)


def test_partial_labels_are_refused_for_a_softmax_and_bad_counts_in_one_line():
    with pytest.raises(CxrltError, match="multiclass"):
        build_loss(lcfg("ce"), POS, N, task="multiclass", labelled=np.array([60, 60, 59, 60, 60]))
    build_loss(lcfg("ce"), POS, N, task="multiclass", labelled=np.full(C, N))     # all labelled: fine
    with pytest.raises(CxrltError, match="one per class"):
        build_loss(lcfg("bce"), POS, N, labelled=np.full(C + 1, N))
    with pytest.raises(CxrltError, match="one per class"):
        build_loss(lcfg("bce"), POS, N, labelled=np.full(C, N + 1))


def test_drw_weights_apply_to_labelled_entries_only():
    loss = build_loss(lcfg("bce", class_weights="inverse", drw_epoch=1, label_smoothing=0.0), POS, N, epochs=3)
    logits, target, mask = batch(4)
    t = target.masked_fill(mask, float("nan"))
    el = F.binary_cross_entropy_with_logits(logits, target.masked_fill(mask, 0), reduction="none")
    keep = ~mask
    loss.set_epoch(0)
    assert loss(logits, t).item() == pytest.approx(el[keep].mean().item(), rel=1e-6)
    loss.set_epoch(1)
    w = loss.weight.expand_as(el)
    assert loss(logits, t).item() == pytest.approx((el * w)[keep].sum().item() / keep.sum().item(), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_row_weights_scale_each_rows_share(name):
    """forward(logits, target, row_weight): sum r_i w_c l_ic over labelled entries / their number;
    ones change nothing bit for bit, a zero row adds exactly nothing to the gradient."""
    loss = variants(name)[-1]
    logits, target, mask = batch(5, soft=True)
    t = target.masked_fill(mask, float("nan"))
    r = torch.tensor([1.0, 0.5, 0.0, 2.0, 0.25, 1.0])     # row 2: weight 0, with labelled entries
    x = logits.clone().requires_grad_()
    got = loss(x, t, r)
    got.backward()
    el = loss.elementwise(logits, target.masked_fill(mask, 0.0))
    if loss.weighted and loss.weight.numel():
        el = el * loss.weight
    want = (el * r[:, None])[~mask].sum() / (~mask).sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert (~mask[2]).any() and (x.grad[2] == 0).all() and (x.grad[mask] == 0).all()
    assert (x.grad[3][~mask[3]] != 0).all()
    assert torch.equal(loss(logits, t, torch.ones(6)), loss(logits, t))
    assert torch.equal(loss(logits, target, torch.ones(6)), loss(logits, target))
