"""Ray runner: CPU decode tasks feeding model actors (one per GPU; one on a CPU-only cluster).

The driver is the single writer (via the stage's ResultSink, extract/jobs.py). Each decode task runs the same
decode path as the in-process runner (decord, PyAV fallback, killable decode process with a
timeout); each actor builds the same FrameEncoder (encoder_from_config), so both runners give the same features.
Errors are caught per video; a crashed actor is restarted by Ray (or replaced by a fresh one) and its
videos are resubmitted once it answers again. An actor dying or restarting is not a video's failure:
only a video that was running each time its actor crashed, MAX_MODEL_ATTEMPTS times, is recorded as failed.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Optional

import numpy as np

from manifests import ray_cluster, resources
from manifests.errors import UserError

from .config import ExtractConfig
from .jobs import log, make_job, video_meta

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
    """A Ray actor holding one FrameEncoder; `embed` returns the (T, D) features of a decoded video."""
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
    """The original exception of a Ray task error (its `cause`), else `e`."""
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
    """The Ray fan-out of one extract run: `start` the model actors, `run` the videos, `shutdown`."""

    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg
        self.actors: list = []
        self._actor_cls = None
        self._actor_args: tuple = ()
        self._we_started_ray = False
        self._ray = None
        self._decode_slots = 1

    def start(self) -> dict:
        """Join (or start) Ray, start the model actors; returns the encoder's `describe()`."""
        ray = self._connect()
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

    def _connect(self):
        """The ray module, initialised: the cluster at extract.ray_address, else a local Ray offering this
        process's CPU budget (not the host's core count)."""
        ray, self._we_started_ray = ray_cluster.connect(self.cfg.ray_address, "extract.ray_address",
                                                        resources.available_cpus(), "extract.runner=inprocess")
        self._ray = ray
        return ray

    def run(self, todo: list, sink, stop) -> None:
        """Decode `todo` in Ray tasks and embed it on the actors, handing every video to `sink`, until
        all are finished or `stop` is set."""
        work = _Run(self, todo, sink)
        while work.busy() and not stop.is_set():
            work.step()

    def restart_actor(self, k: int) -> None:
        """Kill actor k for good and start a fresh one in its place."""
        try:
            self._ray.kill(self.actors[k], no_restart=True)
        except Exception:
            pass
        self.actors[k] = self._actor_cls.remote(*self._actor_args)

    def shutdown(self) -> None:
        """Kill the actors; stop Ray if this runner started it."""
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


class _Pending(NamedTuple):
    """A decoded video waiting for (or being embedded by) a model actor."""
    job: object
    meta: dict
    frames_ref: object
    crashes: int  # crashes of an actor while it was embedding this video


class _Run:
    """The state of one `RayRunner.run`: decode tasks in flight, embeddings in flight per actor slot,
    videos parked while no actor is up, and `ready` probes of the actors that went down."""

    def __init__(self, runner: RayRunner, todo: list, sink):
        """The run of `todo` ([(video_id, path)]) on `runner`'s actors, finished videos to `sink`."""
        self.runner, self.ray, self.cfg, self.sink = runner, runner._ray, runner.cfg, sink
        self.decode = self.ray.remote(_decode_in_task).options(num_cpus=1, max_retries=1, num_returns=2)
        self.paths = dict(todo)
        self.queue = [make_job(self.cfg, vid, path) for vid, path in todo]
        self.queue.reverse()
        n = len(runner.actors)
        self.max_decode = runner._decode_slots + n
        self.max_embed = 2 * n + 1
        self.decoding: dict = {}  # meta_ref -> (job, frames_ref)
        self.embedding: dict = {}  # feats_ref -> (_Pending, actor index, its epoch)
        self.parked: list[_Pending] = []  # waiting for an actor to be up again
        self.suspects: set = set()  # embed refs that were running when their actor died
        self.probes: dict = {}  # ready_ref -> actor index
        self.slots = [_Slot() for _ in range(n)]

    def busy(self) -> bool:
        """Videos are still queued, decoding, embedding or parked."""
        return bool(self.queue or self.decoding or self.embedding or self.parked)

    def step(self) -> None:
        """Start decodes, probe down actors, then handle what finished within a second."""
        self._start_decodes()
        now = time.monotonic()
        self._probe_down_actors(now)
        for ref in self._wait(now):
            if ref in self.probes:
                self._on_probe(ref)
            elif ref in self.decoding:
                self._on_decoded(ref)
            else:
                self._on_embedded(ref)

    def _start_decodes(self) -> None:
        """Submit decode tasks while there is room: decodes in flight and decoded videos awaiting a model
        are both bounded (frames wait in the object store)."""
        while self.queue and len(self.decoding) < self.max_decode and \
                len(self.embedding) + len(self.parked) < self.max_embed:
            job = self.queue.pop()
            meta_ref, frames_ref = self.decode.remote(job, self.cfg.decode_timeout_s)
            self.decoding[meta_ref] = (job, frames_ref)

    def _probe_down_actors(self, now: float) -> None:
        """Replace an actor that has been down too long; send a `ready` probe to each down actor due one."""
        for k, sl in enumerate(self.slots):
            if sl.up:
                continue
            if now - sl.since > ACTOR_READY_TIMEOUT_S:
                if sl.probe is not None:
                    self.probes.pop(sl.probe, None)
                    sl.probe = None
                self._replace(k, f"not ready {ACTOR_READY_TIMEOUT_S:.0f} s after it died")
                sl.since = sl.next_probe = now
            if sl.probe is None and now >= sl.next_probe:
                sl.probe = self.runner.actors[k].ready.remote()
                self.probes[sl.probe] = k

    def _wait(self, now: float) -> list:
        """The refs that finished within a second; none after a short sleep when nothing is in flight."""
        refs = list(self.decoding) + list(self.embedding) + list(self.probes)
        if not refs:  # everything waits for an actor whose next probe is due later
            due = min((sl.next_probe for sl in self.slots if not sl.up), default=now + 0.1)
            time.sleep(min(1.0, max(0.01, due - now)))
            return []
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
        return ready

    def _submit(self, item: _Pending) -> None:
        """Send a decoded video to the up actor with the fewest videos in flight (parked when none is up)."""
        up = [i for i in range(len(self.slots)) if self.slots[i].up]
        if not up:
            self.parked.append(item)
            return
        k = min(up, key=lambda i: len(self.slots[i].inflight))
        ref = self.runner.actors[k].embed.remote(item.frames_ref)
        self.slots[k].inflight.append(ref)
        self.embedding[ref] = (item, k, self.slots[k].epoch)

    def _on_probe(self, ref) -> None:
        """A `ready` probe answered: the actor is up again (parked videos resubmitted), or still down."""
        k = self.probes.pop(ref)
        sl = self.slots[k]
        sl.probe = None
        try:
            self.ray.get(ref)
        except Exception as e:
            self._probe_failed(k, e)
            return
        sl.up = True
        log.info("model actor %d is ready again after %.1f s; resubmitting %d video(s)", k,
                 time.monotonic() - sl.since, len(self.parked))
        waiting, self.parked[:] = list(self.parked), []
        for item in waiting:
            self._submit(item)

    def _probe_failed(self, k: int, e: BaseException) -> None:
        """Dead for good (restarts used up) or cannot start: a fresh actor; still restarting: probe later."""
        sl = self.slots[k]
        if type(e).__name__ == "ActorDiedError" or not _is_actor_error(self.ray, e):
            cause = _unwrap(e)
            self._replace(k, f"{type(cause).__name__}: {str(cause).splitlines()[0][:200]}"
                             if str(cause) else type(cause).__name__)
            sl.next_probe = time.monotonic()
        else:
            sl.next_probe = time.monotonic() + sl.backoff
            sl.backoff = min(PROBE_BACKOFF_S[1], sl.backoff * 2)

    def _on_decoded(self, ref) -> None:
        """A decode task finished: its video goes to an actor, or is failed with the decoder's reason."""
        job, frames_ref = self.decoding.pop(ref)
        path = self.paths.get(job.video_id)
        try:
            meta = self.ray.get(ref)
        except Exception as e:
            self.sink.fail(job.video_id, f"decode task failed: {type(_unwrap(e)).__name__}: {_unwrap(e)}",
                           {"path": path})
            return
        if "error" in meta:
            self.sink.fail(job.video_id, meta["error"], {"notes": meta.get("notes", []), "path": path})
            return
        self._submit(_Pending(job, meta, frames_ref, 0))

    def _on_embedded(self, ref) -> None:
        """An embed call finished: store the features, or handle the error."""
        item, k, epoch = self.embedding.pop(ref)
        if ref in self.slots[k].inflight:
            self.slots[k].inflight.remove(ref)
        try:
            feats = self.ray.get(ref)
        except Exception as e:
            self._embed_failed(ref, e, item, k, epoch)
            return
        self.suspects.discard(ref)
        self.sink.ok(item.job.video_id, feats, video_meta(item.meta, [], self.paths.get(item.job.video_id)))

    def _embed_failed(self, ref, e: BaseException, item: _Pending, k: int, epoch: int) -> None:
        """An actor error is not the video's fault: it is resubmitted, and failed only after running during
        MAX_MODEL_ATTEMPTS crashes; any other error fails the video."""
        vid = item.job.video_id
        if not _is_actor_error(self.ray, e):
            cause = _unwrap(e)
            self.sink.fail(vid, f"feature computation failed: {type(cause).__name__}: {cause}",
                           {"path": self.paths.get(vid)})
            return
        self._went_down(k, epoch, f"{type(e).__name__} on {vid}")
        if ref in self.suspects:
            self.suspects.discard(ref)
            item = item._replace(crashes=item.crashes + 1)
        if item.crashes < MAX_MODEL_ATTEMPTS:
            self._submit(item)
            return
        self.sink.fail(vid, f"feature computation failed: the model actor crashed {item.crashes} times while "
                       f"embedding this video (last: {type(e).__name__})", {"path": self.paths.get(vid)})

    def _went_down(self, k: int, epoch: int, why: str) -> None:
        """Mark actor k down (once per epoch); the video it was running becomes a suspect."""
        sl = self.slots[k]
        if not sl.up or epoch != sl.epoch:
            return
        sl.up = False
        sl.epoch += 1
        sl.since = time.monotonic()
        sl.next_probe = sl.since
        sl.backoff = PROBE_BACKOFF_S[0]
        if sl.inflight:
            self.suspects.add(sl.inflight[0])  # actor tasks run in order: this one was running
        log.warning("model actor %d died or is restarting (%s); its videos wait for it and are resubmitted",
                    k, why)

    def _replace(self, k: int, why: str) -> None:
        """Start a fresh actor in slot k (the old one is dead for good, or did not come back in time)."""
        sl = self.slots[k]
        sl.replacements += 1
        if sl.replacements > MAX_ACTOR_REPLACEMENTS:
            raise UserError(f"extract: Ray model actor {k} keeps dying ({why}); it was replaced "
                            f"{MAX_ACTOR_REPLACEMENTS} times. Finished videos are kept: check the Ray cluster "
                            "(memory, GPUs, logs) and re-run the same command to resume")
        log.warning("model actor %d cannot come back (%s); starting a fresh one", k, why)
        self.runner.restart_actor(k)
        sl.backoff = PROBE_BACKOFF_S[0]
