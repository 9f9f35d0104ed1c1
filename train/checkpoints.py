"""Full-state checkpoints: written atomically, loaded safely, refused when made for another run."""

from __future__ import annotations

from pathlib import Path

import torch

from manifests.errors import UserError
from manifests.files import atomic_path

LAST = "last.pt"
BEST = "best.pt"


def save(path: Path, state: dict) -> None:
    """Write a checkpoint atomically (a crash leaves the previous one intact)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: Path) -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, never a bare traceback
        raise UserError(f"cannot read checkpoint {path}: {exc}; delete it to start over") from exc


def check_compatible(state: dict, identity: dict, path: Path) -> None:
    """Refuse a checkpoint whose run identity (config hash, method, classes, feature dim) differs."""
    differences = [f"{key}: checkpoint {state.get(key)!r} vs now {value!r}"
                   for key, value in identity.items() if state.get(key) != value]
    if differences:
        raise UserError(f"checkpoint {path} belongs to another run ({'; '.join(differences)}); "
                        "re-run with --resume never (or --force) to start over, or restore the old config")
