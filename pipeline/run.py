"""Run orchestration: skip what is done, detect what is stale, run the rest, write manifests.

Most stages live in ``<work_dir>/<stage>/``. The train and evaluate stages are *per run*: one
folder per method, ``<work_dir>/train/<run>/`` and ``<work_dir>/evaluate/<run>/``, so that several
methods share one set of features and splits.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from manifests.errors import UserError
from manifests.files import resolve_portable
from manifests.manifest import (PREVIOUS_MANIFEST_NAME, Freshness, build_manifest, changed_outputs, freshness,
                                manifest_path, read_manifest, retire_manifest, write_manifest)
from pipeline.config import Config, run_name, single_runs
from pipeline.stages import ORDER, STAGES, RunOptions

log = logging.getLogger("pipeline")
EXTERNAL_PREFIX = "file:"  # manifest input keys of files read from outside the work dir
LOCK = ".lock"  # one run per work dir at a time


def is_main_process() -> bool:
    """False in the non-zero ranks of a ``torchrun`` launch (they never write manifests)."""
    return int(os.environ.get("RANK", 0)) == 0


def location(name: str, run: str | None) -> str:
    """A stage's folder relative to the work dir: ``split`` or, per run, ``train/<run>``."""
    return f"{name}/{run}" if STAGES[name].per_run else name


def stage_inputs(name: str, run: str | None, work_dir: Path) -> dict:
    """The files a stage's freshness depends on: upstream manifests, and for stages that read
    files outside the work dir (ingest, evaluate with a predictions file) the files it recorded."""
    stage = STAGES[name]
    inputs = {}
    for upstream in stage.needs + stage.uses:
        where = location(upstream, run)
        path = manifest_path(work_dir / where)
        if upstream in stage.needs or path.exists():
            inputs[f"{where}/manifest.json"] = path
    stage_dir = work_dir / location(name, run)
    manifest = _readable_manifest(stage_dir)
    if manifest is not None:
        for key, record in manifest.inputs.items():
            if key.startswith(EXTERNAL_PREFIX):
                inputs[key] = resolve_portable(record["path"], stage_dir)
    return inputs


def stage_state(name: str, cfg: Config | None, work_dir: Path, run: str | None = None) -> Freshness:
    """Freshness of one stage against the config (or, without one, its recorded config)."""
    stage_dir = work_dir / location(name, run)
    if cfg is not None:
        settings = STAGES[name].settings(cfg)
    else:
        manifest = _readable_manifest(stage_dir)
        settings = manifest.config if manifest else {}
    return freshness(stage_dir, settings, stage_inputs(name, run, work_dir))


@contextmanager
def work_dir_lock(work_dir: Path):
    """Hold ``<work_dir>/.lock`` for a run: an advisory ``flock`` the kernel releases when the process
    ends (so a crashed run never leaves a stale lock); a second run gets one line naming the holder."""
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        handle = open(work_dir / LOCK, "a+", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot use the work dir {work_dir}: {exc.strerror}; check the path and its "
                        "permissions, or point --work-dir elsewhere") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"the work dir {work_dir} is in use by {holder}; wait for that run to finish (or stop "
                        "it), or give this run another --work-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()  # closing releases the flock


def run_pipeline(cfg: Config, stage: str = "all", options: RunOptions | None = None) -> dict:
    """Run one stage or the whole chain under the work dir's lock; returns ``{stage location: "ran" |
    "skipped"}``. Under torchrun only rank 0 takes the lock."""
    if not is_main_process():
        return _run_pipeline(cfg, stage, options)
    with work_dir_lock(Path(cfg.work_dir)):
        return _run_pipeline(cfg, stage, options)


def _run_pipeline(cfg: Config, stage: str, options: RunOptions | None) -> dict:
    """:func:`run_pipeline` inside the lock: each stage in order (``all``) or the one asked for after
    its upstream is prepared; per-run stages once per single run; train runs as Ray tasks with
    ``train.parallel=ray``."""
    options = options or RunOptions()
    work_dir = Path(cfg.work_dir)
    names = ORDER if stage == "all" else (stage,)
    outcome = {}
    for name in names:
        if name == "train" and cfg.train.parallel == "ray":
            outcome.update(_train_runs_at_once(single_runs(cfg), work_dir, options, prepare=stage != "all"))
            continue
        for run_cfg in (single_runs(cfg) if STAGES[name].per_run else [cfg]):
            if stage != "all":
                _prepare_upstream(name, run_cfg, work_dir, options)
            where = location(name, run_name(run_cfg) if STAGES[name].per_run else None)
            outcome[where] = _run_stage(name, run_cfg, work_dir, options)
    return outcome


def _train_runs_at_once(runs: list, work_dir: Path, options: RunOptions, prepare: bool) -> dict:
    """train.parallel=ray: the runs that are up to date are skipped here, the others are Ray tasks
    (``prepare``: check each run's upstream first, as a single stage does)."""
    from pipeline.dispatch import train_in_parallel

    outcome, todo = {}, []
    for run_cfg in runs:
        if prepare:
            _prepare_upstream("train", run_cfg, work_dir, options)
        state = stage_state("train", run_cfg, work_dir, run_name(run_cfg))
        if state.fresh and not options.force:
            outcome[location("train", run_name(run_cfg))] = _run_stage("train", run_cfg, work_dir, options)
        else:
            todo.append(run_cfg)
    if todo:
        outcome.update(train_in_parallel(todo, work_dir, options, _run_stage))
    return outcome


def _prepare_upstream(name: str, cfg: Config, work_dir: Path, options: RunOptions) -> None:
    """Before a single stage: run ingest if needed (it is the cheap front of every chain) and
    refuse to build on a missing or stale upstream stage."""
    run = run_name(cfg) if STAGES[name].per_run else None
    for upstream in STAGES[name].needs + STAGES[name].uses:
        if upstream == "ingest" and is_main_process():
            _run_stage("ingest", cfg, work_dir, replace(options, force=False))  # --force is for `name`
            continue
        state = stage_state(upstream, cfg, work_dir, run)
        if state.state == "missing" and upstream in STAGES[name].uses:
            continue
        if not state.fresh:
            what = "has not run" if state.state == "missing" else f"is stale ({'; '.join(state.reasons)})"
            raise UserError(f"stage {name!r} needs {location(upstream, run)!r}, which {what} in {work_dir}; "
                            f"run `python -m pipeline run --stage {upstream}` with the same config first, "
                            "or `--stage all`")


def _run_stage(name: str, cfg: Config, work_dir: Path, options: RunOptions) -> str:
    """Run one stage (one run's folder for per-run stages) unless it is fresh: a fresh stage is
    skipped (``--force``, and for extract ``--retry-failed`` / ``--repair``, rebuild it); a stale one is
    rebuilt from scratch (never resumed; refused under ``--no-rerun``). The old manifest is retired
    first, so an interrupted rebuild reads as not done; rank 0 writes the new one with the settings,
    input hashes, outputs and summary. Returns "ran" or "skipped"."""
    stage = STAGES[name]
    run = run_name(cfg) if stage.per_run else None
    where = location(name, run)
    stage_dir = work_dir / where
    state = stage_state(name, cfg, work_dir, run)
    rebuild_requested = options.force or (name == "extract" and (options.retry_failed or options.repair))
    if state.fresh and not rebuild_requested:
        log.info("%-8s up to date, skipped (%s)", where, _brief(read_manifest(stage_dir).summary))
        return "skipped"
    if state.state == "stale":
        if options.no_rerun:
            raise UserError(f"stage {where!r} in {stage_dir} is stale: {'; '.join(state.reasons)}; "
                            "re-run without --no-rerun to rebuild it")
        log.info("%-8s stale (%s): re-running", where, "; ".join(state.reasons))
    if state.state == "stale":  # the outputs there belong to another config or input: never resume them
        options = replace(options, resume="never")
    log.info("%-8s running: %s", where, stage.description)
    started = time.perf_counter()
    try:
        stage_dir.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            retire_manifest(stage_dir)  # a stage being rebuilt is not done
    except OSError as exc:
        raise UserError(f"cannot write the {where} stage folder {stage_dir}: {exc.strerror}; check the work "
                        "dir path, its permissions and free disk space") from None
    options = replace(options, changed_outputs=tuple(changed_outputs(stage_dir)))
    if not is_main_process():  # torchrun: the other processes train; rank 0 records the stage
        stage.run(cfg, stage_dir, work_dir, options)
        return "ran"
    result = stage.run(cfg, stage_dir, work_dir, options)
    result.summary["seconds"] = round(time.perf_counter() - started, 3)
    inputs = {key: path for key, path in stage_inputs(name, run, work_dir).items()
              if not key.startswith(EXTERNAL_PREFIX)}
    inputs.update({EXTERNAL_PREFIX + key: path for key, path in result.external_inputs.items()})
    manifest = build_manifest(where, stage_dir, stage.settings(cfg), inputs, result.outputs, result.summary)
    write_manifest(stage_dir, manifest)
    (stage_dir / PREVIOUS_MANIFEST_NAME).unlink(missing_ok=True)
    log.info("%-8s done in %.1f s (%s) -> %s", where, result.summary["seconds"], _brief(result.summary), stage_dir)
    return "ran"


def _brief(summary: dict) -> str:
    """A one-line digest of a stage summary (counts and headline numbers only)."""
    parts = []
    for key in ("num_classes", "videos", "groups", "ok", "failed", "best_epoch", "mAP"):
        value = summary.get(key)
        if isinstance(value, dict):
            parts.append(f"{key} " + "/".join(f"{k} {v}" for k, v in value.items()))
        elif isinstance(value, float):
            parts.append(f"{key} {value:.3f}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def _locations(name: str, work_dir: Path) -> list:
    """The existing folders of a stage (every run folder for per-run stages)."""
    if not STAGES[name].per_run:
        return [(name, None)]
    runs = sorted(p.parent.name for p in (work_dir / name).glob("*/manifest.json"))
    return [(location(name, run), run) for run in runs] or [(name, None)]


def status_rows(cfg: Config | None, work_dir: Path) -> list:
    """One row per stage (per run for train/evaluate): location, state, created_at, digest, reasons."""
    rows, states = [], {}
    for name in ORDER:
        for where, run in _locations(name, work_dir):
            if STAGES[name].per_run and run is None:
                rows.append((where, "missing", "", "", ""))
                continue
            run_cfg = cfg
            if cfg is not None and STAGES[name].per_run:
                run_cfg = next((c for c in single_runs(cfg) if run_name(c) == run), None)
            state = stage_state(name, run_cfg, work_dir, run)
            reasons = list(state.reasons) if state.state == "stale" else []
            if state.state != "missing":
                reasons += _upstream_problems(name, run, states)
            states[where] = "stale" if reasons else state.state
            manifest = _readable_manifest(work_dir / where)
            rows.append((where, {"fresh": "done"}.get(states[where], states[where]),
                         manifest.created_at if manifest else "", _brief(manifest.summary) if manifest else "",
                         "; ".join(reasons)))
    return rows


def _upstream_problems(name: str, run: str | None, states: dict) -> list:
    """Why a finished stage is out of date because of the stages before it (stale, or gone when needed)."""
    problems = []
    for upstream in STAGES[name].needs + STAGES[name].uses:
        where = location(upstream, run)
        state = states.get(where, "missing")
        if state == "stale" or (state == "missing" and upstream in STAGES[name].needs):
            problems.append(f"upstream {where} is {'stale' if state == 'stale' else 'missing'}")
    return problems


def _readable_manifest(stage_dir: Path):
    """The manifest, or None when it is absent or damaged (status shows every stage either way)."""
    try:
        return read_manifest(stage_dir)
    except UserError:
        return None
