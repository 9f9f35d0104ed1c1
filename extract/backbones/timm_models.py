"""``timm/<model>``: any model timm knows, headless (pooled pre-logits features), with the eval
preprocessing `timm.data.resolve_data_config` gives for it. The prefix keeps timm's ``resnet50``
apart from the registered (torchvision) ``resnet50``."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional

from manifests.errors import UserError

from . import INTERPOLATIONS, BackboneError, BackboneSpec, Preprocessing
from .weights import hf_cache_file, hub_files, identity, load_any, load_strict, pooled, strip_prefix

TIMM_PREFIX = "timm/"


def timm_data_config(name: str) -> Optional[dict]:
    """``timm.data.resolve_data_config`` of a timm model name (with its pretrained tag, if any);
    None for a name timm does not know."""
    import timm
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name) if timm.is_model(name) else None
    except RuntimeError:  # a known architecture with an unknown pretrained tag
        cfg = None
    return None if cfg is None else resolve_data_config(pretrained_cfg=cfg.to_dict())


@functools.lru_cache(maxsize=None)  # asked per video (make_job); fixed for a timm version
def timm_preprocessing(name: str) -> Optional[Preprocessing]:
    """Our preprocessing for a timm model: timm's eval transform (resize the short side to
    floor(size / crop_pct), centre crop `size`) for square inputs and crop_mode 'center'; None for
    a name timm does not know."""
    dc = timm_data_config(name)
    if dc is None:
        return None
    _, h, w = dc["input_size"]
    mode = dc.get("crop_mode") or "center"
    if h != w or mode != "center" or dc["interpolation"] not in INTERPOLATIONS:
        raise BackboneError(
            f"timm model {name!r} wants input {h}x{w}, crop_mode {mode!r}, interpolation "
            f"{dc['interpolation']!r}; extract supports square inputs, crop_mode 'center' and "
            f"{', '.join(INTERPOLATIONS)}; choose another model")
    return Preprocessing(resize=math.floor(h / dc["crop_pct"]), crop=h, interpolation=dc["interpolation"],
                         mean=tuple(float(v) for v in dc["mean"]), std=tuple(float(v) for v in dc["std"]))


def timm_backbone(name: str, valid_names: str) -> BackboneSpec:
    """The backbone ``timm/<model>``; an unknown model is a BackboneError that lists `valid_names`."""
    model = name[len(TIMM_PREFIX):]
    pre = timm_preprocessing(model)
    if pre is None:
        raise BackboneError(f"unknown timm model {model!r} (see timm.list_models()); use {valid_names}")
    return BackboneSpec(name, build_timm, None, pre)


def find_timm_weights(name: str, download: bool) -> Path:
    """The pretrained file of a timm model in the Hugging Face or torch hub cache (or downloaded)."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    repo, url = pcfg.hf_hub_id, pcfg.url
    found = hf_cache_file(repo) if repo else None
    if found is None and url:
        cand = hub_files((url.rsplit("/", 1)[-1],))[0]
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


def _drop_classifier(model, sd: dict) -> dict:
    """A timm checkpoint without the classifier tensors the headless model (num_classes=0) lacks."""
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = model.state_dict()
    return {k: v for k, v in sd.items() if k in own or not any(k.startswith(h + ".") for h in heads)}


def build_timm(spec: BackboneSpec, weights: Optional[str], pretrained: bool, download: bool):
    """``timm/<model>``: any timm model, headless (num_classes=0: pooled pre-logits features)."""
    import timm

    model = spec.name[len(TIMM_PREFIX):]
    m = timm.create_model(model, pretrained=False, num_classes=0)
    ident = None
    if weights is not None or pretrained:
        path = Path(weights) if weights is not None else find_timm_weights(model, download)
        sd = _drop_classifier(m, strip_prefix(load_any(path), "module."))
        load_strict(m, sd, f"timm {model}", str(path))
        ident = identity(path)
    dim = getattr(m, "head_hidden_size", None) or m.num_features
    return pooled(m, int(dim), spec.name, ident)
