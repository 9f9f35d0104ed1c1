"""The extract stage: videos (or released .npy features) -> feature store + videos.parquet.

Files under the stage directory:

    shard-NNNNN.h5      complete feature shards (see extract/store.py)
    failures.jsonl      one JSON line per failed attempt (append-only; the latest per video counts)
    videos.parquet      one row per input video (video_id, status, num_frames, shard, decoder, error)
    npy_report.csv      per-file report of an npy import (source=npy)
    extract.log         log of every run in this directory
    corrupt/            shards moved aside by repair
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from manifests import resources
from manifests.errors import StageFailed, UserError
from manifests.files import atomic_path

from .config import ExtractConfig
from .store import (CorruptShardError, FeatureStore, ShardWriter, list_shards, read_shard_index, remove_partials,
                    SHARD_RE)

# A child of the CLI's "pipeline" logger: `-q` (pipeline/root at WARNING) keeps its INFO lines off the console.
log = logging.getLogger("pipeline.extract")
_FILE_ONLY = {"file_only": True}  # extra= of a record meant for extract.log only (already printed otherwise)
MAX_FAILURES_IN_SUMMARY = 50
MAX_FRAMES_PER_SHARD = 1 << 18  # also rotate shards by size (fps sampling of long videos)


# --------------------------------------------------------------------------- helpers

def package_versions(source: str = "videos") -> dict:
    """Versions of the libraries that made the features; an npy import uses only h5py and numpy
    (importing torch and the decoders for it would cost seconds and ~650 MB of RSS)."""
    out = {}
    modules = ("h5py", "numpy") if source == "npy" else ("torch", "torchvision", "timm", "decord", "av", "h5py",
                                                          "numpy", "PIL")
    for mod in modules:
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:
            out[mod] = None
    try:
        from importlib.metadata import version
        out["vltr-pipeline"] = version("vltr-pipeline")
    except Exception:
        out["vltr-pipeline"] = None
    out["python"] = sys.version.split()[0]
    return out


def transform_attrs(cfg: ExtractConfig) -> dict:
    """The preprocessing in force (the backbone's registry entry or timm data config, with the
    config's resize / crop), as stored in the shard attributes."""
    pre = cfg.preprocessing()
    return {"resize_short_side": pre.resize, "interpolation": f"{pre.interpolation}, antialiased (PIL)",
            "center_crop": pre.crop, "colour": "RGB", "scale": "1/255", "mean": list(pre.mean),
            "std": list(pre.std)}


def sampling_attrs(cfg: ExtractConfig) -> dict:
    if cfg.sampling == "fixed":
        return {"mode": "fixed", "num_frames": cfg.num_frames,
                "rule": "int(linspace(0, n-1, T)) over the decoder's frame count n (repeats when n < T)"}
    return {"mode": "fps", "fps": cfg.fps, "max_frames": cfg.max_frames,
            "rule": "index floor(k*rate/fps), k < ceil(n/rate*fps), from the average frame rate"}


def weights_identity(cfg: ExtractConfig) -> str:
    if cfg.source == "npy":
        return "npy-import"
    if cfg.weights:
        if not os.path.isfile(cfg.weights):
            raise UserError(f"extract.weights: file not found: {cfg.weights}; give the path of an existing "
                            "weights file, or leave extract.weights empty to use the package/cache weights")
        from .backbones import file_sha256
        return "sha256:" + file_sha256(cfg.weights)
    return "default" if cfg.pretrained else "random"


def fingerprint(cfg: ExtractConfig, wid: str) -> str:
    d = dict(cfg.fingerprint_fields())
    d["weights"] = wid
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _input_table(videos: pd.DataFrame) -> list[tuple[str, Optional[str]]]:
    if not isinstance(videos, pd.DataFrame):
        raise UserError("extract: the video table must be a pandas DataFrame with columns video_id, path")
    for col in ("video_id", "path"):
        if col not in videos.columns:
            raise UserError(f"extract: the video table has no column {col!r} (columns: {list(videos.columns)})")
    ids = videos["video_id"].astype(str).tolist()
    seen, dup = set(), []
    for v in ids:
        if v in seen:
            dup.append(v)
        seen.add(v)
        if not v or "/" in v or "\\" in v or v in (".", "..") or "\x00" in v:
            raise UserError(f"extract: video id {v!r} cannot be used as a file name / HDF5 key; sanitise the ids")
    if dup:
        raise UserError(f"extract: {len(dup)} duplicate video ids in the input (e.g. {dup[:3]}); ids must be unique")
    paths = []
    for p in videos["path"].tolist():
        if p is None or (isinstance(p, float) and math.isnan(p)) or (isinstance(p, str) and not p.strip()):
            paths.append(None)
        else:
            paths.append(str(p))
    return list(zip(ids, paths))


def _mkdir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"extract: cannot write to the stage directory {d} ({e.strerror or e}); "
                        "check the path, its permissions and free disk space") from None


def _load_failures(path: Path) -> dict[str, dict]:
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


def _write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:  # an OSError (disk full, ...) becomes a UserError naming `path`
        df.to_parquet(tmp, index=False)


def write_error(path: Path, exc: OSError) -> UserError:
    """The one-line error for a file of the stage that cannot be written (disk full, quota, permissions)."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return UserError(f"cannot write {path}: {why}; free space or point work_dir elsewhere, then re-run")


# --------------------------------------------------------------------------- result sink

class ResultSink:
    """Receives finished videos (ok or failed) from a runner; owns the shard writer."""

    def __init__(self, stage_dir: Path, cfg: ExtractConfig, attrs: dict, feature_dim: int, first_shard: int,
                 pbar=None):
        self.dir = stage_dir
        self.cfg = cfg
        self.attrs = attrs
        self.feature_dim = feature_dim
        self.next_shard = first_shard
        self.writer: Optional[ShardWriter] = None
        self.failures_path = stage_dir / "failures.jsonl"
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
            name = f"shard-{self.next_shard:05d}.h5"
            try:
                self.writer = ShardWriter(self.dir, name, self.feature_dim, self.cfg.dtype, self.attrs)
            except OSError as e:
                raise write_error(self.dir / name, e) from None
            self.next_shard += 1
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

    def fail(self, video_id: str, reason: str, meta: Optional[dict] = None) -> None:
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
        if self.pbar is not None:
            dt = max(1e-9, time.time() - self.t0)
            self.pbar.update(1)
            self.pbar.set_postfix(frames_s=f"{self.frames / dt:.1f}", failed=len(self.failed_now), refresh=False)

    def flush(self) -> None:
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
        if self.writer is not None:
            try:
                self.writer.abort()
            finally:
                self.writer = None


# --------------------------------------------------------------------------- Ctrl-C

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; what Docker, Kubernetes and Slurm send


def _abort(signum, frame):
    raise KeyboardInterrupt


class _StopFlag:
    """A first Ctrl-C or SIGTERM sets the flag (the runner stops at the next safe point); a second aborts."""

    def __init__(self):
        self.event = threading.Event()
        self._old = {}

    def is_set(self) -> bool:
        return self.event.is_set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

            def handler(signum, frame):
                self.event.set()
                for sig in STOP_SIGNALS:
                    signal.signal(sig, _abort)
                print(f"\nextract: {signal.Signals(signum).name} received - stopping after the current video "
                      "(again to abort)", file=sys.stderr, flush=True)

            for sig in STOP_SIGNALS:
                signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------- the stage

def _open_existing(stage_dir: Path, repair: bool, verify: Sequence[str] = ()) -> FeatureStore:
    """The store already in ``stage_dir``. Shards named in ``verify`` (changed on disk since the last
    finished run) must pass their feature checksums: those that fail are moved aside and re-extracted."""
    damaged = _failing_checksums(stage_dir, verify)
    if damaged:
        _move_aside(stage_dir, damaged, "changed on disk since the last finished run and failed its checksum")
    store = FeatureStore(stage_dir, on_corrupt="skip", deep_verify=repair)
    if store.corrupt:
        if not repair:
            raise CorruptShardError(
                store.corrupt, f"in {stage_dir}; re-run with --repair to move them aside and re-extract their "
                               "videos (nothing else is lost)")
        _move_aside(stage_dir, store.corrupt, "repair")
        store = FeatureStore(stage_dir, on_corrupt="raise")
    return store


def _failing_checksums(stage_dir: Path, names: Sequence[str]) -> list[tuple[str, str]]:
    """(name, problem) for each named shard that fails a deep check (structure and feature checksum)."""
    failing = []
    for name in names:
        path = stage_dir / name
        if not path.exists():
            continue
        try:
            read_shard_index(path, deep=True)
            log.info("verified %s (changed on disk since the last finished run): checksums intact", name)
        except ValueError as exc:
            failing.append((name, str(exc)))
    return failing


def _move_aside(stage_dir: Path, shards: list[tuple[str, str]], why: str) -> None:
    """Move damaged shards to ``corrupt/`` (never delete); their videos are extracted again."""
    aside = stage_dir / "corrupt"
    aside.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, problem in shards:
        shutil.move(str(stage_dir / name), str(aside / f"{name}.{stamp}"))
        log.warning("%s: moved shard %s aside (%s); its videos will be re-extracted", why, name, problem)
    names = ", ".join(name for name, _ in shards)
    print(f"extract: moved {len(shards)} damaged shard(s) to {aside} ({why}): {names}", file=sys.stderr)


class _LogFile(logging.FileHandler):
    """extract.log; a log line that cannot be written (disk full) is dropped without a traceback: the
    write that matters (a shard, a table) reports the error itself."""

    def handleError(self, record) -> None:
        pass


class _Propagate(logging.Handler):
    """Hands records on to the handlers of the parent loggers, as propagation does, but only when the
    parent's level lets them through: the logger itself is at INFO while a run writes extract.log, and
    plain propagation would ignore `-q` (the "pipeline"/root level) and print every INFO line."""

    def emit(self, record) -> None:
        if getattr(record, "file_only", False):
            return
        parent = log.parent
        if parent is None or record.levelno < parent.getEffectiveLevel():
            return
        c = parent
        while c is not None:
            for h in c.handlers:
                if record.levelno >= h.level:
                    h.handle(record)
            if not c.propagate:
                break
            c = c.parent


def _setup_logging(stage_dir: Path):
    """Log every INFO+ line of this run to extract.log; the console sees what the caller's levels allow.
    Returns what `_teardown_logging` needs to restore the logger."""
    h = _LogFile(stage_dir / "extract.log", encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    fwd = _Propagate()
    saved = (log.level, log.propagate)
    log.addHandler(h)
    log.addHandler(fwd)
    log.propagate = False
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return h, fwd, saved


def _teardown_logging(state) -> None:
    h, fwd, (level, propagate) = state
    log.removeHandler(h)
    log.removeHandler(fwd)
    log.setLevel(level)
    log.propagate = propagate
    h.close()


def run_extract(cfg: ExtractConfig, videos: pd.DataFrame, stage_dir: Path, *, retry_failed: bool = False,
                repair: bool = False, progress: bool = True, verify: Sequence[str] = ()) -> dict:
    """Extract (or import) features of `videos` into `stage_dir`; see the module doc.

    ``verify``: shard file names to check deeply before their videos count as done (the pipeline
    passes the shards that changed on disk since the last finished run)."""
    t_start = time.time()
    stage_dir = Path(stage_dir)
    inputs = _input_table(videos)
    _mkdir(stage_dir)
    logging_state = _setup_logging(stage_dir)
    try:
        return _run(cfg, inputs, stage_dir, retry_failed, repair, progress, t_start, verify)
    finally:
        _teardown_logging(logging_state)


def _run(cfg, inputs, stage_dir, retry_failed, repair, progress, t_start, verify=()) -> dict:
    if cfg.source == "npy":
        if not cfg.npy_dir:
            raise UserError("extract.source=npy needs extract.npy_dir (the folder of <video_id>.npy files)")
        if not Path(cfg.npy_dir).is_dir():
            raise UserError(f"extract.npy_dir: folder not found: {cfg.npy_dir}; set it to the folder that holds "
                            "the released <video_id>.npy feature files")
    removed = remove_partials(stage_dir)
    if removed:
        log.info("removed %d partial file(s) of an interrupted run: %s", len(removed), removed)
    store = _open_existing(stage_dir, repair, verify)
    wid = weights_identity(cfg)
    fp = fingerprint(cfg, wid)
    if len(store) and store.attrs.get("fingerprint") != fp:
        old = store.attrs.get("config", {})
        raise UserError(
            f"extract: {stage_dir} already holds features made with other settings "
            f"(stored: backbone={store.attrs.get('backbone')}, config={old}); "
            "delete that directory or re-run the stage with --force")
    done = set(store.ids())
    failures = _load_failures(stage_dir / "failures.jsonl")
    todo, skipped_failed = [], []
    for vid, path in inputs:
        if vid in done:
            continue
        if vid in failures and not retry_failed:
            skipped_failed.append(vid)
            continue
        todo.append((vid, path))
    n_done_before = sum(1 for vid, _ in inputs if vid in done)
    log.info("extract: %d videos, %d already done, %d failed before (%s), %d to do", len(inputs), n_done_before,
             len(skipped_failed), "retrying" if retry_failed else "skipped", len(todo))

    first_shard = 0
    for p in list_shards(stage_dir):
        first_shard = max(first_shard, int(SHARD_RE.match(p.name).group(1)) + 1)

    attrs = {"config": cfg.fingerprint_fields(), "fingerprint": fp, "weights_identity": wid,
             "transform": transform_attrs(cfg), "sampling": sampling_attrs(cfg), "versions": package_versions(cfg.source),
             "source": cfg.source}
    feature_dim = store.feature_dim
    encoder = None
    ray_runner = None
    sink = None
    stop = _StopFlag()
    interrupted = False
    pbar = None
    try:
        if todo:
            if cfg.source == "npy":
                from .npy_import import prepare_npy
                plan = prepare_npy(cfg, todo, stage_dir)
                feature_dim = plan.dim
                attrs.update({"backbone": cfg.backbone, "weights": "imported", "weights_sha256": "",
                              "npy_dir": str(cfg.npy_dir), "feature_dim": plan.dim})
            else:
                from .encoder import encoder_from_config
                if cfg.runner == "inprocess":
                    encoder = encoder_from_config(cfg)
                    desc = encoder.describe()
                else:
                    from .ray_runner import RayRunner
                    ray_runner = RayRunner(cfg)
                    desc = ray_runner.start()
                feature_dim = desc["feature_dim"]
                attrs.update({"backbone": desc["backbone"], "weights": desc["weights"],
                              "weights_sha256": desc["weights_sha256"] or "", "precision": desc["precision"]})
                if "tsm" in desc:
                    attrs["tsm"] = desc["tsm"]
            if progress:
                from tqdm.auto import tqdm
                pbar = tqdm(total=len(todo), unit="video", desc=f"extract {cfg.backbone}", dynamic_ncols=True,
                            file=sys.stderr)
            sink = ResultSink(stage_dir, cfg, attrs, feature_dim, first_shard, pbar)
            with stop:
                if cfg.source == "npy":
                    from .npy_import import run_npy
                    run_npy(plan, sink, stop)
                elif cfg.runner == "inprocess":
                    run_inprocess(cfg, encoder, todo, sink, stop)
                else:
                    ray_runner.run(todo, sink, stop)
                interrupted = stop.is_set()
            sink.flush()
    except KeyboardInterrupt:
        interrupted = True
        if sink is not None:
            sink.abort()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        if pbar is not None:
            pbar.close()
        if ray_runner is not None:
            ray_runner.shutdown()
    if interrupted:
        msg = (f"extract interrupted: complete shards are kept in {stage_dir}; re-run the same command to resume "
               "(finished videos are skipped)")
        log.warning(msg, extra=_FILE_ONLY)  # to extract.log; the console gets it once, here
        print(msg, file=sys.stderr, flush=True)
        raise KeyboardInterrupt(msg)

    # ---- final table and summary (from what is on disk)
    final = FeatureStore(stage_dir, on_corrupt="raise")
    index = final.index_table()
    failures = _load_failures(stage_dir / "failures.jsonl")
    rows = []
    failed_list = []
    for vid, path in inputs:
        if vid in index:
            r = index[vid]
            rows.append((vid, "ok", r["num_frames"], r["shard"], r["decoder"], None))
        else:
            err = failures.get(vid, {}).get("error") or "not extracted (unknown reason)"
            rows.append((vid, "failed", 0, None, None, err))
            failed_list.append({"video_id": vid, "error": err})
    df = pd.DataFrame(rows, columns=["video_id", "status", "num_frames", "shard", "decoder", "error"])
    df["num_frames"] = df["num_frames"].astype("int64")
    table_path = stage_dir / "videos.parquet"
    _write_parquet_atomic(df, table_path)

    seconds = time.time() - t_start
    n = len(inputs)
    n_ok = int((df["status"] == "ok").sum())
    n_failed = n - n_ok
    frac = n_failed / n if n else 0.0
    new_ok = len(sink.ok_now) if sink else 0
    new_frames = sink.frames if sink else 0
    summary = {
        "videos": n, "ok": n_ok, "failed": n_failed, "failure_fraction": round(frac, 6),
        "max_failure_fraction": cfg.max_failure_fraction,
        "skipped_done": n_done_before, "skipped_failed": len(skipped_failed), "processed": len(todo),
        "new_ok": new_ok, "new_failed": len(sink.failed_now) if sink else 0,
        "frames": int(df["num_frames"].sum()), "new_frames": new_frames,
        "seconds": round(seconds, 3),
        "videos_per_s": round(len(todo) / seconds, 4) if seconds > 0 else None,
        "frames_per_s": round(new_frames / seconds, 3) if seconds > 0 else None,
        "backbone": cfg.backbone, "feature_dim": final.feature_dim or feature_dim,
        "preprocessing": cfg.preprocessing().to_dict() if cfg.source == "videos" else None,
        "dtype": cfg.dtype, "source": cfg.source, "runner": cfg.runner, "sampling": cfg.sampling,
        "decoders": dict(df["decoder"].value_counts()) if n_ok else {},
        "shards": len(final.shards), "shards_written": sink.shards_written if sink else [],
        "videos_table": "videos.parquet", "failures_log": "failures.jsonl",
        "failures": failed_list[:MAX_FAILURES_IN_SUMMARY], "failures_truncated": len(failed_list) > MAX_FAILURES_IN_SUMMARY,
    }
    summary["decoders"] = {str(k): int(v) for k, v in summary["decoders"].items()}
    log.debug("extract summary: %s", json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    if progress:
        print(f"extract: {n_ok}/{n} videos ok, {n_failed} failed ({frac:.1%}), {summary['frames']} frames; "
              f"this run {len(todo)} videos in {seconds:.1f} s ({summary['videos_per_s']} videos/s, "
              f"{summary['frames_per_s']} frames/s); table: {table_path}", file=sys.stderr)
    if n and frac > cfg.max_failure_fraction:
        raise StageFailed(
            f"extract: {n_failed} of {n} videos failed ({frac:.1%} > max_failure_fraction "
            f"{cfg.max_failure_fraction:.1%}); see {table_path} and {stage_dir / 'failures.jsonl'}; fix the files "
            "or re-run with --retry-failed (or raise extract.max_failure_fraction)")
    return summary


# --------------------------------------------------------------------------- in-process runner

def make_job(cfg: ExtractConfig, vid: str, path: Optional[str]):
    from .decode import DecodeJob
    pre = cfg.preprocessing()
    return DecodeJob(video_id=vid, path=path, sampling=cfg.sampling, num_frames=cfg.num_frames, fps=cfg.fps,
                     max_frames=cfg.max_frames, resize=pre.resize, crop=pre.crop, decoder=cfg.decoder,
                     interpolation=pre.interpolation)


def video_meta(done: dict, notes: list, path: Optional[str]) -> dict:
    m = dict(done)
    m["notes"] = list(notes) + list(done.get("notes", []))
    m["path"] = path
    return m


def run_inprocess(cfg: ExtractConfig, encoder, todo: list, sink: ResultSink, stop) -> None:
    """Decode in killable worker processes (overlapping the model), embed here, write via `sink`."""
    from .decode import DecodePool

    bs = encoder.batch_size
    whole = encoder.whole_video
    paths = dict(todo)
    state: dict[str, dict] = {}
    dead: set[str] = set()

    def new_state():
        return {"buf": [], "nbuf": 0, "feats": [], "notes": []}

    def drain(st, final: bool):
        while st["nbuf"] >= bs or (final and st["nbuf"] > 0):
            allf = np.concatenate(st["buf"]) if len(st["buf"]) > 1 else st["buf"][0]
            take = min(bs, len(allf))
            st["feats"].append(encoder.embed_batch(allf[:take]))
            rest = allf[take:]
            st["buf"] = [rest] if len(rest) else []
            st["nbuf"] = len(rest)

    jobs = [make_job(cfg, vid, path) for vid, path in todo]
    workers = resources.decode_workers(cfg.num_decode_workers, on_gpu=encoder.device.type == "cuda")
    log.info("extract: %d decode worker(s) (CPU budget %d)", workers, resources.available_cpus())
    pool = DecodePool(workers, cfg.decode_timeout_s)
    try:
        for job, ev in pool.imap(jobs):
            if stop.is_set():
                break
            vid = job.video_id
            if vid in dead:
                continue
            st = state.setdefault(vid, new_state())
            kind = ev[0]
            result = None  # what to hand to the sink, outside the per-video error handling below
            try:
                if kind == "frames":
                    st["buf"].append(ev[1])
                    st["nbuf"] += len(ev[1])
                    if not whole:
                        drain(st, False)
                elif kind == "reset":
                    notes = st["notes"] + [ev[1]]
                    state[vid] = st = new_state()
                    st["notes"] = notes
                elif kind == "done":
                    if whole:
                        feats = encoder.embed_video(np.concatenate(st["buf"]))
                    else:
                        drain(st, True)
                        feats = np.concatenate(st["feats"])
                    del state[vid]
                    result = ("ok", feats, video_meta(ev[1], st["notes"], paths.get(vid)))
                elif kind == "error":
                    del state[vid]
                    result = ("fail", ev[1], {"notes": st["notes"], "path": paths.get(vid)})
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # model-side failure of one video
                state.pop(vid, None)
                dead.add(vid)
                result = ("fail", f"feature computation failed: {type(e).__name__}: {e}", {"path": paths.get(vid)})
            # storing is not the video's fault: an OSError of the shard files is fatal (UserError from the sink)
            if result is not None:
                if result[0] == "ok":
                    sink.ok(vid, result[1], result[2])
                else:
                    sink.fail(vid, result[1], result[2])
    finally:
        pool.close()
