"""Index rule, decoders (decord / PyAV agree), preprocessing, killable workers."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from extract.decode import DecodeJob, DecodePool, decode_all, preprocess_array, resized_size
from extract.sampling import fixed_indices, fps_indices


# ---------------------------------------------------------------- index rule (REFERENCE.md 9)

def test_index_rule_n7_multiplicities():
    idx = fixed_indices(7, 150)
    assert len(idx) == 150
    assert np.bincount(idx, minlength=7).tolist() == [25, 25, 25, 25, 25, 24, 1]


def test_index_rule_n200_starts():
    idx = fixed_indices(200, 150)
    assert idx[:10].tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12]
    assert idx[-1] == 199 and (np.diff(idx) >= 0).all()


def test_index_rule_one_frame_and_exact():
    assert fixed_indices(1, 150).tolist() == [0] * 150
    assert fixed_indices(150, 150).tolist() == list(range(150))
    # truncation toward zero, not rounding: linspace(0, 9, 4) = 0, 3, 6, 9
    assert fixed_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert fixed_indices(10, 3).tolist() == [0, 4, 9]  # 4.5 -> 4


def test_fps_indices_variable_length():
    # 10 s at 30 fps, 1 frame per second -> 10 frames at 0, 30, ..., 270
    assert fps_indices(300, 30.0, 1.0).tolist() == list(range(0, 300, 30))
    # 2 frames/s of a 25 fps 3 s video
    assert fps_indices(75, 25.0, 2.0).tolist() == [0, 12, 25, 37, 50, 62]
    # shorter than one period: still one frame
    assert fps_indices(5, 25.0, 1.0).tolist() == [0]
    # a cap uses the fixed rule over the fps indices
    capped = fps_indices(3000, 30.0, 1.0, max_frames=10)
    assert len(capped) == 10 and capped[0] == 0 and capped[-1] == 2970


# ---------------------------------------------------------------- preprocessing

def test_resized_size_short_side():
    assert resized_size(96, 64, 72) == (108, 72)
    assert resized_size(48, 96, 72) == (72, 144)
    assert resized_size(7, 5, 256) == (358, 256)


def test_preprocess_matches_torchvision():
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (123, 211, 3), dtype=np.uint8)
    ours = preprocess_array(img, 72, 64)
    ref = np.asarray(T.Compose([T.Resize(72), T.CenterCrop(64)])(Image.fromarray(img)))
    assert ours.shape == (64, 64, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, ref)


# ---------------------------------------------------------------- decoders

def _job(path, decoder="auto", n=8, **kw):
    return DecodeJob(video_id="x", path=str(path), num_frames=n, resize=72, crop=64, decoder=decoder, **kw)


def test_decord_and_pyav_give_the_same_frames(video_dir):
    import decord

    fa, ma = decode_all(_job(video_dir / "v1.mp4", "decord", n=10))
    fb, mb = decode_all(_job(video_dir / "v1.mp4", "pyav", n=10))
    assert ma["decoder"] == "decord" and mb["decoder"] == "pyav"
    assert fa.shape == fb.shape == (10, 64, 64, 3)
    assert ma["frame_indices"].tolist() == mb["frame_indices"].tolist() == fixed_indices(33, 10).tolist()
    assert np.array_equal(fa, fb)
    # and the frames are the decoder's frames at those indices, preprocessed
    vr = decord.VideoReader(str(video_dir / "v1.mp4"))
    raw = vr.get_batch(ma["frame_indices"].tolist()).asnumpy()
    assert np.array_equal(fa[3], preprocess_array(raw[3], 72, 64))
    assert ma["n_frames_meta"] == 33 and ma["height"] == 64 and ma["width"] == 96
    assert np.allclose(ma["timestamps"][:2], [0.0, fixed_indices(33, 10)[1] / 25.0], atol=1e-3)


@pytest.mark.parametrize("name,frames", [("one_frame.mp4", 1), ("odd_7x5.mp4", 9), ("vfr.mp4", 30),
                                         ("tall.mp4", 10)])
def test_odd_videos_decode(video_dir, name, frames):
    f, m = decode_all(_job(video_dir / name, n=8))
    assert f is not None, m
    assert f.shape == (8, 64, 64, 3)
    assert m["frame_indices"].tolist() == fixed_indices(frames, 8).tolist()
    if frames == 1:
        assert (f == f[0]).all()  # one frame repeated T times


@pytest.mark.parametrize("name,reason", [
    ("missing.mp4", "file not found"), ("zero.mp4", "empty file"), ("text.mp4", "PyAV could not"),
    ("truncated.mp4", "PyAV could not"), ("audio_only.m4a", "no video stream")])
def test_bad_files_give_reasons(video_dir, name, reason):
    f, m = decode_all(_job(video_dir / name))
    assert f is None
    assert reason in m["error"], m["error"]


def test_no_path():
    f, m = decode_all(DecodeJob(video_id="x", path=None))
    assert f is None and "no video file" in m["error"]


def test_pyav_fallback_when_decord_fails(video_dir, tmp_path):
    # an MPEG-TS cut in the middle: whatever decord does, the result is frames (or a clear error),
    # and a PyAV-only decode re-derives the indices from the frames that really decode
    from extract_testutils import make_video

    p = make_video(tmp_path / "full.ts", frames=40, seed=3)
    data = open(p, "rb").read()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    f, m = decode_all(_job(cut, "pyav", n=8))
    assert f is not None, m
    assert f.shape == (8, 64, 64, 3)
    assert m["frame_indices"][-1] == m["n_frames_decoded"] - 1 or m["n_frames_decoded"] >= m["n_frames_meta"]


def test_pool_interleaves_and_matches_inline(video_dir):
    jobs = [_job(video_dir / f"v{i}.mp4") for i in range(3)]
    jobs = [DecodeJob(**{**j.__dict__, "video_id": f"v{i}"}) for i, j in enumerate(jobs)]
    got: dict = {}
    with DecodePool(num_workers=2, timeout_s=60) as pool:
        for job, ev in pool.imap(jobs):
            if ev[0] == "frames":
                got.setdefault(job.video_id, []).append(ev[1])
            elif ev[0] == "error":
                raise AssertionError(ev)
    for i in range(3):
        ref, _ = decode_all(jobs[i])
        assert np.array_equal(np.concatenate(got[f"v{i}"]), ref)


def test_hung_decoder_is_killed(tmp_path):
    # reading a FIFO with no writer blocks inside the decoder's open(): the pool must kill the
    # worker after the timeout, try PyAV, and finally report the video as failed - not hang
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    t0 = time.time()
    events = []
    with DecodePool(num_workers=1, timeout_s=1.5) as pool:
        for job, ev in pool.imap([_job(fifo)]):
            events.append(ev)
    assert time.time() - t0 < 30
    kinds = [e[0] for e in events]
    assert kinds[-1] == "error" and "no progress" in events[-1][1]
    assert "reset" in kinds  # decord timed out first, then PyAV was tried
