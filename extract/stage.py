"""The extract stage: videos (or released .npy features) -> feature store + videos.parquet.

A run: check the inputs, open the store already there (partial files removed, damaged shards
refused or moved aside with --repair), plan the videos still missing, compute them with a runner
(extract/inprocess.py, extract/ray_runner.py or extract/npy_import.py, each handing finished videos
to extract/jobs.py's ResultSink), then write videos.parquet and the summary from what is on disk.
The files of the stage directory: docs/formats.md ("Feature store").
"""

from __future__ import annotations

import dataclasses
import functools
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
from typing import Callable, NoReturn, Optional, Sequence

import pandas as pd

from manifests.errors import StageFailed, UserError
from manifests.files import atomic_path, sha256_file

from .config import ExtractConfig
from .inprocess import run_inprocess
from .jobs import FAILURES_FILE, ResultSink, load_failures, log
from .ray_runner import RayRunner
from .registry import lookup
from .store import CorruptShardError, FeatureStore, first_free_shard, read_shard_index, remove_partials

_FILE_ONLY = {"file_only": True}  # extra= of a record meant for extract.log only (already printed otherwise)
MAX_FAILURES_IN_SUMMARY = 50


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


def sampling_attrs(cfg: ExtractConfig) -> dict:
    """The frame sampling in force, as stored in the shard attributes."""
    if cfg.sampling == "fixed":
        return {"mode": "fixed", "num_frames": cfg.num_frames,
                "rule": "int(linspace(0, n-1, T)) over the decoder's frame count n (repeats when n < T)"}
    return {"mode": "fps", "fps": cfg.fps, "max_frames": cfg.max_frames,
            "rule": "index floor(k*rate/fps), k < ceil(n/rate*fps), from the average frame rate"}


def weights_identity(cfg: ExtractConfig) -> str:
    """What identifies the backbone weights: sha256 of extract.weights, else default / random / npy-import."""
    if cfg.source == "npy":
        return "npy-import"
    if cfg.weights:
        if not os.path.isfile(cfg.weights):
            raise UserError(f"extract.weights: file not found: {cfg.weights}; give the path of an existing "
                            "weights file, or leave extract.weights empty to use the package/cache weights")
        return "sha256:" + sha256_file(cfg.weights)
    return "default" if cfg.pretrained else "random"


def fingerprint(cfg: ExtractConfig, wid: str) -> str:
    """The fingerprint of the settings the features depend on (all shards of a store share it)."""
    d = dict(cfg.fingerprint_fields())
    d["weights"] = wid
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _input_table(videos: pd.DataFrame) -> list[tuple[str, Optional[str]]]:
    """[(video_id, path or None)] of the input table; UserError on missing columns, bad or duplicate ids."""
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
    """Create the stage directory and check that it is writable (UserError otherwise)."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"extract: cannot write to the stage directory {d} ({e.strerror or e}); "
                        "check the path, its permissions and free disk space") from None


def _write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:  # an OSError (disk full, ...) becomes a UserError naming `path`
        df.to_parquet(tmp, index=False)


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


@dataclasses.dataclass
class _Plan:
    """The work of one run: the videos to extract, those skipped, and the number of the next new shard."""
    todo: list
    done_before: int
    skipped_failed: int
    first_shard: int


def _run(cfg, inputs, stage_dir, retry_failed, repair, progress, t_start, verify=()) -> dict:
    """Open (or repair) the store, plan the missing videos, compute them, then write the table and summary."""
    _check_source(cfg)
    store, fp, wid = _reuse_store(cfg, stage_dir, repair, verify)
    plan = _plan(inputs, store, stage_dir, retry_failed)
    attrs = _shard_attrs(cfg, fp, wid)
    sink, feature_dim = _compute(cfg, plan, stage_dir, attrs, store.feature_dim, progress)
    return _finish(cfg, inputs, stage_dir, plan, sink, feature_dim, t_start, progress)


def _check_source(cfg: ExtractConfig) -> None:
    """An npy import needs extract.npy_dir, an existing folder."""
    if cfg.source != "npy":
        return
    if not cfg.npy_dir:
        raise UserError("extract.source=npy needs extract.npy_dir (the folder of <video_id>.npy files)")
    if not Path(cfg.npy_dir).is_dir():
        raise UserError(f"extract.npy_dir: folder not found: {cfg.npy_dir}; set it to the folder that holds "
                        "the released <video_id>.npy feature files")


def _reuse_store(cfg: ExtractConfig, stage_dir: Path, repair: bool, verify: Sequence[str]):
    """The store already in `stage_dir` (partial files of a killed run removed, damaged shards refused or
    repaired), refused when it holds features of other settings; with the settings' fingerprint and
    weights identity: (store, fingerprint, weights identity)."""
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
    return store, fp, wid


def _plan(inputs: list, store: FeatureStore, stage_dir: Path, retry_failed: bool) -> _Plan:
    """Skip the videos already stored and, unless retrying, those that failed before."""
    done = set(store.ids())
    failures = load_failures(stage_dir / FAILURES_FILE)
    todo, skipped_failed = [], 0
    for vid, path in inputs:
        if vid in done:
            continue
        if vid in failures and not retry_failed:
            skipped_failed += 1
            continue
        todo.append((vid, path))
    done_before = sum(1 for vid, _ in inputs if vid in done)
    log.info("extract: %d videos, %d already done, %d failed before (%s), %d to do", len(inputs), done_before,
             skipped_failed, "retrying" if retry_failed else "skipped", len(todo))
    return _Plan(todo, done_before, skipped_failed, first_free_shard(stage_dir))


def _shard_attrs(cfg: ExtractConfig, fp: str, wid: str) -> dict:
    """The attributes of every new shard (the backbone's are added once it is loaded)."""
    return {"config": cfg.fingerprint_fields(), "fingerprint": fp, "weights_identity": wid,
            "transform": cfg.preprocessing().transform_attrs(), "sampling": sampling_attrs(cfg),
            "versions": package_versions(cfg.source), "source": cfg.source}


def _compute(cfg: ExtractConfig, plan: _Plan, stage_dir: Path, attrs: dict, feature_dim: Optional[int],
             progress: bool) -> tuple[Optional[ResultSink], Optional[int]]:
    """Compute and store the features of `plan.todo`: (the sink, None when there was nothing to do; the
    feature dim). A first Ctrl-C / SIGTERM stops after the current video, keeps the complete shards and
    raises KeyboardInterrupt; any error drops the shard in flight."""
    if not plan.todo:
        return None, feature_dim
    ray_runner = RayRunner(cfg) if cfg.source == "videos" and cfg.runner != "inprocess" else None
    sink = pbar = None
    stop = _StopFlag()
    interrupted = False
    try:
        feature_dim, work = _start_source(cfg, plan.todo, stage_dir, attrs, ray_runner)
        pbar = _progress_bar(cfg, len(plan.todo)) if progress else None
        sink = ResultSink(stage_dir, cfg, attrs, feature_dim, plan.first_shard, pbar)
        with stop:
            work(sink, stop)
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
        _report_interrupt(stage_dir)
    return sink, feature_dim


def _start_source(cfg: ExtractConfig, todo: list, stage_dir: Path, attrs: dict,
                  ray_runner: Optional[RayRunner]) -> tuple[int, Callable]:
    """Load what computes the features (the npy import's plan, the encoder here, or the Ray actors) and
    record its backbone in `attrs`; returns (feature dim, work(sink, stop))."""
    if cfg.source == "npy":
        from .npy_import import prepare_npy, run_npy
        npy = prepare_npy(cfg, todo, stage_dir)
        attrs.update({"backbone": cfg.backbone, "weights": "imported", "weights_sha256": "",
                      "npy_dir": str(cfg.npy_dir), "feature_dim": npy.dim})
        return npy.dim, functools.partial(run_npy, npy)
    if ray_runner is None:
        from .encoder import encoder_from_config  # torch: loaded only when a model runs here
        encoder = encoder_from_config(cfg)
        desc = encoder.describe()
        work = functools.partial(run_inprocess, cfg, encoder, todo)
    else:
        desc = ray_runner.start()
        work = functools.partial(ray_runner.run, todo)
    attrs.update({"backbone": desc["backbone"], "weights": desc["weights"],
                  "weights_sha256": desc["weights_sha256"] or "", "precision": desc["precision"]})
    attrs.update(lookup(cfg.backbone).describe(cfg))  # what the backbone adds (tsm_r50: its clips)
    return desc["feature_dim"], work


def _progress_bar(cfg: ExtractConfig, total: int):
    """The run's progress bar on stderr (videos, frames/s, failures)."""
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="video", desc=f"extract {cfg.backbone}", dynamic_ncols=True, file=sys.stderr)


def _report_interrupt(stage_dir: Path) -> NoReturn:
    """Say how to resume (extract.log and the console, once) and raise KeyboardInterrupt."""
    msg = (f"extract interrupted: complete shards are kept in {stage_dir}; re-run the same command to resume "
           "(finished videos are skipped)")
    log.warning(msg, extra=_FILE_ONLY)  # to extract.log; the console gets it once, here
    print(msg, file=sys.stderr, flush=True)
    raise KeyboardInterrupt(msg)


# --------------------------------------------------------------------------- table and summary

def _finish(cfg: ExtractConfig, inputs: list, stage_dir: Path, plan: _Plan, sink: Optional[ResultSink],
            feature_dim: Optional[int], t_start: float, progress: bool) -> dict:
    """videos.parquet and the summary, from what is on disk; the stage fails when too many videos did."""
    final = FeatureStore(stage_dir, on_corrupt="raise")
    df, failed = _videos_table(inputs, final, stage_dir)
    table_path = stage_dir / "videos.parquet"
    _write_parquet_atomic(df, table_path)
    seconds = time.time() - t_start
    summary = _summary(cfg, df, failed, final, plan, sink, feature_dim, seconds)
    log.debug("extract summary: %s", json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    if progress:
        _print_summary(summary, seconds, table_path)
    _check_failure_fraction(cfg, summary, stage_dir, table_path)
    return summary


def _videos_table(inputs: list, final: FeatureStore, stage_dir: Path) -> tuple[pd.DataFrame, list[dict]]:
    """One row per input video (ok: from the store; failed: with its last recorded reason), and the
    failed videos as [{"video_id", "error"}]."""
    index = final.index_table()
    failures = load_failures(stage_dir / FAILURES_FILE)
    rows, failed = [], []
    for vid, _ in inputs:
        if vid in index:
            r = index[vid]
            rows.append((vid, "ok", r["num_frames"], r["shard"], r["decoder"], None))
        else:
            err = failures.get(vid, {}).get("error") or "not extracted (unknown reason)"
            rows.append((vid, "failed", 0, None, None, err))
            failed.append({"video_id": vid, "error": err})
    df = pd.DataFrame(rows, columns=["video_id", "status", "num_frames", "shard", "decoder", "error"])
    df["num_frames"] = df["num_frames"].astype("int64")
    return df, failed


def _summary(cfg: ExtractConfig, df: pd.DataFrame, failed: list, final: FeatureStore, plan: _Plan,
             sink: Optional[ResultSink], feature_dim: Optional[int], seconds: float) -> dict:
    """The stage summary (counts, throughput of this run, settings, shards, the first failures)."""
    n = len(df)
    n_ok = int((df["status"] == "ok").sum())
    new_frames = sink.frames if sink else 0
    decoders = dict(df["decoder"].value_counts()) if n_ok else {}
    return {
        "videos": n, "ok": n_ok, "failed": n - n_ok, "failure_fraction": round((n - n_ok) / n if n else 0.0, 6),
        "max_failure_fraction": cfg.max_failure_fraction,
        "skipped_done": plan.done_before, "skipped_failed": plan.skipped_failed, "processed": len(plan.todo),
        "new_ok": len(sink.ok_now) if sink else 0, "new_failed": len(sink.failed_now) if sink else 0,
        "frames": int(df["num_frames"].sum()), "new_frames": new_frames,
        "seconds": round(seconds, 3),
        "videos_per_s": round(len(plan.todo) / seconds, 4) if seconds > 0 else None,
        "frames_per_s": round(new_frames / seconds, 3) if seconds > 0 else None,
        "backbone": cfg.backbone, "feature_dim": final.feature_dim or feature_dim,
        "preprocessing": cfg.preprocessing().to_dict() if cfg.source == "videos" else None,
        "dtype": cfg.dtype, "source": cfg.source, "runner": cfg.runner, "sampling": cfg.sampling,
        "decoders": {str(k): int(v) for k, v in decoders.items()},
        "shards": len(final.shards), "shards_written": sink.shards_written if sink else [],
        "videos_table": "videos.parquet", "failures_log": FAILURES_FILE,
        "failures": failed[:MAX_FAILURES_IN_SUMMARY], "failures_truncated": len(failed) > MAX_FAILURES_IN_SUMMARY,
    }


def _print_summary(summary: dict, seconds: float, table_path: Path) -> None:
    """One line on stderr: totals, this run's throughput, the table's path."""
    n, n_ok, n_failed = summary["videos"], summary["ok"], summary["failed"]
    frac = n_failed / n if n else 0.0
    print(f"extract: {n_ok}/{n} videos ok, {n_failed} failed ({frac:.1%}), {summary['frames']} frames; "
          f"this run {summary['processed']} videos in {seconds:.1f} s ({summary['videos_per_s']} videos/s, "
          f"{summary['frames_per_s']} frames/s); table: {table_path}", file=sys.stderr)


def _check_failure_fraction(cfg: ExtractConfig, summary: dict, stage_dir: Path, table_path: Path) -> None:
    """StageFailed when more than extract.max_failure_fraction of the videos failed."""
    n, n_failed = summary["videos"], summary["failed"]
    frac = n_failed / n if n else 0.0
    if n and frac > cfg.max_failure_fraction:
        raise StageFailed(
            f"extract: {n_failed} of {n} videos failed ({frac:.1%} > max_failure_fraction "
            f"{cfg.max_failure_fraction:.1%}); see {table_path} and {stage_dir / FAILURES_FILE}; fix the files "
            "or re-run with --retry-failed (or raise extract.max_failure_fraction)")
