"""Weights files of the backbones: safe loading, strict fitting, the torch hub and Hugging Face caches.

torch is imported inside the functions (the family modules import this one at config-validation time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from manifests.errors import UserError
from manifests.files import sha256_file


def safe_load(path: str) -> dict:
    """torch.load with weights_only=True (numpy scalars allowed: old checkpoints store best_prec1 so)."""
    import numpy as np
    import torch

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


def strip_prefix(sd: dict, prefix: str) -> dict:
    """`sd` without `prefix` when every key starts with it (``module.`` of DataParallel checkpoints)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_strict(model, sd: dict, what: str, path: str) -> None:
    """Load `sd` into `model`; a UserError lists missing, unexpected and mis-shaped tensors."""
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


def hub_files(names: tuple[str, ...]) -> list[Path]:
    """Where the torch hub cache keeps checkpoints of these file names."""
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [hub / n for n in names]


def hf_cache_file(repo: str) -> Optional[Path]:
    """The weights file of a Hugging Face repo in the local cache, or None."""
    root = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    d = root / ("models--" + repo.replace("/", "--")) / "snapshots"
    if d.is_dir():
        for snap in sorted(d.iterdir()):
            for fn in ("pytorch_model.bin", "model.safetensors"):
                if (snap / fn).is_file():
                    return snap / fn
    return None


def load_any(path: Path) -> dict:
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
    return safe_load(str(path))


def identity(path: str | os.PathLike, weights_id: Optional[str] = None) -> tuple[str, str]:
    """(weights id, sha256) that the shards record of a weights file; the id defaults to ``file:<name>``."""
    return weights_id or f"file:{Path(path).name}", sha256_file(path)


def pooled(trunk, feature_dim: int, name: str, ident: Optional[tuple[str, str]] = None):
    """The frame model of a trunk that returns pooled features, with its weights identity
    (``random`` without one)."""
    from .trunk import PooledTrunk

    out = PooledTrunk(trunk, feature_dim, name)
    if ident:
        out.weights_id, out.weights_sha256 = ident
    return out
