"""Edited copies of model bundles, for the tests of predict's checks on untrusted bundles."""

from __future__ import annotations

import json
from pathlib import Path


def rewrite_bundle(source: Path, target: Path, change) -> Path:
    """A copy of a bundle whose JSON description went through ``change(meta)`` (tensors untouched)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        meta = json.loads(handle.metadata()["vltr_bundle"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    change(meta)
    save_file(tensors, str(target), metadata={"vltr_bundle": json.dumps(meta)})
    return target
