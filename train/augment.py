"""Batch augmentations of the VideoLT baselines: mixup and FrameStack, as in the published code.

All randomness comes from an explicit ``torch.Generator`` (``None`` = torch's global RNG). Random numbers
are drawn on the generator's device and moved to the data's device, so a CPU generator also works for
CUDA tensors.

Mixup's ``lambda ~ Beta(1, 1)``: ``torch.distributions.Beta`` cannot take a generator, and Beta(1, 1) is
exactly Uniform(0, 1), so ``lambda`` is drawn as one float64 ``torch.rand`` with the generator (then
``perm = randperm(B)``, in that order).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["mixup", "framestack", "framestack_batch", "linspace_indices"]


def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = _gen_device(generator, torch.device("cpu"))
    return torch.randperm(n, generator=generator, device=gdev).to(device)


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    perm: torch.Tensor | None = None,
):
    """Mixup with one ``lam ~ Beta(1,1)`` per batch and ``perm = randperm(B)``.

    ``x~ = lam * x + (1-lam) * x[perm]`` (frame t mixes with frame t of the partner),
    ``y~ = lam * y + (1-lam) * y[perm]``. Returns ``(x_mixed, y_mixed, lam)`` with ``lam`` a float.
    ``perm`` may be given explicitly (tests); ``lam`` is still drawn first.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError("x and y must have the same batch size")
    gdev = _gen_device(generator, torch.device("cpu"))
    lam = float(torch.rand((), generator=generator, device=gdev, dtype=torch.float64).item())
    if perm is None:
        perm = _randperm(x.shape[0], generator, x.device)
    perm = perm.to(x.device)
    x_mixed = x * lam + x[perm] * (1 - lam)
    y_mixed = y * lam + y[perm.to(y.device)] * (1 - lam)
    return x_mixed, y_mixed, lam


def linspace_indices(n_frames: int, count: int) -> torch.Tensor:
    """``int(linspace(0, n_frames-1, count))`` with numpy's linspace and truncation toward 0 (int64)."""
    return torch.from_numpy(np.linspace(0, n_frames - 1, int(count)).astype(np.int64))


def framestack(
    x: torch.Tensor,
    y: torch.Tensor,
    ap,
    generator: torch.Generator | None = None,
    length: int | None = None,
    perm: torch.Tensor | None = None,
    return_info: bool = False,
):
    """FrameStack (the published VideoLT rule) on all ``S`` videos of ``x`` (S, T, D), ``y`` (S, C),
    per-class ``ap`` (C,).

    ``perm = randperm(S)`` (or the given ``perm``); ``r_i = mean_c(y_ic * AP_c)``;
    ``beta_i = 0.5 if r_i + r_perm(i) < 1e-5 else r_i / (r_i + r_perm(i))``; ``Fj = int(beta_i * L)``
    partner frames (first) and ``Fi = L - Fj`` own frames, at ``int(linspace(0, T-1, F))``;
    ``y~_i = (1 - beta_i) y_i + beta_i y_perm(i)``. ``L = length`` (default T).

    As in the reference, ``r`` and ``beta`` are computed in float32 (the dtype of the reference's
    targets and AP meter); this matters at truncation boundaries (0.3/0.4 is 0.75 in float32 but
    0.7499... in float64). Returns ``(x_new (S, L, D), y_new (S, C))`` and, with ``return_info``, a
    dict with ``perm``, ``beta``, ``Fj``, ``Fi``.
    """
    if x.dim() != 3 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x (S, T, D) and y (S, C), got {tuple(x.shape)} and {tuple(y.shape)}")
    s, t, _ = x.shape
    L = int(length) if length is not None else t
    ap = torch.as_tensor(ap)
    if ap.shape != (y.shape[1],):
        raise ValueError(f"AP size {tuple(ap.shape)} != number of classes {y.shape[1]}")
    if perm is None:
        perm = _randperm(s, generator, x.device)
    perm = perm.to(x.device).long()
    if s == 0:
        out = (x[:, :0].new_zeros((0, L, x.shape[2])), y.clone())
        return (*out, {"perm": perm, "beta": y.new_zeros(0), "Fj": [], "Fi": []}) if return_info else out

    y32 = y.to(torch.float32)
    r = torch.mean(y32 * ap.to(device=y.device, dtype=torch.float32), dim=-1)  # (S,), float32
    rp = r[perm.to(y.device)]
    rs = r + rp
    small = rs < 1e-5
    beta = torch.where(small, torch.full_like(r, 0.5), r / torch.where(small, torch.ones_like(rs), rs))
    fj = (beta * L).long().tolist()  # truncation, like int(beta * L)

    pieces, fis = [], []
    for i in range(s):
        fi = L - fj[i]
        fis.append(fi)
        idx_j = linspace_indices(t, fj[i]).to(x.device)
        idx_i = linspace_indices(t, fi).to(x.device)
        pieces.append(torch.cat((x[perm[i]][idx_j], x[i][idx_i]), dim=0))
    x_new = torch.stack(pieces)
    b = beta.to(dtype=y.dtype).unsqueeze(1)
    y_new = y * (1 - b) + y[perm.to(y.device)] * b
    if return_info:
        return x_new, y_new, {"perm": perm, "beta": beta, "Fj": fj, "Fi": fis}
    return x_new, y_new


def framestack_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    ap,
    ratio: float = 0.5,
    generator: torch.Generator | None = None,
    length: int | None = None,
):
    """Apply :func:`framestack` to the first ``int(B * ratio)`` videos and append the rest unchanged.

    With ``int(B * ratio) == 0`` (e.g. a 1-video batch) the batch is returned unchanged (the reference
    would crash on an empty stack). The untouched videos must already have the output length.
    """
    n = int(x.shape[0] * ratio)
    if n <= 0:
        return x, y
    xs, ys = framestack(x[:n], y[:n], ap, generator, length=length)
    return torch.cat((xs, x[n:]), dim=0), torch.cat((ys, y[n:]), dim=0)
