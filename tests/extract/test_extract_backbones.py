"""Backbones: shapes, parameter counts, weight loading through `weights=`, the TSM mapping and shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from extract.backbones.tsm import temporal_shift, tsm_order
from extract.encoder import FrameEncoder
from extract.registry import create
from manifests.errors import UserError
from manifests.files import sha256_file


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    """Random torchvision-layout state dicts saved to files (no download possible here)."""
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for name in ("resnet50", "resnet101"):
        torch.manual_seed(1)
        m = getattr(torchvision.models, name)(weights=None)
        torch.save(m.state_dict(), d / f"{name}.pth")
        out[name] = (d / f"{name}.pth", m.eval())
    return out


def _tsm_official_checkpoint(path):
    """A checkpoint in the official TSM layout: DataParallel(TSN) keys, `.net.` in shifted convs."""
    torch.manual_seed(2)
    m = torchvision.models.resnet50(weights=None)
    sd = {}
    for k, v in m.state_dict().items():
        if k.startswith("fc."):
            continue
        k2 = k
        if ".conv1." in k and k.startswith("layer"):
            k2 = k.replace(".conv1.", ".conv1.net.")
        sd["module.base_model." + k2] = v
    sd["module.new_fc.weight"] = torch.randn(400, 2048)
    sd["module.new_fc.bias"] = torch.randn(400)
    torch.save({"epoch": 50, "arch": "resnet50", "state_dict": sd, "best_prec1": 71.2}, path)
    return m.eval()


@pytest.mark.parametrize("name,params", [("resnet50", 23_508_032), ("resnet101", 42_500_160)])
def test_resnet_loads_weights_file_and_returns_pooled_2048(tv_weights, name, params):
    path, ref = tv_weights[name]
    m = create(name, weights=str(path))
    assert m.feature_dim == 2048
    assert sum(p.numel() for p in m.parameters()) == params  # torchvision V1 layout without fc
    assert len(m.weights_sha256) == 64 and m.weights_id.endswith(".pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = m(x)
        ref_trunk = torch.nn.Sequential(*list(ref.children())[:-1])
        expect = ref_trunk(x).flatten(1)
    assert y.shape == (2, 2048)
    assert torch.allclose(y, expect, atol=1e-5)


def test_efficientnet_random_and_dims():
    m = create("efficientnet_lite0", pretrained=False)
    assert m.feature_dim == 1280 and m.weights_id == "random"
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1280)


def test_efficientnet_package_weights_are_mapped_in_order(reference_model):
    m = create("efficientnet_lite0")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), reference_model(x), atol=1e-5)


def test_missing_weights_error_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError) as ei:
        create("resnet50", download=False)
    msg = str(ei.value)
    assert "resnet50-0676ba61.pth" in msg and str(tmp_path / "hub") in msg and "extract.weights" in msg
    with pytest.raises(UserError, match="TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"):
        create("tsm_r50")
    with pytest.raises(UserError, match="unknown backbone"):
        create("vgg16", pretrained=False)


def test_resnet_weights_for_the_wrong_model_are_refused(tv_weights):
    with pytest.raises(UserError, match="does not fit"):
        create("resnet50", weights=str(tv_weights["resnet101"][0]))


def test_temporal_shift_by_hand():
    # N=1 clip, T=3 frames, C=8 channels (fold = 1), 1x1 spatial: value = 10*t + c
    x = torch.tensor([[10.0 * t + c for c in range(8)] for t in range(3)]).view(3, 8, 1, 1)
    y = temporal_shift(x, n_segment=3, fold_div=8).view(3, 8)
    expect = torch.tensor([
        [10, 0, 2, 3, 4, 5, 6, 7],   # ch0 from t+1; ch1 from t-1 (none: 0)
        [20, 1, 12, 13, 14, 15, 16, 17],
        [0, 11, 22, 23, 24, 25, 26, 27],  # ch0 from t+1 (none: 0)
    ], dtype=torch.float32)
    assert torch.equal(y, expect)


def test_tsm_official_checkpoint_loads_strictly_after_mapping(tmp_path):
    path = tmp_path / "TSM_kinetics.pth"
    ref = _tsm_official_checkpoint(path)
    m = create("tsm_r50", weights=str(path))
    assert m.feature_dim == 2048 and m.n_segment == 8
    assert sum(p.numel() for p in m.parameters()) == 23_508_032  # TSM adds no parameters
    # the weights are those of the checkpoint (conv1.net -> conv1)
    assert torch.equal(m.trunk.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    # 8 identical frames: every shift is either a copy of the same frame or a zero at the clip ends,
    # so the middle frames see fully-populated channels and equal the 2D network on one frame ...
    x1 = torch.randn(1, 3, 64, 64)
    x = x1.repeat(8, 1, 1, 1)
    with torch.no_grad():
        y = m(x)
        y2d = torch.nn.Sequential(*list(ref.children())[:-1])(x1).flatten(1)
    assert y.shape == (8, 2048)
    # ... not exactly (zeros enter at t=0/7 and propagate), but the shift must change something
    assert not torch.allclose(y[0], y2d[0], atol=1e-4)
    # frames of different clips do not interact
    x2 = torch.cat([x, torch.randn(8, 3, 64, 64)])
    with torch.no_grad():
        y2 = m(x2)
    assert torch.allclose(y2[:8], y, atol=1e-4)


def test_tsm_missing_shift_keys_are_refused(tmp_path, tv_weights):
    # a plain ResNet-50 file is not the official TSM layout: after mapping it still loads, but a
    # checkpoint with shifted convs in only some blocks (other placement) must be refused
    path = tmp_path / "bad_tsm.pth"
    sd = {"module.base_model." + k.replace("layer1.0.conv1.", "layer1.0.conv1.net."): v
          for k, v in torch.load(tv_weights["resnet50"][0], weights_only=True).items() if not k.startswith("fc.")}
    torch.save(sd, path)
    with pytest.raises(UserError, match="16"):
        create("tsm_r50", weights=str(path))


def test_tsm_grouping_orders():
    # 10 frames padded to 16: interleaved clips {0,2,4,...,14} and {1,3,...,15}
    o = tsm_order(10, 8, "interleaved")
    assert o.tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]
    assert tsm_order(10, 8, "consecutive").tolist() == list(range(16))
    o150 = tsm_order(150, 8, "interleaved")
    assert len(o150) == 152 and o150[:8].tolist() == [0, 19, 38, 57, 76, 95, 114, 133]


def test_tsm_encoder_video_equals_manual_grouping(tmp_path):
    path = tmp_path / "tsm.pth"
    _tsm_official_checkpoint(path)
    enc = FrameEncoder("tsm_r50", str(path), device="cpu", batch_size=8)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    feats = enc.embed_video(frames)
    assert feats.shape == (10, 2048)
    # manual: pad to 16 with the last frame, clip 0 = slots 0,2,..,14 and clip 1 = 1,3,...,15
    padded = np.concatenate([frames, np.repeat(frames[-1:], 6, axis=0)])
    c0 = enc.embed_batch(padded[0::2])
    c1 = enc.embed_batch(padded[1::2])
    manual = np.zeros((16, 2048), np.float32)
    manual[0::2], manual[1::2] = c0, c1
    assert np.allclose(feats, manual[:10], atol=1e-4)
    assert enc.describe()["tsm"]["grouping"] == "interleaved"


def test_stage_with_tsm_records_grouping(video_dir, small_cfg_kwargs, tmp_path):
    from extract.config import ExtractConfig
    from extract.stage import run_extract
    from extract.store import FeatureStore
    from extract_testutils import table

    path = tmp_path / "tsm.pth"
    _tsm_official_checkpoint(path)
    cfg = ExtractConfig(**{**small_cfg_kwargs, "backbone": "tsm_r50", "weights": str(path), "num_frames": 10})
    s = run_extract(cfg, table(video_dir, ["v0.mp4"]), tmp_path / "out", progress=False)
    assert s["feature_dim"] == 2048
    st = FeatureStore(tmp_path / "out")
    assert st.get("v0").shape == (10, 2048)
    assert st.attrs["tsm"] == {"n_segment": 8, "fold_div": 8, "grouping": "interleaved", "pad": "repeat last frame",
                               "shift_place": "blockres (conv1 input of every bottleneck)"}
    assert st.attrs["weights_sha256"] == sha256_file(path)
