"""Full-state checkpoints: written atomically, loaded safely, refused when made for another run."""

from __future__ import annotations

from pathlib import Path

import torch

from manifests.errors import UserError
from manifests.files import atomic_path
from manifests.manifest import changed_keys
from manifests.tables import BEST_CHECKPOINT as BEST, LAST_CHECKPOINT as LAST  # the stage contract's names

# How a difference in each identity field is described when a checkpoint is refused.
WHAT_DIFFERS = {"upstream": "the split or the features changed since it was written"}


def save(path: Path, state: dict) -> None:
    """Write a checkpoint atomically (a crash leaves the previous one intact)."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as handle:
                torch.save(state, handle)
        except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError
            raise UserError(f"cannot write checkpoint {path}: {str(exc).splitlines()[0]}; check free disk "
                            "space and permissions, then re-run (training resumes from the last checkpoint)") from None


def load(path: Path) -> dict:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, foreign or unsafe file: one line, never a traceback
        if "weights_only" in str(exc) or "Unsupported" in str(exc):
            why = "it holds objects other than tensors and plain values, refused"
        else:
            why = f"unreadable ({str(exc).splitlines()[0][:120]})"
        raise UserError(f"checkpoint {path}: {why}; delete it or re-run with --resume never") from None


def check_compatible(state: dict, identity: dict, path: Path) -> None:
    """Refuse a checkpoint whose run identity (config, upstream data, method, classes, feature dim)
    differs from this run's, naming what differs."""
    differences = []
    for key, value in identity.items():
        if key == "settings" or state.get(key) == value:
            continue
        if key == "config_hash" and isinstance(state.get("settings"), dict) and "settings" in identity:
            keys = changed_keys(state["settings"], identity["settings"])
            differences.append("config changed (" + ", ".join(
                f"{k}: {_lookup(state['settings'], k)!r} -> {_lookup(identity['settings'], k)!r}" for k in keys) + ")")
        else:
            differences.append(WHAT_DIFFERS.get(key, f"{key}: checkpoint {state.get(key)!r} vs now {value!r}"))
    if differences:
        raise UserError(f"checkpoint {path} belongs to another run ({'; '.join(differences)}); "
                        "re-run with --resume never (or --force) to start over, or restore the old config")


def _lookup(settings: dict, dotted: str):
    for part in dotted.split("."):
        settings = settings.get(part) if isinstance(settings, dict) else None
    return settings
