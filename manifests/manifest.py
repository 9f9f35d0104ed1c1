"""The stage manifest: what a stage made, from which inputs, under which config.

A stage's output directory holds ``manifest.json`` plus the data it produced. The manifest is
written atomically and only when the stage finished; its presence with the same config hash,
the same input hashes and intact outputs means the stage is done (skip it). Paths inside the work
directory are relative to the manifest's directory, so a work directory can be moved or mounted
elsewhere; files outside it (datasets) are recorded with absolute paths.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from manifests.errors import UserError
from manifests.files import portable_path, sha256_file, sha256_json, write_json_atomic

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# The manifest of the last finished build, kept while a stage is being rebuilt (see retire_manifest).
PREVIOUS_MANIFEST_NAME = "manifest.previous.json"
# Outputs up to this size get a sha256 in the manifest ("where cheap"). Larger ones get a cheap but
# meaningful fingerprint: size, modification time and a sha256 of SAMPLE_BLOCKS evenly spaced blocks.
HASH_OUTPUTS_UP_TO_BYTES = 16 * 1024 * 1024
SAMPLE_BLOCKS = 32
SAMPLE_BLOCK_BYTES = 64 * 1024


def package_version() -> str:
    """The installed version of this product."""
    try:
        return metadata.version("vltr-pipeline")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class Manifest:
    """The contents of one ``manifest.json``."""

    stage: str
    config: dict
    config_hash: str
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    created_at: str = ""
    package_version: str = ""
    schema_version: int = SCHEMA_VERSION


@dataclass
class Freshness:
    """Whether a stage's manifest still describes its current inputs and config."""

    state: str  # "missing" | "fresh" | "stale"
    reasons: list = field(default_factory=list)

    @property
    def fresh(self) -> bool:
        return self.state == "fresh"


def config_hash(config: dict) -> str:
    """Hash of a stage's resolved config (canonical JSON)."""
    return sha256_json(config)


def input_records(stage_dir: Path, inputs: dict) -> dict:
    """``{name: {"path": portable path, "sha256": digest}}`` for input files ``{name: Path}``."""
    return {name: {"path": portable_path(path, stage_dir), "sha256": sha256_file(path)}
            for name, path in sorted(inputs.items())}


def build_manifest(stage: str, stage_dir: Path, config: dict, inputs: dict, outputs: list,
                   summary: dict) -> Manifest:
    """Describe a finished stage: hashes its inputs and outputs (outputs relative to stage_dir)."""
    stage_dir = Path(stage_dir)
    output_records = {name: output_record(stage_dir / name) for name in sorted(outputs)}
    return Manifest(
        stage=stage,
        config=config,
        config_hash=config_hash(config),
        inputs=input_records(stage_dir, inputs),
        outputs=output_records,
        summary=summary,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        package_version=package_version(),
    )


def output_record(path: Path) -> dict:
    """How a manifest remembers one output: size + sha256 when cheap, else size + mtime + sampled sha256."""
    stat = path.stat()
    if stat.st_size <= HASH_OUTPUTS_UP_TO_BYTES:
        return {"size": stat.st_size, "sha256": sha256_file(path)}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sampled_sha256": sampled_sha256(path)}


def sampled_sha256(path: Path) -> str:
    """sha256 of SAMPLE_BLOCKS blocks spread evenly over a file, the first and last included."""
    size = path.stat().st_size
    last = max(0, size - SAMPLE_BLOCK_BYTES)
    starts = sorted({round(i * last / (SAMPLE_BLOCKS - 1)) for i in range(SAMPLE_BLOCKS)})
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for start in starts:
            handle.seek(start)
            digest.update(handle.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


def output_change(path: Path, record: dict) -> str | None:
    """Why ``path`` no longer matches its manifest record (None when it does)."""
    if not isinstance(record, dict):
        return "output record unreadable"
    if not path.exists():
        return "output missing"
    stat = path.stat()
    if stat.st_size != record.get("size"):
        return "output changed on disk"
    if "sha256" in record:
        return None if sha256_file(path) == record["sha256"] else "output changed on disk"
    if "sampled_sha256" in record and sampled_sha256(path) != record["sampled_sha256"]:
        return "output changed on disk"
    if "mtime_ns" in record and stat.st_mtime_ns != record["mtime_ns"]:
        return "output modified on disk since the stage finished"
    return None


def retire_manifest(stage_dir: Path) -> None:
    """Before a stage is rebuilt: keep its manifest as ``manifest.previous.json`` (so the rebuild can
    tell which of the old outputs changed on disk, even after a crash) and remove ``manifest.json``."""
    current, previous = manifest_path(stage_dir), Path(stage_dir) / PREVIOUS_MANIFEST_NAME
    if current.exists():
        os.replace(current, previous)


def changed_outputs(stage_dir: Path) -> list[str]:
    """Outputs recorded by the last finished build of ``stage_dir`` that changed on disk since."""
    path = Path(stage_dir) / PREVIOUS_MANIFEST_NAME
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["outputs"]
        return sorted(name for name, record in records.items()
                      if (Path(stage_dir) / name).exists() and output_change(Path(stage_dir) / name, record))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def write_manifest(stage_dir: Path, manifest: Manifest) -> Path:
    """Write ``<stage_dir>/manifest.json`` atomically; returns its path."""
    path = Path(stage_dir) / MANIFEST_NAME
    write_json_atomic(path, asdict(manifest))
    return path


def manifest_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / MANIFEST_NAME


def read_manifest(stage_dir: Path) -> Manifest | None:
    """The manifest in ``stage_dir``, or None when the stage has not finished there."""
    path = manifest_path(stage_dir)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a valid manifest ({exc}); re-run the stage (it is rebuilt) or delete "
                        "the file") from exc
    wrong = [name for name, kind in MANIFEST_TYPES.items() if not isinstance(getattr(manifest, name), kind)]
    if wrong:
        raise UserError(f"{path} is not a valid manifest (wrong type of {', '.join(wrong)}); re-run the stage (it is "
                        "rebuilt) or delete the file")
    return manifest


MANIFEST_TYPES = {"stage": str, "config": dict, "config_hash": str, "inputs": dict, "outputs": dict, "summary": dict}


def freshness(stage_dir: Path, config: dict, inputs: dict) -> Freshness:
    """Compare the manifest in ``stage_dir`` with the current config and input files.

    ``inputs`` maps input names to the files they are now (e.g. upstream manifests). Stale
    reasons name what changed: config, an input's content, an input added/removed, or an
    output missing or changed on disk (see output_change).
    """
    stage_dir = Path(stage_dir)
    try:
        manifest = read_manifest(stage_dir)
    except UserError as exc:  # a damaged manifest certifies nothing: the stage is rebuilt
        return Freshness("stale", [f"manifest unreadable: {exc}"])
    if manifest is None:
        return Freshness("missing", ["not run yet"])
    reasons = []
    if manifest.schema_version != SCHEMA_VERSION:
        reasons.append(f"manifest schema {manifest.schema_version} != {SCHEMA_VERSION}")
    if manifest.config_hash != config_hash(config):
        changed = changed_keys(manifest.config, config)
        reasons.append("config changed" + (f" ({', '.join(changed)})" if changed else ""))
    for name in sorted(set(manifest.inputs) | set(inputs)):
        if name not in inputs:
            reasons.append(f"input {name!r} is gone")
        elif name not in manifest.inputs:
            reasons.append(f"new input {name!r}")
        elif not Path(inputs[name]).exists():
            reasons.append(f"input {name!r} missing: {inputs[name]}")
        elif sha256_file(inputs[name]) != manifest.inputs[name]["sha256"]:
            reasons.append(f"input {name!r} changed since this stage ran ({inputs[name]})")
    for name, record in manifest.outputs.items():
        change = output_change(stage_dir / name, record)
        if change:
            reasons.append(f"{change}: {name}")
    return Freshness("stale" if reasons else "fresh", reasons)


def changed_keys(old: dict, new: dict, prefix: str = "") -> list:
    """Dotted keys whose values differ between two nested config dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed
