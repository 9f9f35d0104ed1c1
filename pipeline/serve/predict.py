"""Use a trained model: class scores of new raw videos (or .npy features), from a run or a bundle
(``Predictor.from_run("runs/demo")`` or ``Predictor.from_bundle("model.safetensors")``, then
``predictor.predict(["clip.mp4", "more_videos/"], threshold="val")``).

Videos are decoded and embedded exactly as the run's extract stage did (same backbone and weights,
checked by sha256; same sampling, resize, crop and precision), stored-precision rounded like the
feature store, and scored by the selected checkpoint on the method's test-time path. A video that
cannot be read is a ``failed`` row with its reason.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from manifests.datasets import VIDEO_EXTENSIONS, index_video_files
from manifests.errors import UserError
from manifests.files import atomic_path
from pipeline.serve.bundle import ModelBundle, bundle_from_run, calibrate, load_bundle, save_bundle, train_config

log = logging.getLogger("pipeline")

COLUMNS = ("video_id", "path", "status", "error", "predicted")  # then one score column per class
OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
AMP_OF_PRECISION = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}


class Predictor:
    """A trained model ready to score new videos; build it with :meth:`from_run` or :meth:`from_bundle`."""

    def __init__(self, bundle: ModelBundle, work_dir: Path | None = None, device: str = "auto",
                 weights: str | None = None):
        self.bundle, self.work_dir, self.weights = bundle, work_dir, weights
        from train.loop import resolve_device

        self.device = resolve_device(device)
        self.model = bundle.build_model().to(self.device)
        self._encoder = None

    @classmethod
    def from_run(cls, work_dir, method: str | None = None, device: str = "auto", weights: str | None = None):
        """The model of ``<work_dir>/train/<method>``; by default the run with the best selection mAP."""
        work_dir = Path(work_dir)
        if not work_dir.is_dir():
            raise UserError(f"work dir not found: {work_dir}")
        return cls(bundle_from_run(work_dir, method), work_dir, device, weights)

    @classmethod
    def from_bundle(cls, path, device: str = "auto", weights: str | None = None):
        """The model of a bundle written by :meth:`export` (``python -m pipeline export``); ``weights``
        points at the backbone's weights file when it is not where the run recorded it."""
        return cls(load_bundle(Path(path)), None, device, weights)

    @property
    def class_names(self) -> list:
        return self.bundle.class_names

    def describe(self) -> str:
        """One line: method, run, selection and features."""
        meta, features = self.bundle.meta, self.bundle.meta["features"]
        made = "imported .npy features" if features["source"] == "npy" else f"{features['backbone']} features"
        sel = meta["selection"]
        return (f"{meta['method']} (run {meta['run']}, {sel['select_on']} mAP {sel['mAP']:.3f} at epoch "
                f"{sel['best_epoch']}) on {made}, {len(self.class_names)} classes")

    def export(self, path) -> Path:
        """Write the self-contained bundle (with validation-F1 thresholds when made from a run)."""
        if self.work_dir is not None:
            calibrate(self.work_dir, self.bundle, str(self.device))
        return save_bundle(self.bundle, Path(path))

    def thresholds(self, threshold) -> np.ndarray:
        """Per-class cut-offs: a number in [0, 1] for every class, or ``"val"`` (validation-F1 thresholds)."""
        if threshold == "val":
            if self.bundle.thresholds is None and self.work_dir is not None:
                calibrate(self.work_dir, self.bundle, str(self.device))
            if self.bundle.thresholds is None:
                raise UserError("this model has no validation thresholds (its split had no validation videos); "
                                "give a number with --threshold")
            return np.asarray(self.bundle.thresholds, dtype=np.float64)
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise UserError(f"threshold {threshold!r}: give a score in [0, 1] or 'val'")
        return np.full(len(self.class_names), value)

    def predict(self, inputs, threshold=0.5, progress: bool = False, videos_dir=None) -> pd.DataFrame:
        """Scores of every class for each input video: one row per video (see :data:`COLUMNS`), then one
        float32 column of sigmoid scores per class name (NaN for a failed video).

        ``inputs``: a path or a list of paths: video files, folders (searched recursively), CSV files
        (see :func:`resolve_inputs`); ``.npy`` feature files for models trained on imported features.
        ``predicted`` lists the classes whose score reaches ``threshold`` (a number or ``"val"``).
        """
        cut = self.thresholds(threshold)
        items = resolve_inputs(inputs, self.bundle.meta["features"]["source"], videos_dir)
        if self.bundle.meta["features"]["source"] == "npy":
            features, errors = self._npy_features(items, progress)
        else:
            features, errors = self._video_features(items, progress)
        ok = [vid for vid, _ in items if vid in features]
        scores = np.full((len(items), len(self.class_names)), np.nan, dtype=np.float32)
        if ok:
            rows = [i for i, (vid, _) in enumerate(items) if vid in features]
            scores[rows] = self.scores([features[vid] for vid in ok], ok)
        return _table(items, errors, scores, cut, self.class_names)

    def scores(self, features: list, ids: list) -> np.ndarray:
        """(N, C) sigmoid scores of per-video (T, D) stored-precision features, on the test-time path
        (``train.eval_frames`` uniform frames, batches of ``train.batch_size``, float32)."""
        from train.loop import SplitData, predict, probabilities

        data = SplitData(np.arange(len(features)), [[] for _ in features], list(ids))
        logits = predict(self.model, _MemoryBank(features), data, train_config(self.bundle.meta["settings"]),
                         self.device)
        return probabilities(logits)

    # ---------------------------------------------------------------------------- features
    def _video_features(self, items: list, progress: bool) -> tuple:
        from extract.inprocess import run_inprocess

        encoder = self.encoder()
        sink = _Collector(self.bundle.meta["features"]["dtype"], encoder.feature_dim, len(items), progress)
        try:
            run_inprocess(self.extract_config(), encoder, items, sink, threading.Event())
        finally:
            sink.close()
        return sink.features, sink.errors

    def _npy_features(self, items: list, progress: bool) -> tuple:
        """``(features, errors)`` of .npy feature files (one per video), through the collector's checks."""
        sink = _Collector(self.bundle.meta["features"]["dtype"], self.bundle.meta["feature_dim"], len(items),
                          progress)
        try:
            for vid, path in items:
                if path is None:
                    sink.fail(vid, "no feature file for this id")
                    continue
                try:
                    sink.ok(vid, np.load(path, allow_pickle=False), {})
                except (OSError, ValueError) as exc:
                    sink.fail(vid, f"unreadable .npy ({type(exc).__name__}: {str(exc)[:150]})")
        finally:
            sink.close()
        return sink.features, sink.errors

    def extract_config(self):
        """The run's :class:`extract.config.ExtractConfig` (decoding, sampling, preprocessing, backbone)."""
        from extract.config import ExtractConfig

        return ExtractConfig.model_validate(self.bundle.meta["features"]["extract"])

    def encoder(self):
        """The run's frame encoder, refused unless its weights have the recorded sha256."""
        if self._encoder is None:
            self._encoder = _make_encoder(self.extract_config(), self.bundle.meta["features"], self.weights,
                                          self.device)
        return self._encoder


def _make_encoder(cfg, features: dict, weights: str | None, device):
    """The run's frame encoder with the backbone weights its features were made with (refused when
    the weights were random, the file is missing or its sha256 differs from the recorded one)."""
    from extract.encoder import encoder_from_config

    recorded = features.get("weights_sha256")
    if not recorded:
        raise UserError("the model's features were made with random backbone weights (extract.pretrained=false), "
                        "which cannot be made again; extract with real weights to predict new videos")
    path = weights or cfg.weights
    if path is not None and not Path(path).is_file():
        raise UserError(f"backbone weights file not found: {path} (the file the features were made with); put it "
                        "back, or give its new place with --weights FILE")
    encoder = encoder_from_config(cfg, weights=path, device=str(device),
                                  amp=AMP_OF_PRECISION.get(features.get("precision"), "off"))
    if encoder.model.weights_sha256 != recorded:
        raise UserError(f"the {cfg.backbone} weights here ({encoder.model.weights_id}, sha256 "
                        f"{encoder.model.weights_sha256}) differ from those the model's features were made with "
                        f"({features.get('weights')}, sha256 {recorded}); give that file with --weights FILE")
    return encoder


class _Collector:
    """Receives finished videos from the extract stage's in-process runner, as the feature store would
    (same checks, stored precision), but in memory."""

    def __init__(self, dtype: str, dim: int, total: int, progress: bool):
        from tqdm.auto import tqdm

        self.dtype, self.dim = np.dtype(dtype), int(dim)
        self.features, self.errors = {}, {}
        self.bar = tqdm(total=total, unit="video", desc="predict", dynamic_ncols=True, file=sys.stderr,
                        disable=not progress)

    def ok(self, video_id: str, feats: np.ndarray, meta: dict) -> None:
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.shape[0] < 1 or feats.shape[1] != self.dim:
            return self.fail(video_id, f"features must be (frames >= 1, {self.dim}), got {feats.shape}")
        if not np.issubdtype(feats.dtype, np.floating) or not np.isfinite(feats).all():
            return self.fail(video_id, "features are not finite floats")
        if self.dtype == np.float16 and np.abs(feats).max() > 65504:
            return self.fail(video_id, "features overflow float16 (|x| > 65504)")
        self.features[video_id] = feats.astype(self.dtype, copy=False)
        self.bar.update(1)

    def fail(self, video_id: str, reason: str, meta: dict | None = None) -> None:
        self.errors[video_id] = reason
        log.warning("video %s failed: %s", video_id, reason)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _MemoryBank:
    """The two members of :class:`train.data.FeatureBank` the test-time path reads, over in-memory features."""

    def __init__(self, features: list):
        self.features = features
        self.lengths = np.array([len(f) for f in features], dtype=np.int64)

    def clips(self, positions, frames):
        import torch

        rows = np.stack([self.features[p][f] for p, f in zip(positions, frames)])
        return torch.from_numpy(rows).float()


def _table(items: list, errors: dict, scores: np.ndarray, cut: np.ndarray, names: list) -> pd.DataFrame:
    ok = ~np.isnan(scores).any(axis=1)
    predicted = [[names[c] for c in np.flatnonzero(row >= cut)] if good else [] for row, good in zip(scores, ok)]
    error = [None if good else errors.get(vid, "not processed") for (vid, _), good in zip(items, ok)]
    fixed = pd.DataFrame({"video_id": [vid for vid, _ in items], "path": [path for _, path in items],
                          "status": np.where(ok, "ok", "failed"), "error": error, "predicted": predicted})
    return pd.concat([fixed, pd.DataFrame(scores, columns=names)], axis=1)


# -------------------------------------------------------------------------------- inputs

def resolve_inputs(inputs, source: str = "videos", videos_dir=None) -> list:
    """``[(video_id, path or None)]`` of files, folders (every video file under them, or ``.npy`` file for
    imported-feature models) and CSV files. A CSV is read as the ``csv`` ingest format (``path`` column,
    relative to the CSV; ``video_id`` optional, labels and split ignored) or the ``kinetics_csv`` one
    (``youtube_id,time_start,time_end``), whose files are looked up in ``videos_dir`` by id, as are
    rows without a path. Ids are file names without extension; a repeated id gets ``~2``, ``~3``, ..."""
    suffixes = (".npy",) if source == "npy" else VIDEO_EXTENSIONS
    items = []
    for given in [inputs] if isinstance(inputs, (str, Path)) else list(inputs):
        path = Path(given)
        if not path.exists():
            raise UserError(f"input not found: {path}")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                raise UserError(f"{path}: no {' / '.join(suffixes)} files in this folder")
            items += [(p.stem, str(p.resolve())) for p in found]
        elif path.suffix.lower() == ".csv":
            items += _csv_inputs(path, suffixes, videos_dir)
        else:
            _check_kind(path, source)
            items.append((path.stem, str(path.resolve())))
    if not items:
        raise UserError("no inputs: give video files, folders or CSV files")
    return _unique(items)


def _check_kind(path: Path, source: str) -> None:
    if source == "npy" and path.suffix.lower() != ".npy":
        raise UserError(f"{path}: this model was trained on imported features (no backbone); give .npy feature "
                        "files of the same kind, one (frames, dim) array per video")
    if source != "npy" and path.suffix.lower() == ".npy":
        raise UserError(f"{path}: this model embeds videos itself; give video files (a .npy file is for models "
                        "trained on imported features)")


def _csv_inputs(path: Path, suffixes: tuple, videos_dir) -> list:
    """``(video_id, file or None)`` of each row of an input CSV: the csv format (``video_id,path``) or
    kinetics_csv's (``youtube_id,time_start,time_end``); a row without a path is looked up in
    ``videos_dir``."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0][:150]})") from None
    columns = set(table.columns)
    index = {}

    def lookup(video_id: str):  # the file of a row without a path: <videos_dir>/**/<video_id>.<ext>
        if videos_dir is None:
            raise UserError(f"{path}: rows without a path (e.g. {video_id!r}); give the folder of their files "
                            "with --videos DIR")
        if not index:
            index.update(index_video_files(videos_dir) if suffixes == VIDEO_EXTENSIONS
                         else {p.stem: str(p.resolve()) for p in sorted(Path(videos_dir).rglob("*.npy"))})
        return index.get(video_id)

    if {"youtube_id", "time_start", "time_end"} <= columns:
        try:
            ids = [f"{y}_{int(float(a)):06d}_{int(float(b)):06d}"
                   for y, a, b in zip(table.youtube_id, table.time_start, table.time_end)]
        except (ValueError, OverflowError):  # not a number, NaN, inf
            raise UserError(f"{path}: time_start/time_end are not numbers") from None
        return [(vid, lookup(vid)) for vid in ids]
    if "path" not in columns and "video_id" not in columns:
        raise UserError(f"{path}: expected a `path` column (the csv format: video_id,path,...) or "
                        f"youtube_id,time_start,time_end (the kinetics_csv format); got {sorted(columns)}")
    rows = []
    for vid, file in zip(table.get("video_id", [""] * len(table)), table.get("path", [""] * len(table))):
        file = str((path.parent / file.strip()).resolve()) if file.strip() else None
        vid = vid.strip() or (Path(file).stem if file else "")
        if not vid:
            raise UserError(f"{path}: a row with neither video_id nor path")
        rows.append((vid, file or lookup(vid)))
    return rows


def _unique(items: list) -> list:
    seen, out = {}, []
    for vid, path in items:
        seen[vid] = seen.get(vid, 0) + 1
        out.append((vid if seen[vid] == 1 else f"{vid}~{seen[vid]}", path))
    return out


# -------------------------------------------------------------------------------- outputs

def output_format(path) -> str:
    """The suffix of a predictions file (.csv, .jsonl or .parquet); anything else is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {path}: give a file ending in {', '.join(OUTPUT_SUFFIXES)}")
    return suffix


def write_predictions(table: pd.DataFrame, path: Path) -> Path:
    """Write a :meth:`Predictor.predict` table as .csv / .parquet (``predicted`` joined by ``;``) or .jsonl
    (one object per video: the fixed columns and ``scores``: {class name: score})."""
    path = Path(path)
    suffix = output_format(path)
    names = [c for c in table.columns if c not in COLUMNS]
    flat = table.assign(predicted=table.predicted.map(";".join))
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            flat.to_csv(tmp, index=False)
        elif suffix == ".parquet":
            flat.to_parquet(tmp, index=False)
        else:
            with open(tmp, "w", encoding="utf-8") as handle:
                for row in table.to_dict("records"):
                    scores = {n: None if np.isnan(row[n]) else float(row[n]) for n in names}
                    handle.write(json.dumps({**{k: row[k] for k in COLUMNS}, "scores": scores}) + "\n")
    return path


def format_table(table: pd.DataFrame, top_k: int = 5) -> str:
    """The console table: one line per video with its ``top_k`` classes and scores (or why it failed)."""
    names = np.array([c for c in table.columns if c not in COLUMNS])
    scores = table[names].to_numpy(dtype=np.float64)
    k = min(top_k, len(names))
    rows = [["video", *(f"top-{i + 1}" for i in range(k))]]
    for row, (vid, status, error) in enumerate(zip(table.video_id, table.status, table.error)):
        best = np.argsort(-scores[row], kind="stable")[:k]
        rows.append([vid, *(f"{names[c]} {scores[row, c]:.3f}" for c in best)] if status == "ok"
                    else [vid, f"failed: {error}"])
    widths = [max(len(r[i]) for r in rows if len(r) == k + 1) for i in range(k + 1)]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() + "\n" for r in rows)
