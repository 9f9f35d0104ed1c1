"""What the extract runners share: the decode job of a video, and the sink its result goes to.

Both runners (extract/inprocess.py, extract/ray_runner.py) turn a video into a `DecodeJob` with
`make_job`; they and the npy import (extract/npy_import.py) hand every finished video to a
`ResultSink`: features to `ok` (stored through `extract.store.ShardWriter`, shards rotated by size),
reasons to `fail` (appended to `failures.jsonl`; `load_failures` reads the latest record per video back).
This module imports neither runner nor the stage, so the imports stay one-way:
stage -> runners -> jobs -> store.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from manifests.errors import UserError

from .config import ExtractConfig
from .store import ShardWriter, shard_name

# The stage's logger, a child of the CLI's "pipeline" logger: `-q` (pipeline/root at WARNING) keeps its
# INFO lines off the console; extract/stage.py adds extract.log while a run lasts.
log = logging.getLogger("pipeline.extract")
MAX_FRAMES_PER_SHARD = 1 << 18  # also rotate shards by size (fps sampling of long videos)
FAILURES_FILE = "failures.jsonl"


def make_job(cfg: ExtractConfig, vid: str, path: Optional[str]):
    """The DecodeJob of one video under `cfg` (sampling, preprocessing, decoder)."""
    from .decode import DecodeJob
    pre = cfg.preprocessing()
    return DecodeJob(video_id=vid, path=path, sampling=cfg.sampling, num_frames=cfg.num_frames, fps=cfg.fps,
                     max_frames=cfg.max_frames, resize=pre.resize, crop=pre.crop, decoder=cfg.decoder,
                     interpolation=pre.interpolation)


def video_meta(done: dict, notes: list, path: Optional[str]) -> dict:
    """The metadata stored with a video: the decoder's final record, the runner's notes first, its path."""
    m = dict(done)
    m["notes"] = list(notes) + list(done.get("notes", []))
    m["path"] = path
    return m


def write_error(path: Path, exc: OSError) -> UserError:
    """The one-line error for a file of the stage that cannot be written (disk full, quota, permissions)."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return UserError(f"cannot write {path}: {why}; free space or point work_dir elsewhere, then re-run")


def load_failures(path: Path) -> dict[str, dict]:
    """{video_id: latest failure record} of a failures.jsonl (a line cut by a kill is skipped)."""
    out: dict[str, dict] = {}
    if path.is_file():
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if "video_id" in rec:
                    out[rec["video_id"]] = rec
    return out


class ResultSink:
    """Receives finished videos (ok or failed) from a runner; owns the shard writer."""

    def __init__(self, stage_dir: Path, cfg: ExtractConfig, attrs: dict, feature_dim: int, first_shard: int,
                 pbar=None):
        """Shards go to `stage_dir`, numbered from `first_shard`, each with the run's `attrs`."""
        self.dir = stage_dir
        self.cfg = cfg
        self.attrs = attrs
        self.feature_dim = feature_dim
        self.next_shard = first_shard
        self.writer: Optional[ShardWriter] = None
        self.failures_path = stage_dir / FAILURES_FILE
        self.failed_now: dict[str, str] = {}
        self.ok_now: set[str] = set()
        self.frames = 0
        self.decoders: dict[str, int] = {}
        self.pbar = pbar
        self.t0 = time.time()
        self.shards_written: list[str] = []

    def ok(self, video_id: str, feats: np.ndarray, meta: dict) -> None:
        """Store one video. A refused array (ValueError) is that video's failure; an OSError of the shard
        files (disk full, ...) is fatal: the shard in flight is dropped and a UserError names its path."""
        if self.writer is None:
            self._open_writer()
        try:
            self.writer.add(video_id, feats, meta)
        except ValueError as e:
            self.fail(video_id, str(e), meta)
            return
        except OSError as e:
            raise self._writer_failed(e) from None
        self.ok_now.add(video_id)
        self.failed_now.pop(video_id, None)
        self.frames += int(len(feats))
        dec = meta.get("decoder") or "?"
        self.decoders[dec] = self.decoders.get(dec, 0) + 1
        if len(self.writer) >= self.cfg.videos_per_shard or self.writer.num_frames >= MAX_FRAMES_PER_SHARD:
            self.flush()
        self._tick()

    def _open_writer(self) -> None:
        """Start the next shard; an OSError (disk full, permissions) becomes a UserError naming it."""
        name = shard_name(self.next_shard)
        try:
            self.writer = ShardWriter(self.dir, name, self.feature_dim, self.cfg.dtype, self.attrs)
        except OSError as e:
            raise write_error(self.dir / name, e) from None
        self.next_shard += 1

    def fail(self, video_id: str, reason: str, meta: Optional[dict] = None) -> None:
        """Record that `video_id` failed (one line of failures.jsonl, flushed at once)."""
        rec = {"video_id": video_id, "error": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if meta:
            rec["notes"] = meta.get("notes", [])
            if meta.get("path"):
                rec["path"] = meta["path"]
        try:
            with open(self.failures_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
        except OSError as e:
            self.abort()
            raise write_error(self.failures_path, e) from None
        self.failed_now[video_id] = reason
        log.warning("video %s failed: %s", video_id, reason)
        self._tick()

    def _tick(self) -> None:
        """Advance the progress bar by one video (frames/s and failures so far)."""
        if self.pbar is not None:
            dt = max(1e-9, time.time() - self.t0)
            self.pbar.update(1)
            self.pbar.set_postfix(frames_s=f"{self.frames / dt:.1f}", failed=len(self.failed_now), refresh=False)

    def flush(self) -> None:
        """Complete the shard in flight (an empty one is dropped)."""
        if self.writer is not None:
            if len(self.writer):
                try:
                    p = self.writer.close()
                except OSError as e:
                    raise self._writer_failed(e) from None
                self.shards_written.append(p.name)
                log.debug("wrote %s (%d videos)", p.name, len(self.writer))
            else:
                self.writer.abort()
            self.writer = None

    def _writer_failed(self, exc: OSError) -> UserError:
        """Drop the shard in flight (its partial files) and say which file could not be written."""
        path = self.writer.final
        self.abort()
        return write_error(path, exc)

    def abort(self) -> None:
        """Drop the shard in flight (interrupt, fatal error): its partial files are removed."""
        if self.writer is not None:
            try:
                self.writer.abort()
            finally:
                self.writer = None
