"""torchvision ImageNet models in the V1 weights layout: ResNet-50 and ResNet-101 without fc."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from manifests.errors import UserError

from . import TORCHVISION_V1, BackboneSpec
from .weights import hf_cache_file, hub_files, identity, load_any, load_strict, pooled, strip_prefix

# torchvision ImageNet V1 files (the newer name is a re-serialisation of the legacy one)
TV_FILES = {
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-5d3b4d8f.pth"),
}
TV_URLS = {
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def find_tv_weights(name: str, download: bool) -> Path:
    """The V1 weights of `name` in the torch hub or Hugging Face cache, else downloaded (when allowed);
    a UserError names the file to provide."""
    for p in hub_files(TV_FILES[name]):
        if p.is_file():
            return p
    hf = hf_cache_file(f"timm/{name}.tv_in1k")
    if hf is not None:
        return hf
    if download:
        import torch

        dst = hub_files(TV_FILES[name])[0]
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(TV_URLS[name], str(dst), progress=False)
            return dst
        except Exception:
            if dst.exists():
                dst.unlink()
    raise UserError(
        f"no ImageNet weights for {name}: put the torchvision V1 file {TV_FILES[name][0]} "
        f"({TV_URLS[name]}) into {hub_files(TV_FILES[name])[0].parent}/, or set "
        f"extract.weights=/path/to/{TV_FILES[name][0]} (random weights: extract.pretrained=false, tests only)")


def build_torchvision_resnet(spec: BackboneSpec, weights: Optional[str], pretrained: bool, download: bool):
    """torchvision ResNet-50/101 (V1 layout) without fc."""
    import torchvision
    from torch import nn

    name = spec.name
    m = getattr(torchvision.models, name)(weights=None)
    ident = None
    if weights is not None or pretrained:
        path = Path(weights) if weights is not None else find_tv_weights(name, download)
        sd = load_any(path)
        sd = strip_prefix(strip_prefix(sd, "module."), "model.")
        if "fc.weight" not in sd:
            m.fc = nn.Identity()
        elif tuple(sd["fc.weight"].shape) != tuple(m.fc.weight.shape):
            m.fc = nn.Linear(sd["fc.weight"].shape[1], sd["fc.weight"].shape[0])
        load_strict(m, sd, f"torchvision {name}", str(path))
        ident = identity(path)
    m.fc = nn.Identity()
    return pooled(m, spec.feature_dim, name, ident)


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    BackboneSpec("resnet50", build_torchvision_resnet, 2048, TORCHVISION_V1),  # torchvision ImageNet V1 layout
    BackboneSpec("resnet101", build_torchvision_resnet, 2048, TORCHVISION_V1),
)}
