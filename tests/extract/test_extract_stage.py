"""run_extract end to end (in-process runner): features, videos.parquet, faults, resume, repair."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from extract.config import ExtractConfig
from extract.stage import run_extract
from extract.store import CorruptShardError, FeatureStore
from extract_testutils import table
from manifests.errors import StageFailed, UserError


def _cfg(kw, **more):
    return ExtractConfig(**{**kw, **more})


def _reference_features(model, path, n_frames, resize, crop):
    """Independent computation: decord frames at int(linspace) indices, torchvision transforms, timm."""
    import decord
    from torchvision import transforms as T

    vr = decord.VideoReader(str(path))
    idx = np.linspace(0, len(vr) - 1, n_frames).astype(np.int32)
    frames = vr.get_batch(idx.tolist()).asnumpy()
    tf = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    x = torch.stack([tf(Image.fromarray(f)) for f in frames])
    with torch.no_grad():
        return model(x).numpy(), idx


def test_features_match_independent_computation(video_dir, small_cfg_kwargs, reference_model, tmp_path):
    cfg = _cfg(small_cfg_kwargs)
    summary = run_extract(cfg, table(video_dir, ["v0.mp4", "v1.mp4", "v2.mp4"]), tmp_path, progress=False)
    assert summary["ok"] == 3 and summary["failed"] == 0 and summary["feature_dim"] == 1280
    json.dumps(summary)  # JSON-serialisable
    store = FeatureStore(tmp_path)
    for vid in ("v0", "v1", "v2"):
        ours = store.get(vid).astype(np.float32)
        ref, idx = _reference_features(reference_model, video_dir / f"{vid}.mp4", 8, 72, 64)
        assert ours.shape == (8, 1280) and store.get(vid).dtype == np.float16
        cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() >= 0.98, cos
        meta = store.meta(vid)
        assert meta["frame_indices"].tolist() == idx.tolist()
        assert meta["decoder"] == "decord"
    a = store.attrs
    assert a["backbone"] == "efficientnet_lite0" and a["feature_dim"] == 1280 and a["dtype"] == "float16"
    assert len(a["weights_sha256"]) == 64 and "package" in a["weights"]
    assert a["transform"]["resize_short_side"] == 72 and a["transform"]["center_crop"] == 64
    assert a["sampling"]["mode"] == "fixed" and a["sampling"]["num_frames"] == 8
    assert "torch" in a["versions"] and "decord" in a["versions"]


def test_reliability_rows_recorded(video_dir, small_cfg_kwargs, tmp_path):
    names = ["v0.mp4", "one_frame.mp4", "odd_7x5.mp4", "vfr.mp4", "zero.mp4", "text.mp4", "truncated.mp4",
             "audio_only.m4a"]
    df = table(video_dir, names)
    df = pd.concat([df, pd.DataFrame([{"video_id": "missing", "path": str(video_dir / "missing.mp4")},
                                      {"video_id": "nopath", "path": None}])], ignore_index=True)
    cfg = _cfg(small_cfg_kwargs, max_failure_fraction=1.0)
    summary = run_extract(cfg, df, tmp_path, progress=False)
    vt = pd.read_parquet(tmp_path / "videos.parquet")
    assert list(vt.columns) == ["video_id", "status", "num_frames", "shard", "decoder", "error"]
    assert vt["video_id"].tolist() == df["video_id"].tolist()
    st = dict(zip(vt.video_id, vt.status))
    err = dict(zip(vt.video_id, vt.error))
    for ok in ("v0", "one_frame", "odd_7x5", "vfr"):
        assert st[ok] == "ok", err[ok]
    expect = {"zero": "empty file", "text": "could not", "truncated": "could not", "audio_only": "no video stream",
              "missing": "file not found", "nopath": "no video file"}
    for vid, why in expect.items():
        assert st[vid] == "failed" and why in err[vid], (vid, err[vid])
    assert summary["ok"] == 4 and summary["failed"] == 6
    assert {f["video_id"] for f in summary["failures"]} == set(expect)
    ok_rows = vt[vt.status == "ok"]
    assert (ok_rows.num_frames == 8).all() and ok_rows.shard.notna().all() and (ok_rows.decoder == "decord").all()
    assert vt[vt.status == "failed"].shard.isna().all()
    store = FeatureStore(tmp_path)
    assert sorted(store.ids()) == sorted(["v0", "one_frame", "odd_7x5", "vfr"])
    one = store.get("one_frame")
    assert np.array_equal(one, np.repeat(one[:1], 8, axis=0))  # 1 frame repeated
    assert store.meta("odd_7x5")["width"] == 7 and store.meta("odd_7x5")["height"] == 5


def test_failure_fraction_fails_the_stage_after_writing_the_table(video_dir, small_cfg_kwargs, tmp_path):
    df = table(video_dir, ["v0.mp4", "zero.mp4", "text.mp4"])
    with pytest.raises(StageFailed) as ei:
        run_extract(_cfg(small_cfg_kwargs, max_failure_fraction=0.5), df, tmp_path, progress=False)
    msg = str(ei.value)
    assert "2 of 3 videos failed" in msg and "videos.parquet" in msg and "--retry-failed" in msg
    vt = pd.read_parquet(tmp_path / "videos.parquet")
    assert vt.status.tolist() == ["ok", "failed", "failed"]


def test_resume_skips_done_and_retry_failed(video_dir, small_cfg_kwargs, tmp_path):
    work = tmp_path / "vids"
    work.mkdir()
    for n in ("v0.mp4", "v1.mp4", "v2.mp4"):
        shutil.copy(video_dir / n, work / n)
    cfg = _cfg(small_cfg_kwargs, max_failure_fraction=1.0)
    s1 = run_extract(cfg, table(work, ["v0.mp4", "v1.mp4"]), tmp_path / "out", progress=False)
    assert s1["new_ok"] == 2
    shard_files = sorted((tmp_path / "out").glob("shard-*.h5"))
    mtimes = [p.stat().st_mtime_ns for p in shard_files]
    before = FeatureStore(tmp_path / "out").get("v0")
    # v3 does not exist yet -> fails; v0, v1 are skipped
    s2 = run_extract(cfg, table(work, ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]), tmp_path / "out", progress=False)
    assert s2["skipped_done"] == 2 and s2["processed"] == 2 and s2["new_ok"] == 1 and s2["new_failed"] == 1
    assert [p.stat().st_mtime_ns for p in shard_files] == mtimes  # finished shards untouched
    assert np.array_equal(FeatureStore(tmp_path / "out").get("v0"), before)
    # the failed video is not retried by default ...
    shutil.copy(video_dir / "v3.mp4", work / "v3.mp4")
    s3 = run_extract(cfg, table(work, ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]), tmp_path / "out", progress=False)
    assert s3["processed"] == 0 and s3["skipped_failed"] == 1 and s3["failed"] == 1
    # ... but is with retry_failed
    s4 = run_extract(cfg, table(work, ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]), tmp_path / "out",
                     retry_failed=True, progress=False)
    assert s4["processed"] == 1 and s4["ok"] == 4 and s4["failed"] == 0
    vt = pd.read_parquet(tmp_path / "out" / "videos.parquet")
    assert (vt.status == "ok").all() and vt.error.isna().all()
    store = FeatureStore(tmp_path / "out")
    assert len(store) == 4 and not store.duplicates


def test_corrupted_shard_detected_and_repaired(video_dir, small_cfg_kwargs, tmp_path):
    cfg = _cfg(small_cfg_kwargs)
    df = table(video_dir, ["v0.mp4", "v1.mp4", "v2.mp4"])
    run_extract(cfg, df, tmp_path, progress=False)
    store = FeatureStore(tmp_path)
    ref = {v: store.get(v) for v in store.ids()}
    shard = sorted(tmp_path.glob("shard-*.h5"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated on disk
    with pytest.raises(CorruptShardError) as ei:
        FeatureStore(tmp_path)
    assert shard.name in str(ei.value)
    with pytest.raises(UserError) as ei:
        run_extract(cfg, df, tmp_path, progress=False)
    assert shard.name in str(ei.value) and "--repair" in str(ei.value)
    s = run_extract(cfg, df, tmp_path, repair=True, progress=False)
    assert s["ok"] == 3 and s["processed"] == 2
    assert (tmp_path / "corrupt").is_dir()
    store = FeatureStore(tmp_path)
    for v, a in ref.items():
        assert np.array_equal(store.get(v), a)


def test_bit_flip_found_by_deep_verify(video_dir, small_cfg_kwargs, tmp_path):
    run_extract(_cfg(small_cfg_kwargs), table(video_dir, ["v0.mp4"]), tmp_path, progress=False)
    shard = sorted(tmp_path.glob("shard-*.h5"))[0]
    store = FeatureStore(tmp_path)
    off = store.shards[0].feat_offset
    with open(shard, "r+b") as f:
        f.seek(off + 100)
        b = f.read(1)
        f.seek(off + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    problems = FeatureStore(tmp_path).verify(deep=True)
    assert problems and problems[0][0] == shard.name and "checksum" in problems[0][1]


def test_partial_files_are_never_read(video_dir, small_cfg_kwargs, tmp_path):
    run_extract(_cfg(small_cfg_kwargs), table(video_dir, ["v0.mp4"]), tmp_path, progress=False)
    (tmp_path / "shard-00007.h5.partial").write_bytes(b"garbage")
    (tmp_path / "shard-00007.bin.partial").write_bytes(b"garbage")
    assert FeatureStore(tmp_path).ids() == ["v0"]
    run_extract(_cfg(small_cfg_kwargs), table(video_dir, ["v0.mp4"]), tmp_path, progress=False)
    assert not list(tmp_path.glob("*.partial"))  # leftovers of a killed writer are removed


def test_fps_sampling_variable_length(video_dir, small_cfg_kwargs, tmp_path):
    cfg = _cfg(small_cfg_kwargs, sampling="fps", fps=5.0)
    run_extract(cfg, table(video_dir, ["v2.mp4", "v3.mp4"]), tmp_path, progress=False)
    store = FeatureStore(tmp_path)
    # 12 frames at 25 fps = 0.48 s -> 3 frames; 40 frames = 1.6 s -> 8 frames (every 5th frame)
    assert store.num_frames("v2") == 3 and store.num_frames("v3") == 8
    assert store.meta("v3")["frame_indices"].tolist() == [0, 5, 10, 15, 20, 25, 30, 35]
    assert store.attrs["sampling"]["mode"] == "fps"


def test_other_settings_in_the_same_directory_are_refused(video_dir, small_cfg_kwargs, tmp_path):
    run_extract(_cfg(small_cfg_kwargs), table(video_dir, ["v0.mp4"]), tmp_path, progress=False)
    with pytest.raises(UserError, match="other settings"):
        run_extract(_cfg(small_cfg_kwargs, num_frames=4), table(video_dir, ["v0.mp4"]), tmp_path, progress=False)


def test_user_errors(video_dir, small_cfg_kwargs, tmp_path):
    df = table(video_dir, ["v0.mp4"])
    with pytest.raises(UserError, match="file not found"):
        run_extract(_cfg(small_cfg_kwargs, weights=str(tmp_path / "nope.pth")), df, tmp_path / "a", progress=False)
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(3)}, bad)
    with pytest.raises(UserError, match="does not fit|tensors"):
        run_extract(_cfg(small_cfg_kwargs, weights=str(bad)), df, tmp_path / "b", progress=False)
    with pytest.raises(UserError, match="npy_dir"):
        run_extract(_cfg(small_cfg_kwargs, source="npy", npy_dir=str(tmp_path / "none")), df, tmp_path / "c",
                    progress=False)
    with pytest.raises(UserError, match="duplicate"):
        run_extract(_cfg(small_cfg_kwargs), pd.concat([df, df]), tmp_path / "d", progress=False)
    with pytest.raises(UserError, match="file name"):
        run_extract(_cfg(small_cfg_kwargs), pd.DataFrame({"video_id": ["a/b"], "path": ["x"]}), tmp_path / "e",
                    progress=False)
    with pytest.raises(ValidationError) as ei:
        ExtractConfig(backbone="resnet18")
    assert "efficientnet_lite0" in str(ei.value) and "tsm_r50" in str(ei.value)
    with pytest.raises(ValidationError, match="extra"):
        ExtractConfig(num_frame=3)
    with pytest.raises(ValidationError, match="cuda:N"):
        ExtractConfig(device="gpu")


def test_empty_input(small_cfg_kwargs, tmp_path):
    s = run_extract(_cfg(small_cfg_kwargs), pd.DataFrame({"video_id": [], "path": []}), tmp_path, progress=False)
    assert s["videos"] == 0 and s["failure_fraction"] == 0
    assert len(pd.read_parquet(tmp_path / "videos.parquet")) == 0
