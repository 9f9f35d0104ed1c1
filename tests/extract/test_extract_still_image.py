"""A still image is not a video: a picture renamed .mp4 is a recorded per-video failure with its reason.

FFmpeg reads such a file with an image demuxer and returns its one picture, which used to become a
"video" of one frame repeated. A real one-frame clip (H.264) is still a video (RELIABILITY.md: one frame
is repeated), and an animated GIF has frames of its own.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from extract.config import ExtractConfig
from extract.decode import DecodeJob, decode_all
from extract.stage import run_extract
from extract.store import FeatureStore
from extract_testutils import table


def picture(size=(80, 64), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def stills(tmp_path_factory):
    """Pictures under video names: PNG, JPEG and WebP renamed .mp4, a single-frame GIF renamed .mkv, one
    PNG frame in a MOV container, and a 5-frame animated GIF renamed .mp4."""
    d = tmp_path_factory.mktemp("stills")
    for name, fmt in (("png.mp4", "PNG"), ("jpeg.mp4", "JPEG"), ("webp.mp4", "WEBP"), ("gif.mkv", "GIF")):
        picture().save(d / name, format=fmt)
    frames = [picture(seed=i) for i in range(5)]
    frames[0].save(d / "animated.mp4", format="GIF", save_all=True, append_images=frames[1:], duration=100)
    import av

    with av.open(str(d / "png_frame.mov"), "w") as container:
        stream = container.add_stream("png", rate=25)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_image(frames[0])))
        container.mux(stream.encode())
    return d


@pytest.mark.parametrize("decoder", ["auto", "pyav", "decord"])
@pytest.mark.parametrize("name, reason", [
    ("png.mp4", "a still image (png), not a video"), ("jpeg.mp4", "a still image (jpeg), not a video"),
    ("webp.mp4", "a still image (webp), not a video"),
    ("gif.mkv", "a still image (one gif frame in a gif file), not a video"),
    ("png_frame.mov", "a still image (one png frame in a mov file), not a video")])
def test_pictures_are_refused_with_the_reason(stills, name, reason, decoder):
    frames, meta = decode_all(DecodeJob(video_id="x", path=str(stills / name), num_frames=4, resize=32, crop=32,
                                        decoder=decoder))
    assert frames is None
    if decoder == "decord" and not name.endswith(".mov"):
        assert "decord could not open the file" in meta["error"]  # decord alone never took them
    else:
        assert meta["error"] == reason


def test_an_animated_gif_and_a_one_frame_clip_are_videos(stills, video_dir):
    frames, meta = decode_all(DecodeJob(video_id="a", path=str(stills / "animated.mp4"), num_frames=4, resize=32,
                                        crop=32))
    assert frames.shape == (4, 32, 32, 3) and meta["n_frames_decoded"] == 5
    frames, meta = decode_all(DecodeJob(video_id="o", path=str(video_dir / "one_frame.mp4"), num_frames=4,
                                        resize=32, crop=32))
    assert frames.shape == (4, 32, 32, 3) and (frames == frames[0]).all()


def test_extract_records_a_picture_as_a_failed_video_and_finishes_the_others(stills, video_dir, small_cfg_kwargs,
                                                                           tmp_path):
    videos = pd.concat([table(video_dir, ["v0.mp4", "one_frame.mp4"]),
                        pd.DataFrame([{"video_id": "holiday", "path": str(stills / "png.mp4")}])], ignore_index=True)
    summary = run_extract(ExtractConfig(**small_cfg_kwargs, max_failure_fraction=1.0), videos, tmp_path / "out",
                          progress=False)
    rows = pd.read_parquet(tmp_path / "out" / "videos.parquet").set_index("video_id")
    assert rows.status.to_dict() == {"v0": "ok", "one_frame": "ok", "holiday": "failed"}
    assert rows.at["holiday", "error"] == "a still image (png), not a video" and pd.isna(rows.at["holiday", "shard"])
    assert (summary["ok"], summary["failed"]) == (2, 1)
    assert [f["video_id"] for f in summary["failures"]] == ["holiday"]
    logged = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [(r["video_id"], r["error"]) for r in logged] == [("holiday", "a still image (png), not a video")]
    assert sorted(FeatureStore(tmp_path / "out").ids()) == ["one_frame", "v0"]
