"""Tests for train.augment: mixup (REFERENCE 3.4) and FrameStack (3.6, fixture of section 9)."""

import numpy as np
import pytest
import torch

from train.augment import framestack, framestack_batch, linspace_indices, mixup

OWN_IDX_15 = [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 59]


def frame_ids(n_videos, n_frames=60, d=3):
    """x[v, t, :] = 1000 * v + t, so the (video, frame) of every output frame can be read back."""
    ids = 1000 * torch.arange(n_videos)[:, None] + torch.arange(n_frames)[None, :]
    return ids[:, :, None].float().expand(n_videos, n_frames, d).clone()


def swap_seed():
    """First seed whose randperm(2) swaps the two videos."""
    for seed in range(100):
        if torch.randperm(2, generator=torch.Generator().manual_seed(seed)).tolist() == [1, 0]:
            return seed
    raise AssertionError("no swapping seed found")


def fixture_inputs(C=10):
    # r_i = (AP_0) / C = 0.3, r_j = (AP_1) / C = 0.1
    ap = torch.zeros(C)
    ap[0], ap[1] = 3.0, 1.0
    y = torch.zeros(2, C)
    y[0, 0] = 1
    y[1, 1] = 1
    return frame_ids(2), y, ap


# ---------------------------------------------------------------- mixup

def test_mixup_matches_restatement():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, 6)
    y = (torch.rand(5, 7) > 0.5).float()
    xm, ym, lam = mixup(x, y, torch.Generator().manual_seed(3))
    lam_ref = torch.rand((), generator=g, dtype=torch.float64).item()  # Beta(1,1) == U(0,1)
    perm = torch.randperm(5, generator=g)
    assert lam == lam_ref and 0.0 <= lam <= 1.0
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(ym, lam * y + (1 - lam) * y[perm])
    # frame t mixes with frame t of the partner
    torch.testing.assert_close(xm[:, 2], lam * x[:, 2] + (1 - lam) * x[perm, 2])


def test_mixup_explicit_perm_and_lambda_distribution():
    x = torch.randn(3, 2, 4)
    y = torch.eye(3)
    xm, ym, lam = mixup(x, y, torch.Generator().manual_seed(0), perm=torch.tensor([2, 0, 1]))
    torch.testing.assert_close(ym[0], torch.tensor([lam, 0.0, 1 - lam]))
    g = torch.Generator().manual_seed(1)
    lams = np.array([mixup(x, y, g)[2] for _ in range(3000)])
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 1 / 12) < 0.01  # Uniform(0, 1)


# ---------------------------------------------------------------- FrameStack

def check_fixture_output(x_new, y_new, y):
    assert x_new.shape == (2, 60, 3)
    ids = x_new[:, :, 0].long()
    # video 0: beta 0.75 -> 45 partner (video 1) frames first, then 15 own frames
    partner = linspace_indices(60, 45)
    assert (ids[0, :45] == 1000 + partner).all()
    assert (ids[0, 45:] // 1000 == 0).all() and (ids[0, 45:] % 1000).tolist() == OWN_IDX_15
    torch.testing.assert_close(y_new[0], 0.25 * y[0] + 0.75 * y[1])
    # video 1: beta 0.25 -> 15 partner (video 0) frames, 45 own frames
    assert (ids[1, :15] == torch.tensor(OWN_IDX_15)).all()
    assert (ids[1, 15:] == 1000 + partner).all()
    torch.testing.assert_close(y_new[1], 0.75 * y[1] + 0.25 * y[0])


def test_framestack_section9_fixture_explicit_perm():
    x, y, ap = fixture_inputs()
    x_new, y_new, info = framestack(x, y, ap, None, perm=torch.tensor([1, 0]), return_info=True)
    assert info["beta"][0].item() == 0.75
    assert info["Fj"] == [45, 15] and info["Fi"] == [15, 45]
    check_fixture_output(x_new, y_new, y)


def test_framestack_section9_fixture_with_generator():
    x, y, ap = fixture_inputs()
    seed = swap_seed()
    x_new, y_new = framestack(x, y, ap, torch.Generator().manual_seed(seed), length=60)
    check_fixture_output(x_new, y_new, y)
    # same generator state -> same result
    x2, y2 = framestack(x, y, ap, torch.Generator().manual_seed(seed))
    assert torch.equal(x2, x_new) and torch.equal(y2, y_new)


def test_framestack_zero_ap_and_self_partner():
    x, y, _ = fixture_inputs()
    ap = torch.zeros(10)
    x_new, y_new, info = framestack(x, y, ap, None, perm=torch.tensor([0, 1]), return_info=True)
    assert info["beta"].tolist() == [0.5, 0.5] and info["Fj"] == [30, 30]
    ids = x_new[0, :, 0].long()
    half = linspace_indices(60, 30)
    assert (ids[:30] == half).all() and (ids[30:] == half).all()  # partner == itself
    torch.testing.assert_close(y_new, y)


def test_framestack_multilabel_uses_sum_of_label_aps():
    C = 4
    ap = torch.tensor([0.2, 0.4, 0.8, 0.0])
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    x = frame_ids(2, 20)
    _, _, info = framestack(x, y, ap, None, perm=torch.tensor([1, 0]), return_info=True)
    r0, r1 = (0.2 + 0.4) / C, 0.8 / C
    assert info["beta"][0].item() == pytest.approx(r0 / (r0 + r1), rel=1e-6)
    assert info["Fj"][0] == int(np.float32(r0 / (r0 + r1)) * 20)


def ref_framestack(x, y, ap, perm, L):
    """Independent loop restatement of REFERENCE 3.6 (float32 AP arithmetic, numpy linspace indices)."""
    S, T, _ = x.shape
    C = y.shape[1]
    r = [np.float32(sum(np.float32(y[i, c]) * np.float32(ap[c]) for c in range(C))) / np.float32(C)
         for i in range(S)]
    xs, ys = [], []
    for i in range(S):
        j = int(perm[i])
        tot = np.float32(r[i] + r[j])
        beta = np.float32(0.5) if tot < 1e-5 else np.float32(r[i] / tot)
        fj = int(beta * np.float32(L))
        fi = L - fj
        idx_j = [int(v) for v in np.linspace(0, T - 1, fj)]
        idx_i = [int(v) for v in np.linspace(0, T - 1, fi)]
        xs.append(torch.cat([x[j][idx_j], x[i][idx_i]]))
        ys.append(y[i] * (1 - float(beta)) + y[j] * float(beta))
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize("L", [60, 40])
def test_framestack_matches_restatement(L):
    g = torch.Generator().manual_seed(0)
    S, T, C = 7, 60, 12
    x = torch.randn(S, T, 5, generator=g)
    y = (torch.rand(S, C, generator=g) < 0.25).float()
    y[0] = 0  # a video with no positive (r = 0)
    y[1, :3] = 1
    ap = torch.rand(C, generator=g)
    perm = torch.randperm(S, generator=torch.Generator().manual_seed(9))
    x_new, y_new = framestack(x, y, ap, torch.Generator().manual_seed(9), length=L)
    x_ref, y_ref = ref_framestack(x, y, ap, perm, L)
    assert x_new.shape == (S, L, 5)
    torch.testing.assert_close(x_new, x_ref)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-6, atol=1e-6)


def test_framestack_batch_only_first_part():
    g = torch.Generator().manual_seed(0)
    B, T, C = 7, 60, 5
    x = torch.randn(B, T, 4, generator=g)
    y = (torch.rand(B, C, generator=g) < 0.5).float()
    ap = torch.rand(C, generator=g)
    xb, yb = framestack_batch(x, y, ap, 0.5, torch.Generator().manual_seed(4))
    assert xb.shape == x.shape and yb.shape == y.shape
    xs, ys = framestack(x[:3], y[:3], ap, torch.Generator().manual_seed(4))  # int(7 * 0.5) = 3
    assert torch.equal(xb[:3], xs) and torch.equal(yb[:3], ys)
    assert torch.equal(xb[3:], x[3:]) and torch.equal(yb[3:], y[3:])
    # a 1-video batch stacks nothing
    x1, y1 = framestack_batch(x[:1], y[:1], ap, 0.5, g)
    assert torch.equal(x1, x[:1]) and torch.equal(y1, y[:1])


def test_framestack_ap_size_checked():
    x, y, _ = fixture_inputs()
    with pytest.raises(ValueError):
        framestack(x, y, torch.zeros(3), None)
