"""Tests for train.losses against independent restatements of REFERENCE section 3.3 / 3.5 / 9."""

import math

import numpy as np
import pytest
import torch

from train import losses
from train.losses import cb_weights, ldam_margins

B, C = 6, 9
COUNTS = np.array([1912, 1268, 1228, 308, 101, 100, 45, 44, 7], dtype=np.float64)


def elem_bce(z, y):
    """Numerically stable sigmoid BCE written out: -(y log s(z) + (1-y) log(1-s(z)))."""
    return torch.clamp(z, min=0) - z * y + torch.log1p(torch.exp(-z.abs()))


def ref_cb_w(counts, beta):
    w = np.array([(1 - beta) / (1 - beta ** n) for n in counts])
    return torch.tensor(w / w.sum() * len(counts), dtype=torch.float32)


def ref_margins(counts, max_m=0.5):
    m = np.array([n ** -0.25 for n in counts])
    return torch.tensor(m * max_m / m.max(), dtype=torch.float32)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, C, generator=g, dtype=torch.float64).float() * 3
    y = (torch.rand(B, C, generator=g) < 0.3).float()
    y[0] = 0
    y[0, 2] = 1
    y[1, [0, 7]] = 1  # multi-label
    return z, y


def reduce(l, mask=None):
    if mask is None:
        return l.mean()
    return torch.stack([(mask[i] * l[i]).sum() for i in range(l.shape[0])]).mean()


def test_bce(data):
    z, y = data
    loss = losses.build("bce", COUNTS)
    torch.testing.assert_close(loss(z, y), elem_bce(z, y).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses.build("bce", None)(z, y), elem_bce(z, y).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma,alpha", [(1.0, 1.0), (2.0, 0.25), (0.0, 1.0)])
def test_focal(data, gamma, alpha):
    z, y = data
    kw = {} if (gamma, alpha) == (1.0, 1.0) else {"gamma": gamma, "alpha": alpha}
    loss = losses.build("focal", COUNTS, **kw)
    l = elem_bce(z, y)
    expected = (alpha * (1 - torch.exp(-l)) ** gamma * l).mean()
    torch.testing.assert_close(loss(z, y), expected, rtol=1e-5, atol=1e-6)
    # soft targets work unchanged
    ys = y * 0.7 + 0.1
    l = elem_bce(z, ys)
    torch.testing.assert_close(loss(z, ys), (alpha * (1 - torch.exp(-l)) ** gamma * l).mean(), rtol=1e-5, atol=1e-6)


def test_cb(data):
    z, y = data
    loss = losses.build("cb", COUNTS)
    w = ref_cb_w(COUNTS, 0.9999)
    torch.testing.assert_close(loss.weight, w)
    assert abs(float(loss.weight.sum()) - C) < 1e-4
    torch.testing.assert_close(loss(z, y), (w[None, :] * elem_bce(z, y)).mean(), rtol=1e-5, atol=1e-6)


def ldam_ref(z, y, counts, epoch, max_m=0.5, s=30.0, drw_epoch=50):
    m = ref_margins(counts, max_m)
    out = z.clone()
    for i in range(z.shape[0]):
        delta = sum(float(m[c]) for c in range(z.shape[1]) if y[i, c] == 1)
        for c in range(z.shape[1]):
            if y[i, c] == 1:
                out[i, c] = z[i, c] - delta
    w = torch.ones(len(counts)) if epoch < drw_epoch else ref_cb_w(counts, 0.9999)
    return w[None, :] * elem_bce(s * out, y)


def test_ldam_drw_before_and_after_switch(data):
    z, y = data
    loss = losses.build("ldam_drw", COUNTS)
    torch.testing.assert_close(loss.m_list, ref_margins(COUNTS))
    # before any set_epoch: epoch-0 weights (ones)
    torch.testing.assert_close(loss(z, y), ldam_ref(z, y, COUNTS, 0).mean(), rtol=1e-5, atol=1e-5)
    for epoch in (0, 49, 50, 99):
        loss.set_epoch(epoch)
        torch.testing.assert_close(loss(z, y), ldam_ref(z, y, COUNTS, epoch).mean(), rtol=1e-5, atol=1e-5)
    loss.set_epoch(49)
    torch.testing.assert_close(loss.weight, torch.ones(C))
    loss.set_epoch(50)
    torch.testing.assert_close(loss.weight, ref_cb_w(COUNTS, 0.9999))
    loss.set_epoch(150)  # past the reference's 2-entry beta list: stays on the CB weights
    torch.testing.assert_close(loss.weight, ref_cb_w(COUNTS, 0.9999))


def test_ldam_multilabel_margin_is_sum(data):
    z, y = data
    loss = losses.build("ldam_drw", COUNTS, s=1.0)
    m = ref_margins(COUNTS)
    # video 1 has labels {0, 7, ...}: every positive logit loses the sum of all its margins
    delta = sum(float(m[c]) for c in range(C) if y[1, c] == 1)
    row = loss.elementwise(z, y)[1]
    exp = elem_bce(torch.where(y[1] == 1, z[1] - delta, z[1]), y[1])
    torch.testing.assert_close(row, exp, rtol=1e-5, atol=1e-6)


def test_ldam_variants(data):
    z, y = data
    m = ref_margins(COUNTS)
    pos = y == 1
    delta_max = torch.stack([m[pos[i]].max() if pos[i].any() else torch.tensor(0.0) for i in range(B)])
    zm = torch.where(pos, z - delta_max[:, None], z)
    torch.testing.assert_close(losses.build("ldam_drw", COUNTS, ldam_margin="max")(z, y),
                               elem_bce(30 * zm, y).mean(), rtol=1e-5, atol=1e-5)
    zp = torch.where(pos, z - m[None, :], z)
    torch.testing.assert_close(losses.build("ldam_drw", COUNTS, ldam_margin="per_class")(z, y),
                               elem_bce(30 * zp, y).mean(), rtol=1e-5, atol=1e-5)
    # drw_epoch=0: CB weights from the start (MOVE --reset 0)
    l0 = losses.build("ldam_drw", COUNTS, drw_epoch=0)
    torch.testing.assert_close(l0.weight, ref_cb_w(COUNTS, 0.9999))
    with pytest.raises(ValueError, match="sum"):
        losses.build("ldam_drw", COUNTS, ldam_margin="mean")


def eql_ref(z, y, counts, u, gamma=1.76e-3, lam=100):
    tail = torch.tensor([1.0 if n <= lam else 0.0 for n in counts])
    beta = (u >= 1 - gamma).float()
    w = 1 - beta * tail[None, :] * (1 - y)
    return w * elem_bce(z, y)


def test_eql_exact_with_generator(data):
    z, y = data
    loss = losses.build("eql", COUNTS, gamma=0.3, generator=torch.Generator().manual_seed(5))
    u = torch.rand(B, C, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss(z, y), eql_ref(z, y, COUNTS, u, gamma=0.3).mean(), rtol=1e-5, atol=1e-6)
    # default gamma, same draws
    loss = losses.build("eql", COUNTS, generator=torch.Generator().manual_seed(7))
    u = torch.rand(B, C, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(loss(z, y), eql_ref(z, y, COUNTS, u).mean(), rtol=1e-5, atol=1e-6)
    # tail flag: n <= 100 (the classes with 100, 45, 44, 7)
    assert loss.tail_flag.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_eql_expectation(data):
    z, y = data
    gamma = 0.2
    loss = losses.build("eql", COUNTS, gamma=gamma, generator=torch.Generator().manual_seed(0))
    draws = torch.stack([loss(z, y) for _ in range(4000)])
    tail = torch.tensor([1.0 if n <= 100 else 0.0 for n in COUNTS])
    expected = ((1 - gamma * tail[None, :] * (1 - y)) * elem_bce(z, y)).mean()
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - expected) < 4 * se + 1e-6
    # the draws really are random per call
    assert draws.std() > 0


def ref_elementwise(name, z, y):
    l = elem_bce(z, y)
    if name in ("bce", "eql"):  # eql with gamma 0 drops nothing
        return l
    if name == "focal":
        return (1 - torch.exp(-l)) * l
    if name == "cb":
        return ref_cb_w(COUNTS, 0.9999)[None, :] * l
    return ldam_ref(z, y, COUNTS, 0)


@pytest.mark.parametrize("name", ["bce", "focal", "cb", "ldam_drw", "eql"])
def test_masked_resampling_reduction(data, name):
    z, y = data
    kw = {"gamma": 0.0} if name == "eql" else {}  # gamma 0: deterministic EQL (w == 1)
    loss = losses.build(name, COUNTS, **kw)
    mask = (torch.rand(B, C, generator=torch.Generator().manual_seed(3)) > 0.2).float()
    expected = reduce(ref_elementwise(name, z, y), mask)
    torch.testing.assert_close(loss(z, y, mask=mask), expected, rtol=1e-5, atol=1e-5)
    # all-ones mask: sum over classes = C x the mean-reduced loss
    torch.testing.assert_close(loss(z, y, mask=torch.ones(B, C)), C * loss(z, y), rtol=1e-5, atol=1e-5)


def test_masked_eql_with_generator(data):
    z, y = data
    mask = (torch.rand(B, C, generator=torch.Generator().manual_seed(3)) > 0.2).float()
    loss = losses.build("eql", COUNTS, gamma=0.4, generator=torch.Generator().manual_seed(11))
    u = torch.rand(B, C, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(loss(z, y, mask=mask), reduce(eql_ref(z, y, COUNTS, u, gamma=0.4), mask),
                               rtol=1e-5, atol=1e-5)


def test_backward_and_set_epoch_noop(data):
    z, y = data
    for name in ["bce", "focal", "cb", "ldam_drw", "eql"]:
        loss = losses.build(name, COUNTS)
        zz = z.clone().requires_grad_(True)
        loss.set_epoch(3)
        v = loss(zz, y)
        v.backward()
        assert v.dim() == 0 and torch.isfinite(zz.grad).all()


def test_build_errors_and_aliases():
    with pytest.raises(ValueError, match="ldam_drw"):
        losses.build("hinge", COUNTS)
    with pytest.raises(ValueError, match="max_m"):
        losses.build("ldam_drw", COUNTS, margin=1)
    with pytest.raises(ValueError, match="gamma"):
        losses.build("bce", COUNTS, gamma=1)
    with pytest.raises(ValueError):
        losses.build("cb", None)
    assert isinstance(losses.build("LDAM", COUNTS), losses.LDAMDRWLoss)
    assert isinstance(losses.build("FocalLoss", COUNTS), losses.FocalLoss)
    with pytest.raises(ValueError):
        losses.build("bce", COUNTS)(torch.zeros(2, C + 1), torch.zeros(2, C + 1))


# ---------------------------------------------------------------- REFERENCE section 9 constants

def test_ldam_margins_section9():
    counts = np.array([1912, 1268, 1228, 308, 100, 45, 44] + [500] * 20, dtype=float)
    m = ldam_margins(counts, 0.5).numpy()
    assert m[0] == pytest.approx(0.1947, abs=5e-5)
    assert m[1] == pytest.approx(0.2158, abs=5e-5)
    assert m[2] == pytest.approx(0.2175, abs=5e-5)
    assert m[3] == pytest.approx(0.3074, abs=5e-5)
    assert m[4] == pytest.approx(0.4072, abs=5e-5)
    assert m[5] == pytest.approx(0.4972, abs=5e-5)
    assert m[6] == pytest.approx(0.5, abs=1e-12)


def test_cb_weights_section9_ratios():
    beta = 0.9999
    counts = np.array([1912, 1268, 1228, 308, 100, 45, 44] + [300] * 50, dtype=float)
    w = cb_weights(counts, beta).numpy()
    assert w.sum() == pytest.approx(len(counts))
    assert w[6] / w[0] == pytest.approx((1 - beta ** 1912) / (1 - beta ** 44), rel=1e-12)
    # ratios of the VideoLT table (normalisation cancels): 2.7673/0.0698, 1.2210/0.1020, 2.7059/0.4006
    assert w[6] / w[0] == pytest.approx(2.7673 / 0.0698, rel=2e-3)
    assert w[4] / w[1] == pytest.approx(1.2210 / 0.1020, rel=2e-3)
    assert w[5] / w[3] == pytest.approx(2.7059 / 0.4006, rel=2e-3)
    # beta = 0 gives uniform weights (DRW before the switch)
    np.testing.assert_allclose(cb_weights(counts, 0.0).numpy(), np.ones(len(counts)))
