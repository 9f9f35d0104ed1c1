"""FeatureStore read API and the bench functions (tiny sizes; benchmarks never assert on time)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from extract.store import FeatureStore, ShardWriter


def _make_store(d, lengths, dim=8, per_shard=2):
    rng = np.random.default_rng(0)
    data = {}
    w = None
    for i, n in enumerate(lengths):
        vid = f"v{i}"
        x = rng.standard_normal((n, dim)).astype(np.float32)
        data[vid] = x
        if w is None:
            w = ShardWriter(d, f"shard-{i // per_shard:05d}.h5", dim, "float16", {"backbone": "synthetic"})
        w.add(vid, x, {"decoder": "synthetic", "frame_indices": np.arange(n) * 2})
        if len(w) == per_shard:
            w.close()
            w = None
    if w is not None:
        w.close()
    return data


def test_store_reads(tmp_path):
    data = _make_store(tmp_path, [3, 1, 7, 5, 2])
    st = FeatureStore(tmp_path)
    assert len(st) == 5 and "v2" in st and "zz" not in st and st.feature_dim == 8
    assert len(st.shards) == 3
    for v, x in data.items():
        assert np.array_equal(st.get(v), x.astype(np.float16))
        assert st.num_frames(v) == len(x)
    assert np.array_equal(st.get("v2", [0, 6, 6]), data["v2"][[0, 6, 6]].astype(np.float16))
    assert st.meta("v2")["frame_indices"].tolist() == [0, 2, 4, 6, 8, 10, 12]
    many = st.get_many(["v3", "v0"])
    assert [len(m) for m in many] == [5, 3]
    packed, offs = st.load_packed(["v4", "v2"])
    assert offs.tolist() == [0, 2, 9] and np.array_equal(packed[2:9], data["v2"].astype(np.float16))
    b = st.sample_batch(["v0", "v2", "v1"], 60, np.random.default_rng(1))
    assert b.shape == (3, 60, 8) and b.dtype == np.float16
    assert (b[2] == data["v1"][0].astype(np.float16)).all()  # 1-frame video: the one row repeated
    for row in b[1]:  # every sampled row is a row of v2
        assert any(np.array_equal(row, r) for r in data["v2"].astype(np.float16))
    rb = st.rows_batch(["v0", "v2"], [[0, 1, 2], [6, 5, 4]], dtype=np.float32)
    assert np.allclose(rb[1], data["v2"][[6, 5, 4]], atol=1e-2)
    with pytest.raises(KeyError, match="not in the feature store"):
        st.get("nope")
    import pickle
    st2 = pickle.loads(pickle.dumps(st))  # DataLoader workers
    assert np.array_equal(st2.get("v3"), st.get("v3"))
    assert st.verify(deep=True) == []


def test_writer_refuses_nan(tmp_path):
    w = ShardWriter(tmp_path, "shard-00000.h5", 4)
    with pytest.raises(ValueError, match="NaN"):
        w.add("x", np.array([[0, np.nan, 0, 0]], np.float32), {})
    w.abort()
    assert not list(tmp_path.iterdir())


def test_bench_store_small(tmp_path):
    from pipeline.bench.extract_bench import bench_store

    r = bench_store(str(tmp_path), num_videos=12, frames=20, dim=16, batch_videos=4, sample_frames=6, batches=2,
                    repeats=3)
    json.dumps(r)
    assert r["disk_ratio"] < 0.6 and len(r["seconds"]["store_warm"]["runs"]) == 3


@pytest.mark.slow
def test_bench_extract_small(tmp_path):
    from pipeline.bench.extract_bench import bench_extract

    r = bench_extract(str(tmp_path), num_videos=2, seconds=1.0, width=96, height=64, num_frames=4, resize=72, crop=64,
                      repeats=3, long_seconds=(1.0, 2.0), long_size=(128, 96))
    json.dumps(r)
    assert r["decode_fps"] > 0 and r["vs_jpeg_route"] > 0 and "peak_rss_mb" in r
