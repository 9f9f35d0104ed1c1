"""The Ray runner gives the same store as the in-process runner (one local Ray per module)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from extract.config import ExtractConfig
from extract.stage import run_extract
from extract.store import FeatureStore
from extract_testutils import table

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    # local_mode no longer exists: a one-node cluster, started once for the module
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=150 * 1024 * 1024,
             logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_and_inprocess_give_identical_features(ray_local, video_dir, small_cfg_kwargs, tmp_path):
    names = ["v0.mp4", "v1.mp4", "v2.mp4", "one_frame.mp4", "text.mp4"]
    df = table(video_dir, names)
    base = dict(small_cfg_kwargs, max_failure_fraction=0.5)
    s_in = run_extract(ExtractConfig(**base), df, tmp_path / "inproc", progress=False)
    s_ray = run_extract(ExtractConfig(**base, runner="ray"), df, tmp_path / "ray", progress=False)
    assert s_ray["runner"] == "ray" and ray.is_initialized()  # the module's Ray is left running
    assert s_in["ok"] == s_ray["ok"] == 4 and s_in["failed"] == s_ray["failed"] == 1
    a, b = FeatureStore(tmp_path / "inproc"), FeatureStore(tmp_path / "ray")
    assert sorted(a.ids()) == sorted(b.ids())
    for v in a.ids():
        assert np.array_equal(a.get(v), b.get(v)), v
        assert a.meta(v)["frame_indices"].tolist() == b.meta(v)["frame_indices"].tolist()
        assert a.meta(v)["decoder"] == b.meta(v)["decoder"]
    ta = pd.read_parquet(tmp_path / "inproc" / "videos.parquet")
    tb = pd.read_parquet(tmp_path / "ray" / "videos.parquet")
    assert ta.status.tolist() == tb.status.tolist()
    assert tb.set_index("video_id").loc["text", "error"] == ta.set_index("video_id").loc["text", "error"]
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]


def test_ray_resume_skips_done(ray_local, video_dir, small_cfg_kwargs, tmp_path):
    cfg = ExtractConfig(**small_cfg_kwargs, runner="ray")
    run_extract(cfg, table(video_dir, ["v0.mp4"]), tmp_path, progress=False)
    s = run_extract(cfg, table(video_dir, ["v0.mp4", "v4.mp4"]), tmp_path, progress=False)
    assert s["skipped_done"] == 1 and s["processed"] == 1 and s["ok"] == 2
