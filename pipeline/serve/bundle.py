"""A trained model as one self-contained file, and the same description built from a work dir.

A :class:`ModelBundle` is everything prediction needs: the head's weights, the method and its
settings, the class names, counts, groups and calibrated per-class thresholds (each class's best
validation F1; :data:`FALLBACK_THRESHOLD` without validation positives; kept per checkpoint in
``train/<run>/thresholds.json``), and how the features were made. :func:`bundle_from_run` builds it
from ``<work_dir>/train/<run>/``; :func:`save_bundle` / :func:`load_bundle` write and read it as a
safetensors file (tensors plus a JSON header, no pickled code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from manifests import tables
from manifests.errors import UserError
from manifests.files import atomic_path, sha256_file, write_json_atomic
from manifests.manifest import package_version, read_manifest
from pipeline.serve.bundle_check import check_bundle

FORMAT = "vltr-model-bundle"
SCHEMA_VERSION = 1
META_KEY = "vltr_bundle"  # the safetensors metadata entry that holds the JSON description
MODEL_PREFIX = "model."
THRESHOLDS_FILE = "thresholds.json"
FALLBACK_THRESHOLD = 0.5  # classes without validation positives


@dataclass
class ModelBundle:
    """A trained head and its description (``meta``, JSON-ready); ``state`` is its state dict."""

    meta: dict
    state: dict

    @property
    def class_names(self) -> list:
        return self.meta["classes"]["names"]

    @property
    def thresholds(self) -> list | None:
        """Per-class validation-F1 thresholds, or None when they were not calibrated."""
        return self.meta["thresholds"]["values"]

    def build_model(self):
        """The head in eval mode on the CPU, with the bundle's weights."""
        from train import methods
        from train.run_settings import RunSettings

        run = RunSettings.from_dict(self.meta["settings"])
        recipe = methods.build(self.meta["method"], run.train, self.meta["feature_dim"],
                               len(self.class_names), np.asarray(self.meta["classes"]["train_counts"]), run.sections)
        try:
            recipe.model.load_state_dict(self.state)
        except RuntimeError as exc:
            raise UserError(f"the model weights do not fit the {self.meta['method']} head described with them "
                            f"({str(exc).splitlines()[0][:200]})") from None
        return recipe.model.eval()


def train_config(settings: dict):
    """The :class:`train.config.TrainConfig` of a train run's recorded settings."""
    from train.run_settings import RunSettings

    return RunSettings.from_dict(settings).train


# ------------------------------------------------------------------------------ from a work dir

def train_runs(work_dir: Path) -> dict:
    """``{run name: train summary}`` of the finished train runs with a selected checkpoint."""
    runs = {}
    for path in sorted(Path(work_dir, "train").glob("*/manifest.json")):
        manifest = read_manifest(path.parent)
        if (path.parent / tables.BEST_CHECKPOINT).is_file():
            runs[path.parent.name] = manifest.summary
    return runs


def best_run(work_dir: Path) -> str:
    """The run with the highest selection mAP (runs selected on val before those selected on test)."""
    runs = train_runs(work_dir)
    if not runs:
        raise UserError(f"no trained model in {work_dir}: {Path(work_dir) / 'train'} holds no finished run; run "
                        "`python -m pipeline run` first, or give a bundle with --bundle FILE")
    return max(runs, key=lambda r: (runs[r].get("select_on") == "val", runs[r].get("mAP") or 0.0))


def bundle_from_run(work_dir: Path, method: str | None = None) -> ModelBundle:
    """The bundle of ``<work_dir>/train/<method>`` (default: :func:`best_run`); per-class thresholds are
    included when ``thresholds.json`` holds them for the current checkpoint (see :func:`calibrate`)."""
    from pipeline.run import stage_state
    from train import checkpoints

    work_dir = Path(work_dir)
    run = method or best_run(work_dir)
    run_dir = work_dir / "train" / run
    manifest = read_manifest(run_dir)
    if manifest is None or not (run_dir / tables.BEST_CHECKPOINT).is_file():
        known = ", ".join(train_runs(work_dir)) or "none"
        raise UserError(f"no trained run {run!r} in {work_dir / 'train'} (trained runs: {known})")
    state = stage_state("train", None, work_dir, run)
    if not state.fresh:
        raise UserError(f"{run_dir} is stale ({'; '.join(state.reasons)}); re-run `python -m pipeline run` "
                        "so the model matches the features and split it is used with")
    checkpoint = checkpoints.load(run_dir / tables.BEST_CHECKPOINT)
    meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "package_version": package_version(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": run,
            "method": manifest.summary["method"], "settings": manifest.config,
            "feature_dim": int(checkpoint["feature_dim"]), "classes": _classes(work_dir / "split"),
            "group_thresholds": read_manifest(work_dir / "split").summary["thresholds"],
            "selection": {k: manifest.summary.get(k) for k in ("select_on", "best_epoch", "mAP")},
            "features": features_record(work_dir / "extract"),
            "thresholds": _cached_thresholds(run_dir)}
    return ModelBundle(meta, checkpoint["model"])


def _classes(split_dir: Path) -> dict:
    classes = tables.read_classes(split_dir)
    return {"names": classes.name.astype(str).tolist(), "train_counts": classes.train_count.astype(int).tolist(),
            "groups": classes.group.astype(str).tolist()}


def features_record(extract_dir: Path) -> dict:
    """How the run's features were made: the extract config, and from a feature shard (they all share
    one fingerprint) the backbone, its weights identity and sha256, the precision, transform and sampling."""
    from extract.store import list_shards, read_shard_index

    manifest = read_manifest(extract_dir)
    shards = list_shards(extract_dir)
    if manifest is None or not shards:
        raise UserError(f"{extract_dir} has no finished extract stage with features; the features' recipe is unknown")
    try:
        attrs = read_shard_index(shards[0]).attrs
    except ValueError as exc:
        raise UserError(f"feature shard {shards[0]}: {exc}; re-run the extract stage with --repair") from None
    record = {k: attrs.get(k) for k in ("backbone", "weights", "weights_sha256", "precision")}
    for key in ("transform", "sampling", "tsm"):
        record[key] = json.loads(attrs[key]) if isinstance(attrs.get(key), str) else attrs.get(key)
    return {"extract": manifest.config, "source": manifest.config.get("source", "videos"),
            "dtype": manifest.config.get("dtype", "float16"), **record}


# ------------------------------------------------------------------------------ thresholds

def f1_thresholds(scores: np.ndarray, targets: np.ndarray, fallback: float = FALLBACK_THRESHOLD) -> np.ndarray:
    """Per-class thresholds (score >= t is positive) that maximise F1 on (N, C) scores and 0/1 targets.

    The cut lies halfway between the lowest kept and the highest dropped score; among equal F1 the
    highest threshold wins. A class without positives gets ``fallback``.
    """
    out = np.full(scores.shape[1], float(fallback))
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        s, y = scores[order, c].astype(np.float64), targets[order, c].astype(np.int64)
        positives = int(y.sum())
        if positives == 0:
            continue
        f1 = 2.0 * np.cumsum(y) / (np.arange(1, len(s) + 1) + positives)
        cut = np.append(s[:-1] > s[1:], True)  # only between distinct scores
        best = int(np.argmax(np.where(cut, f1, -1.0)))
        out[c] = (s[best] + s[best + 1]) / 2.0 if best + 1 < len(s) else s[best]
    return out


def _cached_thresholds(run_dir: Path) -> dict:
    """The ``thresholds`` entry of a bundle from ``thresholds.json`` when it matches the checkpoint."""
    path = run_dir / THRESHOLDS_FILE
    empty = {"split": "val", "values": None, "fallback": FALLBACK_THRESHOLD}
    if not path.is_file():
        return empty
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return empty  # damaged: computed again
    keys = ("split", "values", "fallback", "val_positives")
    if not isinstance(record, dict) or not all(k in record for k in keys):
        return empty  # damaged: computed again
    if record.get("checkpoint_sha256") != sha256_file(run_dir / tables.BEST_CHECKPOINT):
        return empty
    return {k: record[k] for k in keys}


def calibrate(work_dir: Path, bundle: ModelBundle, device: str = "auto") -> ModelBundle:
    """Fill in the bundle's per-class thresholds from the validation split of its run (scored on the
    stored features with the test-time path) and keep them in ``thresholds.json``; a split without
    validation videos leaves them unset."""
    from manifests.datasets import multi_hot
    from train.data import FeatureBank
    from train.loop import SplitData, predict, probabilities, resolve_device

    work_dir, run_dir = Path(work_dir), Path(work_dir) / "train" / bundle.meta["run"]
    videos = tables.read_split_videos(work_dir / "split")
    val = videos[videos.split == "val"]
    if bundle.thresholds is not None or val.empty:  # without validation videos there is nothing to choose on
        return bundle
    ids, labels = val.video_id.tolist(), list(val.labels)
    data = SplitData(np.arange(len(ids)), labels, ids)
    device = resolve_device(device)
    logits = predict(bundle.build_model().to(device), FeatureBank(work_dir / "extract", ids), data,
                     train_config(bundle.meta["settings"]), device)
    targets = multi_hot(labels, len(bundle.class_names))
    values = f1_thresholds(probabilities(logits), targets)
    record = {"split": "val", "values": values.tolist(), "fallback": FALLBACK_THRESHOLD,
              "val_positives": targets.sum(axis=0).astype(int).tolist()}
    checkpoint_sha256 = sha256_file(run_dir / tables.BEST_CHECKPOINT)
    write_json_atomic(run_dir / THRESHOLDS_FILE, {"checkpoint_sha256": checkpoint_sha256, **record})
    bundle.meta["thresholds"] = record
    return bundle


# ------------------------------------------------------------------------------ the file

def save_bundle(bundle: ModelBundle, path: Path) -> Path:
    """Write the bundle as one safetensors file (atomically); returns its path."""
    from safetensors.torch import save_file

    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous().clone() for k, v in bundle.state.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(bundle.meta)})
    return Path(path)


def load_bundle(path: Path) -> ModelBundle:
    """Read a bundle written by :func:`save_bundle`; refuses other files, unknown schema versions and
    descriptions that :func:`pipeline.serve.bundle_check.check_bundle` refuses (the file is untrusted)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model bundle not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = (handle.metadata() or {}).get(META_KEY)
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a model bundle (not a safetensors file: {str(exc)[:120]}); make one with "
                        "`python -m pipeline export`") from None
    try:
        meta = json.loads(header) if header else None
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not a model bundle of this product (no {META_KEY!r} "
                        "description); make one with `python -m pipeline export`")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path} is a model bundle of schema version {meta.get('schema_version')!r}; this version "
                        f"(package {package_version()}) reads schema version {SCHEMA_VERSION} only; export the "
                        "model again with this version, or use the version that wrote it")
    state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    check_bundle(meta, state, path)
    return ModelBundle(meta, state)
