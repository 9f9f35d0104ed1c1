"""Device and mixed-precision resolution shared by extract and train.

torch is imported inside the functions, so that importing manifests stays torch-free.
"""

from __future__ import annotations

import os
from typing import Optional

from manifests.errors import UserError


def resolve_device(name: str, *, named: str, fix: str, per_process: bool = False):
    """The torch device of a setting: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` is the CPU when no GPU is visible, else plain ``cuda`` or, with ``per_process`` (training
    under torchrun), this process's GPU (``cuda:$LOCAL_RANK``), made the current device. A CUDA
    device where none is visible, or an index beyond the visible GPUs, is a UserError that starts with
    ``named`` (how the setting reads, e.g. ``extract.device=cuda:1``) and suggests ``fix``.
    """
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if not per_process:
            return torch.device("cuda")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{named}: no CUDA GPU is visible here; use {fix}")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{named}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    return torch.device(name)


def amp_dtype(amp: str, device) -> Optional["torch.dtype"]:
    """The autocast dtype of ``amp`` (auto | bf16 | fp16 | off) on ``device``: None on CPU or when off;
    auto is bf16 where the GPU supports it, else fp16."""
    import torch

    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device, amp: str):
    """The autocast context of ``amp`` on ``device`` (a disabled one on CPU or when off)."""
    import torch

    dtype = amp_dtype(amp, device)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=dtype)
