"""timm/<model> backbones and the backbone registry: names, preprocessing resolved by timm,
offline weights (safetensors / torch files, the Hugging Face cache), clear errors, and a real
extraction whose features equal an independent timm computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import save_file

from extract.config import ExtractConfig
from extract.encoder import encoder_from_config
from extract.registry import BACKBONES, create
from extract.stage import run_extract
from extract.store import FeatureStore
from extract_testutils import make_video, table
from manifests.errors import UserError
from manifests.files import sha256_file
from pipeline.config import validate


def _timm_state(name: str, seed: int, num_classes: int = 0) -> dict:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=num_classes).state_dict()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """Random timm resnet18 weights *with* its 1000-class head, saved as safetensors."""
    path = tmp_path_factory.mktemp("timm") / "resnet18.safetensors"
    save_file(_timm_state("resnet18", 3, num_classes=1000), str(path))
    return path


def test_unknown_names_list_the_registry_and_the_timm_form():
    for bad in ("vgg16", "timm/no_such_model", "timm/resnet50.no_such_tag"):
        with pytest.raises(ValidationError) as ei:
            ExtractConfig(backbone=bad)
        assert all(name in str(ei.value) for name in BACKBONES) and "timm/<any timm model name>" in str(ei.value)
    with pytest.raises(UserError) as ei:  # the pipeline's config validation, as the CLI reports it
        validate({"extract": {"backbone": "vgg16"}})
    assert "extract.backbone" in str(ei.value) and "efficientnet_lite0, resnet50, resnet101, tsm_r50" in str(ei.value)
    with pytest.raises(UserError, match="unknown backbone 'vgg16'.*tsm_r50"):
        create("vgg16", pretrained=False)
    with pytest.raises(ValidationError, match="crop_mode 'squash'"):
        ExtractConfig(backbone="timm/coat_lite_medium_384.in1k")


@pytest.mark.parametrize("model", ["resnet18", "mobilenetv3_small_050", "vit_tiny_patch16_224.augreg_in21k"])
def test_preprocessing_is_what_timm_resolves(model):
    dc = timm.data.resolve_data_config(model=timm.create_model(model, pretrained=False, num_classes=0))
    cfg = ExtractConfig(backbone=f"timm/{model}")
    pre = cfg.preprocessing()
    assert (pre.crop, pre.resize) == (dc["input_size"][-1], math.floor(dc["input_size"][-1] / dc["crop_pct"]))
    assert (pre.mean, pre.std, pre.interpolation) == (dc["mean"], dc["std"], dc["interpolation"])
    assert (cfg.resize, cfg.crop) == (pre.resize, pre.crop)  # resolved into the config (and its manifest)
    assert ExtractConfig(**cfg.model_dump()) == cfg
    assert ExtractConfig(backbone=f"timm/{model}", resize=300, crop=160).preprocessing().crop == 160
    # registered backbones keep torchvision's V1 transform
    assert ExtractConfig().preprocessing().to_dict() == {"resize": 256, "crop": 224, "interpolation": "bilinear",
                                                         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_decoder_preprocessing_equals_timm_eval_transform():
    from extract.decode import preprocess_array

    dc = timm.data.resolve_data_config(model=timm.create_model("resnet18", pretrained=False, num_classes=0))
    pre = ExtractConfig(backbone="timm/resnet18").preprocessing()
    img = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    ours = preprocess_array(img, pre.resize, pre.crop, pre.interpolation)
    x = (torch.tensor(ours).permute(2, 0, 1).float() / 255 - torch.tensor(pre.mean).view(3, 1, 1)) \
        / torch.tensor(pre.std).view(3, 1, 1)
    expect = timm.data.create_transform(**dc)(Image.fromarray(img))
    assert x.shape == expect.shape == (3, 224, 224) and torch.allclose(x, expect, atol=1e-5)


def test_weights_file_with_head_loads_and_dims_follow_the_model(resnet18_file, tmp_path):
    m = create("timm/resnet18", weights=str(resnet18_file))
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0)
    ref.load_state_dict({k: v for k, v in _timm_state("resnet18", 3, 1000).items() if not k.startswith("fc.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), ref.eval()(x), atol=1e-5)
    assert m.feature_dim == 512 and m.weights_id == "file:resnet18.safetensors" and len(m.weights_sha256) == 64
    # mobilenetv3's pooled features pass a conv head: 1024-d, not num_features (288)
    path = tmp_path / "mnv3.pth"
    torch.save(_timm_state("mobilenetv3_small_050", 4), path)
    m = create("timm/mobilenetv3_small_050", weights=str(path))
    with torch.no_grad():
        assert m.feature_dim == 1024 and m(x).shape == (2, 1024)


def test_bad_weights_give_clear_errors(resnet18_file, tmp_path):
    sd = _timm_state("resnet18", 5)
    sd["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(sd, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match=r"does not fit timm resnet18.*conv1.weight: file \(32, 3, 7, 7\) vs model "
                                        r"\(64, 3, 7, 7\)"):
        create("timm/resnet18", weights=str(tmp_path / "wrong.pth"))
    with pytest.raises(UserError, match="does not fit timm resnet34.*missing"):
        create("timm/resnet34", weights=str(resnet18_file))
    with pytest.raises(UserError, match="file not found"):
        create("timm/resnet18", weights=str(tmp_path / "absent.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read .*broken.safetensors as safetensors"):
        create("timm/resnet18", weights=str(tmp_path / "broken.safetensors"))


def test_pretrained_weights_come_from_the_hf_cache_or_the_error_names_the_repo(resnet18_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id  # the default tag's repo
    with pytest.raises(UserError, match=f"{repo}.*extract.weights"):
        create("timm/resnet18", download=False)
    snap = tmp_path / "hf" / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(resnet18_file.read_bytes())
    m = create("timm/resnet18", download=False)
    assert m.weights_id == "file:model.safetensors" and m.weights_sha256 == sha256_file(resnet18_file)


def test_encoder_normalises_with_the_models_mean_and_std():
    cfg = ExtractConfig(backbone="timm/vit_tiny_patch16_224.augreg_in21k", pretrained=False, device="cpu")
    enc = encoder_from_config(cfg, batch_size=3)
    assert enc.batch_size == 3 and enc.feature_dim == 192
    assert torch.allclose(enc.mean.flatten(), torch.full((3,), 0.5 * 255)) and enc.std.flatten().tolist() == [127.5] * 3


def _timm_reference(weights_path, path, indices):
    """Independent computation: decord frames, timm's own eval transform and model."""
    import decord
    from safetensors.torch import load_file

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model.load_state_dict({k: v for k, v in load_file(str(weights_path)).items() if not k.startswith("fc.")})
    frames = decord.VideoReader(str(path)).get_batch([int(i) for i in indices]).asnumpy()
    tf = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.no_grad():
        return model.eval()(torch.stack([tf(Image.fromarray(f)) for f in frames])).numpy()


def test_extract_with_a_timm_model_records_dims_and_preprocessing(resnet18_file, tmp_path):
    for i, n in enumerate((12, 20)):
        make_video(tmp_path / f"t{i}.mp4", width=160, height=120, frames=n, seed=20 + i)
    cfg = ExtractConfig(backbone="timm/resnet18", weights=str(resnet18_file), num_frames=4, batch_size=8,
                        dtype="float32", device="cpu")
    summary = run_extract(cfg, table(tmp_path, ["t0.mp4", "t1.mp4"]), tmp_path / "out", progress=False)
    dc = timm.data.resolve_data_config(model=timm.create_model("resnet18", pretrained=False, num_classes=0))
    assert summary["ok"] == 2 and summary["backbone"] == "timm/resnet18" and summary["feature_dim"] == 512
    assert summary["preprocessing"] == {"resize": 235, "crop": dc["input_size"][-1], "interpolation": dc["interpolation"],
                                        "mean": list(dc["mean"]), "std": list(dc["std"])}
    store = FeatureStore(tmp_path / "out")
    a = store.attrs
    assert a["feature_dim"] == 512 and a["transform"]["resize_short_side"] == 235
    assert a["transform"]["interpolation"].startswith("bicubic") and a["weights"] == "file:resnet18.safetensors"
    for vid in ("t0", "t1"):
        ours = store.get(vid)
        ref = _timm_reference(resnet18_file, tmp_path / f"{vid}.mp4", store.meta(vid)["frame_indices"])
        assert ours.shape == (4, 512)
        cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() > 0.9999, cos
