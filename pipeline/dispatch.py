"""Several train runs at once (``train.parallel: ray``): the runs of a method list x seeds as Ray tasks.

Each task runs exactly what the sequential loop runs for one run (``pipeline.run``'s stage runner:
freshness, resume from ``last.pt``, checkpoints, manifest), in a Ray worker, into its own
``<work_dir>/train/<run>/``; the driver holds the work dir's lock and waits. One task per GPU when
the cluster has GPUs (and ``train.device`` is not ``cpu``); otherwise ``train.slots`` tasks at once,
each training on ``CPUs / slots`` torch threads (``VLTR_CPUS`` in the task). Torch's CPU results
depend on the thread count, so a run here is bit-identical to the same run done alone with that many
threads (docs/cluster.md). A failed run does not stop the others; the command fails after all ended.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple

from manifests import ray_cluster, resources
from manifests.errors import StageFailed, UserError

log = logging.getLogger("pipeline")


class Plan(NamedTuple):
    """How the runs are spread: Ray resources per task, runs at once, torch threads per run."""

    task_options: dict
    at_once: int
    threads: int


def plan(cluster: dict, runs: int, slots: int | None, device: str) -> Plan:
    """One task per GPU when ``cluster`` (Ray's resource totals) has GPUs and the device allows;
    else ``slots`` (default: one per CPU, at most ``runs``) tasks sharing the CPUs."""
    cpus, gpus = max(1.0, float(cluster.get("CPU", 1))), int(cluster.get("GPU", 0))
    if gpus and device != "cpu":
        return Plan({"num_gpus": 1, "num_cpus": 0}, gpus, max(1, int(cpus) // gpus))
    at_once = slots or max(1, min(runs, int(cpus)))
    return Plan({"num_cpus": cpus / at_once}, at_once, max(1, int(cpus) // at_once))


def _train_run(run_stage: Callable, cfg_data: dict, work_dir: str, options, threads: int, level: int) -> str:
    """Inside a Ray task: one run, exactly as the sequential loop runs it, on ``threads`` CPU threads."""
    from pipeline.config import validate

    os.environ[resources.ENV_VAR] = str(threads)  # the run's torch threads and loader processes
    os.environ.pop("LOCAL_WORLD_SIZE", None)
    logger = logging.getLogger("pipeline")
    if not logger.handlers:  # a fresh Ray worker: the driver's messages, on stderr (Ray forwards it)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    return run_stage("train", validate(cfg_data), Path(work_dir), options)


def train_in_parallel(runs: list, work_dir: Path, options, run_stage: Callable) -> dict:
    """Run the train stage of ``runs`` (Configs of single runs, the train section's dispatch keys taken
    from the first) as Ray tasks; returns ``{"train/<run>": "ran" | "skipped"}``."""
    from pipeline.config import run_name

    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("train.parallel=ray trains each run in one process: run it with python -m pipeline, "
                        "not under torchrun (or set train.parallel=none)")
    train = runs[0].train
    ray, started = ray_cluster.connect(train.ray_address, "train.ray_address", resources.available_cpus(),
                                       "train.parallel=none")
    try:
        how = plan(ray.cluster_resources(), len(runs), train.slots, train.device)
        log.info("train: %d runs as Ray tasks, %d at once, %s", len(runs), how.at_once,
                 "one GPU each" if "num_gpus" in how.task_options else f"{how.threads} torch threads each")
        task = ray.remote(_train_run).options(**how.task_options, max_retries=0)
        quiet = replace(options, progress=False)  # one bar per run would interleave
        pending = {task.remote(run_stage, cfg.model_dump(), str(Path(work_dir).absolute()), quiet, how.threads,
                               log.getEffectiveLevel()): run_name(cfg) for cfg in runs}
        return _collect(ray, pending)
    finally:
        if started:
            ray.shutdown()


def _collect(ray, pending: dict) -> dict:
    """Wait for every task; once all ended, the first failure is raised (and any other logged). On
    Ctrl-C the tasks are cancelled (their runs resume from ``last.pt`` next time)."""
    outcome, failed, total = {}, [], len(pending)
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ref)
            try:
                outcome[f"train/{name}"] = ray.get(ref)
                log.info("train/%s finished (%d of %d runs ended)", name, total - len(pending), total)
            except Exception as exc:  # the run's own error, as Ray hands it back
                failed.append((name, getattr(exc, "cause", None) or exc))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    for name, cause in failed[1:]:
        log.error("train/%s failed: %s: %s", name, type(cause).__name__, (str(cause) or "?").splitlines()[0])
    if failed:
        name, cause = failed[0]
        others = f" ({len(failed) - 1} more failed run(s) logged above)" if len(failed) > 1 else ""
        if isinstance(cause, UserError):
            raise UserError(f"train/{name}: {cause}{others}")
        what = "" if isinstance(cause, StageFailed) else f"{type(cause).__name__}: "
        raise StageFailed(f"train/{name}: {what}{cause}{others}")
    return outcome
