"""Ray runner: CPU decode tasks feeding model actors (one per GPU; one on a CPU-only cluster).

The driver is the single writer (via the stage's ResultSink). Each decode task runs the same
decode path as the in-process runner (decord, PyAV fallback, killable decode process with a
timeout); each actor builds the same FrameEncoder (encoder_from_config), so both runners give the same features.
Errors are caught per video; a crashed actor is restarted by Ray (or replaced by a fresh one) and its
videos are resubmitted once it answers again. An actor dying or restarting is not a video's failure:
only a video that was running each time its actor crashed, MAX_MODEL_ATTEMPTS times, is recorded as failed.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from manifests import resources
from manifests.errors import UserError

from .config import ExtractConfig

log = logging.getLogger("pipeline.extract")  # same logger as extract/stage.py
MAX_MODEL_ATTEMPTS = 3          # crashes of the actor while this video was running before it is failed
ACTOR_READY_TIMEOUT_S = 600.0   # a dead actor that has not answered `ready` by then is replaced
PROBE_BACKOFF_S = (0.25, 5.0)   # first and longest pause between `ready` probes of a restarting actor
MAX_ACTOR_REPLACEMENTS = 3      # fresh actors started per actor slot before the run gives up


def _decode_in_task(job, timeout_s: float):
    """Runs inside a Ray task: decode one video with a killable worker; returns (meta, frames)."""
    from .decode import DecodePool

    frames, notes, meta = [], [], None
    with DecodePool(1, timeout_s) as pool:
        for _, ev in pool.imap([job]):
            if ev[0] == "frames":
                frames.append(ev[1])
            elif ev[0] == "reset":
                frames.clear()
                notes.append(ev[1])
            elif ev[0] == "done":
                meta = dict(ev[1])
            elif ev[0] == "error":
                return {"error": ev[1], "notes": notes}, None
    if meta is None:
        return {"error": "decoder ended without a result", "notes": notes}, None
    meta["notes"] = notes
    return meta, np.concatenate(frames)


class _ModelActor:
    def __init__(self, cfg_dict: dict, num_threads: Optional[int]):
        from .encoder import encoder_from_config

        self.enc = encoder_from_config(ExtractConfig(**cfg_dict), num_threads=num_threads)

    def describe(self) -> dict:
        return self.enc.describe()

    def ready(self) -> bool:
        """A cheap call: answers once the actor (re)started and loaded its model."""
        return True

    def embed(self, frames: np.ndarray) -> np.ndarray:
        return self.enc.embed_video(frames)


def _unwrap(e: BaseException) -> BaseException:
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def _is_actor_error(ray, e: BaseException) -> bool:
    """The error means the actor died / is restarting / cannot be reached, not that the video is bad."""
    return isinstance(e, ray.exceptions.RayActorError) or \
        type(e).__name__ in ("ActorDiedError", "ActorUnavailableError", "RayActorError")


class _Slot:
    """Health of one model actor: up, or down since `since` and being probed with `ready`."""

    def __init__(self):
        self.up = True
        self.epoch = 0             # +1 each time the actor goes down: late errors of older tasks are ignored
        self.since = 0.0
        self.probe = None          # outstanding `ready` ref
        self.next_probe = 0.0      # monotonic time of the next probe
        self.backoff = PROBE_BACKOFF_S[0]
        self.replacements = 0
        self.inflight: list = []   # embed refs in submission order (the first one is the running one)


def decode_slots(requested: Optional[int], cluster_cpus: float, actors: int, use_gpu: bool) -> int:
    """Decode tasks in flight besides one per actor: ``requested`` when set, else the cluster's CPUs
    that the model actors do not hold (CPU actors hold one each; GPU actors none), at least 1."""
    if requested:
        return int(requested)
    return max(1, int(cluster_cpus) - (0 if use_gpu else actors))


class RayRunner:
    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg
        self.actors: list = []
        self._actor_cls = None
        self._actor_args: tuple = ()
        self._we_started_ray = False
        self._ray = None
        self._decode_slots = 1

    def start(self) -> dict:
        try:
            import ray
        except ImportError:
            raise UserError("extract.runner=ray needs the 'ray' package (pip install 'ray>=2.50,<3'), "
                            "or use extract.runner=inprocess") from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                if self.cfg.ray_address:
                    ray.init(address=self.cfg.ray_address, include_dashboard=False, logging_level=logging.WARNING)
                else:
                    # a local Ray gets this process's CPU budget, not the host's core count
                    ray.init(num_cpus=resources.available_cpus(), include_dashboard=False,
                             logging_level=logging.WARNING)
            except ConnectionError as e:
                raise UserError(f"extract.ray_address={self.cfg.ray_address!r}: cannot connect to a Ray cluster "
                                f"({e}); start one (ray start --head) or leave extract.ray_address empty") from None
            self._we_started_ray = True
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        n = self.cfg.ray_num_actors or max(1, gpus)
        use_gpu = gpus > 0 and self.cfg.device != "cpu"
        num_threads = self.cfg.num_threads
        if not use_gpu and num_threads is None:
            num_threads = resources.torch_threads()  # the in-process runner's count: the same CPU kernels
        cfg_dict = self.cfg.model_dump()
        if use_gpu and cfg_dict["device"] == "auto":
            cfg_dict["device"] = "cuda"
        Actor = ray.remote(_ModelActor).options(num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1,
                                                max_restarts=2, max_task_retries=0)
        self._actor_cls, self._actor_args = Actor, (cfg_dict, num_threads)
        self._decode_slots = decode_slots(self.cfg.num_decode_workers, res.get("CPU", 1), n, use_gpu)
        self.actors = [Actor.remote(cfg_dict, num_threads) for _ in range(n)]
        try:
            descs = ray.get([a.describe.remote() for a in self.actors])
        except Exception as e:
            cause = _unwrap(e)
            self.shutdown()
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            raise
        return descs[0]

    def run(self, todo: list, sink, stop) -> None:
        from .stage import make_job, video_meta

        ray = self._ray
        decode = ray.remote(_decode_in_task).options(num_cpus=1, max_retries=1, num_returns=2)
        paths = dict(todo)
        queue = [make_job(self.cfg, vid, path) for vid, path in todo]
        queue.reverse()
        n = len(self.actors)
        max_decode = self._decode_slots + n
        max_embed = 2 * n + 1
        decoding: dict = {}  # meta_ref -> (job, frames_ref)
        embedding: dict = {}  # feats_ref -> (job, meta, frames_ref, crashes, actor index, its epoch)
        parked: list = []  # (job, meta, frames_ref, crashes): waiting for an actor to be up again
        suspects: set = set()  # embed refs that were running when their actor died
        probes: dict = {}  # ready_ref -> actor index
        self._slots = slots = [_Slot() for _ in range(n)]

        def submit(job, meta, frames_ref, crashes):
            up = [i for i in range(n) if slots[i].up]
            if not up:
                parked.append((job, meta, frames_ref, crashes))
                return
            k = min(up, key=lambda i: len(slots[i].inflight))
            ref = self.actors[k].embed.remote(frames_ref)
            slots[k].inflight.append(ref)
            embedding[ref] = (job, meta, frames_ref, crashes, k, slots[k].epoch)

        def went_down(k, epoch, why):
            sl = slots[k]
            if not sl.up or epoch != sl.epoch:
                return
            sl.up = False
            sl.epoch += 1
            sl.since = time.monotonic()
            sl.next_probe = sl.since
            sl.backoff = PROBE_BACKOFF_S[0]
            if sl.inflight:
                suspects.add(sl.inflight[0])  # actor tasks run in order: this one was running
            log.warning("model actor %d died or is restarting (%s); its videos wait for it and are resubmitted",
                        k, why)

        while (queue or decoding or embedding or parked) and not stop.is_set():
            while queue and len(decoding) < max_decode and len(embedding) + len(parked) < max_embed:
                job = queue.pop()
                meta_ref, frames_ref = decode.remote(job, self.cfg.decode_timeout_s)
                decoding[meta_ref] = (job, frames_ref)
            now = time.monotonic()
            for k, sl in enumerate(slots):
                if sl.up:
                    continue
                if now - sl.since > ACTOR_READY_TIMEOUT_S:
                    if sl.probe is not None:
                        probes.pop(sl.probe, None)
                        sl.probe = None
                    self._replace(k, f"not ready {ACTOR_READY_TIMEOUT_S:.0f} s after it died")
                    sl.since = sl.next_probe = now
                if sl.probe is None and now >= sl.next_probe:
                    sl.probe = self.actors[k].ready.remote()
                    probes[sl.probe] = k
            refs = list(decoding) + list(embedding) + list(probes)
            if not refs:  # everything waits for an actor whose next probe is due later
                due = min((sl.next_probe for sl in slots if not sl.up), default=now + 0.1)
                time.sleep(min(1.0, max(0.01, due - now)))
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in probes:
                    k = probes.pop(ref)
                    sl = slots[k]
                    sl.probe = None
                    try:
                        ray.get(ref)
                    except Exception as e:
                        cause = _unwrap(e)
                        if type(e).__name__ == "ActorDiedError" or not _is_actor_error(ray, e):
                            # dead for good (restarts used up) or cannot start: a fresh actor
                            self._replace(k, f"{type(cause).__name__}: {str(cause).splitlines()[0][:200]}"
                                             if str(cause) else type(cause).__name__)
                            sl.next_probe = time.monotonic()
                        else:  # still restarting / unreachable: probe again later
                            sl.next_probe = time.monotonic() + sl.backoff
                            sl.backoff = min(PROBE_BACKOFF_S[1], sl.backoff * 2)
                        continue
                    sl.up = True
                    log.info("model actor %d is ready again after %.1f s; resubmitting %d video(s)", k,
                             time.monotonic() - sl.since, len(parked))
                    waiting, parked[:] = list(parked), []
                    for item in waiting:
                        submit(*item)
                elif ref in decoding:
                    job, frames_ref = decoding.pop(ref)
                    try:
                        meta = ray.get(ref)
                    except Exception as e:
                        sink.fail(job.video_id, f"decode task failed: {type(_unwrap(e)).__name__}: {_unwrap(e)}",
                                  {"path": paths.get(job.video_id)})
                        continue
                    if "error" in meta:
                        sink.fail(job.video_id, meta["error"], {"notes": meta.get("notes", []),
                                                                "path": paths.get(job.video_id)})
                        continue
                    submit(job, meta, frames_ref, 0)
                else:
                    job, meta, frames_ref, crashes, k, epoch = embedding.pop(ref)
                    if ref in slots[k].inflight:
                        slots[k].inflight.remove(ref)
                    try:
                        feats = ray.get(ref)
                    except Exception as e:
                        cause = _unwrap(e)
                        if _is_actor_error(ray, e):
                            went_down(k, epoch, f"{type(e).__name__} on {job.video_id}")
                            if ref in suspects:
                                suspects.discard(ref)
                                crashes += 1
                            if crashes < MAX_MODEL_ATTEMPTS:
                                submit(job, meta, frames_ref, crashes)
                                continue
                            sink.fail(job.video_id, f"feature computation failed: the model actor crashed "
                                      f"{crashes} times while embedding this video (last: {type(e).__name__})",
                                      {"path": paths.get(job.video_id)})
                            continue
                        sink.fail(job.video_id, f"feature computation failed: {type(cause).__name__}: {cause}",
                                  {"path": paths.get(job.video_id)})
                        continue
                    suspects.discard(ref)
                    sink.ok(job.video_id, feats, video_meta(meta, [], paths.get(job.video_id)))

    def _replace(self, k: int, why: str) -> None:
        """Start a fresh actor in slot k (the old one is dead for good, or did not come back in time)."""
        ray = self._ray
        sl = self._slots[k]
        sl.replacements += 1
        if sl.replacements > MAX_ACTOR_REPLACEMENTS:
            raise UserError(f"extract: Ray model actor {k} keeps dying ({why}); it was replaced "
                             f"{MAX_ACTOR_REPLACEMENTS} times. Finished videos are kept: check the Ray cluster "
                             "(memory, GPUs, logs) and re-run the same command to resume")
        log.warning("model actor %d cannot come back (%s); starting a fresh one", k, why)
        try:
            ray.kill(self.actors[k], no_restart=True)
        except Exception:
            pass
        self.actors[k] = self._actor_cls.remote(*self._actor_args)
        sl.backoff = PROBE_BACKOFF_S[0]

    def shutdown(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        self.actors = []
        if self._we_started_ray:
            ray.shutdown()
            self._we_started_ray = False
