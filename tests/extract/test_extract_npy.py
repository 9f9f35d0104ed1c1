"""source=npy: released per-video features are validated and imported into the same store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from extract.config import ExtractConfig
from extract.stage import run_extract
from extract.store import FeatureStore
from manifests.errors import StageFailed


@pytest.fixture()
def npy_dir(tmp_path):
    d = tmp_path / "npy"
    d.mkdir()
    rng = np.random.default_rng(0)
    good = {"a": rng.standard_normal((7, 16)).astype(np.float32),
            "b": rng.standard_normal((150, 16)).astype(np.float32),
            "c64": rng.standard_normal((3, 16)).astype(np.float64)}
    for k, v in good.items():
        np.save(d / f"{k}.npy", v)
    nan = rng.standard_normal((4, 16)).astype(np.float32)
    nan[1, 2] = np.nan
    np.save(d / "nan.npy", nan)
    inf = rng.standard_normal((4, 16)).astype(np.float32)
    inf[0, 0] = np.inf
    np.save(d / "inf.npy", inf)
    np.save(d / "wrongdim.npy", rng.standard_normal((5, 8)).astype(np.float32))
    np.save(d / "empty.npy", np.zeros((0, 16), np.float32))
    np.save(d / "ints.npy", np.ones((3, 16), np.int64))
    np.save(d / "flat.npy", np.ones(16, np.float32))
    np.save(d / "huge.npy", np.full((2, 16), 1e6, np.float32))  # overflows float16
    np.save(d / "pickled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (d / "extra_not_listed.npy").write_bytes(b"")
    return d, good


def test_npy_import_validates_every_file(npy_dir, tmp_path):
    d, good = npy_dir
    ids = ["a", "b", "c64", "nan", "inf", "wrongdim", "empty", "ints", "flat", "huge", "pickled", "missing"]
    df = pd.DataFrame({"video_id": ids, "path": [None] * len(ids)})
    cfg = ExtractConfig(source="npy", npy_dir=str(d), backbone="resnet101", max_failure_fraction=1.0)
    s = run_extract(cfg, df, tmp_path / "out", progress=False)
    assert s["ok"] == 3 and s["failed"] == 9 and s["feature_dim"] == 16
    store = FeatureStore(tmp_path / "out")
    assert sorted(store.ids()) == ["a", "b", "c64"]
    for k, v in good.items():
        got = store.get(k)
        assert got.dtype == np.float16 and got.shape == v.shape
        assert np.allclose(got.astype(np.float32), v, atol=2e-3)
        assert store.meta(k)["decoder"] == "npy"
        assert store.meta(k)["frame_indices"].tolist() == list(range(len(v)))
    vt = pd.read_parquet(tmp_path / "out" / "videos.parquet").set_index("video_id")
    err = vt["error"]
    assert "NaN" in err["nan"] and "Inf" in err["inf"]
    assert "feature dim 8 differs from 16" in err["wrongdim"]
    assert "empty" in err["empty"] and "not a float" in err["ints"] and "2-D" in err["flat"]
    assert "float16" in err["huge"] and "unreadable" in err["pickled"] and "missing file" in err["missing"]
    assert (vt.loc[["a", "b", "c64"], "decoder"] == "npy").all()
    rep = pd.read_csv(tmp_path / "out" / "npy_report.csv", keep_default_na=False).set_index("video_id")
    assert rep.loc["c64", "problem"] == "converted from float64" and rep.loc["nan", "status"] == "failed"
    assert len(rep) == len(ids)


def test_npy_import_failure_fraction(npy_dir, tmp_path):
    d, _ = npy_dir
    df = pd.DataFrame({"video_id": ["a", "nan", "inf"], "path": [None] * 3})
    with pytest.raises(StageFailed, match="2 of 3"):
        run_extract(ExtractConfig(source="npy", npy_dir=str(d)), df, tmp_path / "out", progress=False)


def test_npy_expected_dim_and_float32(npy_dir, tmp_path):
    d, good = npy_dir
    df = pd.DataFrame({"video_id": ["a", "wrongdim"], "path": [None] * 2})
    cfg = ExtractConfig(source="npy", npy_dir=str(d), npy_dim=8, dtype="float32", max_failure_fraction=1.0)
    s = run_extract(cfg, df, tmp_path / "out", progress=False)
    assert s["ok"] == 1 and FeatureStore(tmp_path / "out").get("wrongdim").dtype == np.float32
