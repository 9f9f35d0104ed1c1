"""manifests/devices.py: what `auto`, `cuda:N` and `amp` resolve to, for extract and for training, with
the GPU branches exercised on a CPU machine by a faked torch.cuda."""

from __future__ import annotations

import pytest
import torch

from extract.encoder import FrameEncoder
from manifests import devices
from manifests.errors import UserError
from train.loop import autocast, resolve_device


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with 2 GPUs; returns the devices made current."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_auto_is_plain_cuda_for_extract_and_the_local_rank_for_training(two_gpus, monkeypatch):
    assert devices.resolve_device("auto", named="x", fix="y") == torch.device("cuda") and two_gpus == []
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1) and two_gpus == [torch.device("cuda", 1)]
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_index_beyond_the_visible_ones_is_a_user_error(two_gpus):
    with pytest.raises(UserError, match=r"^extract.device=cuda:2: only 2 GPU\(s\) visible$"):
        devices.resolve_device("cuda:2", named="extract.device=cuda:2", fix="extract.device=cpu or auto")
    with pytest.raises(UserError, match=r"^device cuda:5: only 2 GPU\(s\) visible$"):
        resolve_device("cuda:5")


def test_no_gpu_messages_name_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as ei:
        FrameEncoder("efficientnet_lite0", pretrained=False, device="cuda:0")
    assert str(ei.value) == "extract.device=cuda:0: no CUDA GPU is visible here; use extract.device=cpu or auto"
    with pytest.raises(UserError) as ei:
        resolve_device("cuda")
    assert str(ei.value) == "device cuda: no CUDA GPU is visible here; use --device cpu or auto"
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("bf16", [True, False])
def test_amp_dtype(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert devices.amp_dtype("auto", gpu) == (torch.bfloat16 if bf16 else torch.float16)
    assert (devices.amp_dtype("bf16", gpu), devices.amp_dtype("fp16", gpu)) == (torch.bfloat16, torch.float16)
    assert devices.amp_dtype("off", gpu) is None
    assert all(devices.amp_dtype(amp, cpu) is None for amp in ("auto", "bf16", "fp16", "off"))


def test_autocast_on_cpu_is_off():
    with autocast(torch.device("cpu"), "bf16"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
