"""The README's own-videos command, run from a folder outside the repo, yields 256/224 ImageNet
features that match an independent PyAV + PIL + torchvision computation of the same frames."""

import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from extract.registry import create
from extract.store import FeatureStore


def write_clip(path, width, height, frames, seed):
    """A real H.264 clip: a textured background with a moving bright disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (rng.uniform(40, 200, 3) + 30 * np.sin(xx / 17.0)[..., None] + 20 * np.cos(yy / 11.0)[..., None])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            img = base.copy()
            cx, cy = 20 + t * (width - 40) / frames, height / 2
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (height / 5) ** 2] = rng.uniform(150, 255, 3)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.mark.timeout(900)
def test_own_videos_from_outside_the_repo_match_a_torchvision_pipeline(tmp_path):
    write_clip(tmp_path / "wide.mp4", 320, 240, 30, 0)
    write_clip(tmp_path / "tall.mp4", 180, 256, 24, 1)
    (tmp_path / "clips.csv").write_text("video_id,path,labels,split\nwide,wide.mp4,0,train\ntall,tall.mp4,1,test\n")
    command = [sys.executable, "-m", "pipeline", "run", "-q", "--no-progress", "--stage", "extract",
               "--set", "dataset.format=csv", "--set", "dataset.root=clips.csv", "--set", "extract.num_frames=6"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=800)
    assert result.returncode == 0, result.stderr[-3000:]
    store = FeatureStore(tmp_path / "runs" / "csv" / "extract")  # the product defaults' work dir
    model = create("efficientnet_lite0")
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for video in ("wide", "tall"):
        with av.open(str(tmp_path / f"{video}.mp4")) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        indices = store.meta(video)["frame_indices"]
        assert len(indices) == 6 and list(indices) == sorted(indices)
        batch = torch.stack([reference(Image.fromarray(decoded[i])) for i in indices])
        with torch.inference_mode():
            expected = model(batch).numpy()
        stored = store.get(video).astype(np.float32)
        cosine = (stored * expected).sum(1) / np.linalg.norm(stored, axis=1) / np.linalg.norm(expected, axis=1)
        assert stored.shape == (6, 1280) and cosine.min() >= 0.98, cosine
