"""Ray runner: CPU decode tasks feeding model actors (one per GPU; one on a CPU-only cluster).

The driver is the single writer (via the stage's ResultSink). Each decode task runs the same
decode path as the in-process runner (decord, PyAV fallback, killable decode process with a
timeout); each actor runs the same FrameEncoder, so both runners give the same features.
Errors are caught per video; a crashed actor is restarted by Ray and its videos are resubmitted.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from manifests.errors import UserError

from .config import ExtractConfig

log = logging.getLogger("extract")
MAX_MODEL_ATTEMPTS = 3


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
        from .encoder import FrameEncoder

        cfg = ExtractConfig(**cfg_dict)
        self.enc = FrameEncoder(cfg.backbone, cfg.weights, cfg.pretrained, device=cfg.device, amp=cfg.amp,
                                batch_size=cfg.batch_size, tsm_grouping=cfg.tsm_grouping, download=cfg.download,
                                num_threads=num_threads)

    def describe(self) -> dict:
        return self.enc.describe()

    def embed(self, frames: np.ndarray) -> np.ndarray:
        return self.enc.embed_video(frames)


def _unwrap(e: BaseException) -> BaseException:
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


class RayRunner:
    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg
        self.actors: list = []
        self._we_started_ray = False
        self._ray = None

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
                    ray.init(include_dashboard=False, logging_level=logging.WARNING)
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
            import torch
            num_threads = torch.get_num_threads()  # same CPU kernels as the in-process runner
        cfg_dict = self.cfg.model_dump()
        if use_gpu and cfg_dict["device"] == "auto":
            cfg_dict["device"] = "cuda"
        Actor = ray.remote(_ModelActor).options(num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1,
                                                max_restarts=2, max_task_retries=0)
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
        max_decode = max(1, self.cfg.num_decode_workers) + len(self.actors)
        decoding: dict = {}  # meta_ref -> (job, frames_ref)
        embedding: dict = {}  # feats_ref -> (job, meta, frames_ref, attempt, actor index)
        load = [0] * len(self.actors)
        while (queue or decoding or embedding) and not stop.is_set():
            while queue and len(decoding) < max_decode and len(embedding) < 2 * len(self.actors) + 1:
                job = queue.pop()
                meta_ref, frames_ref = decode.remote(job, self.cfg.decode_timeout_s)
                decoding[meta_ref] = (job, frames_ref)
            ready, _ = ray.wait(list(decoding) + list(embedding), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in decoding:
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
                    self._submit_embed(embedding, load, job, meta, frames_ref, 1)
                else:
                    job, meta, frames_ref, attempt, k = embedding.pop(ref)
                    load[k] -= 1
                    try:
                        feats = ray.get(ref)
                    except Exception as e:
                        cause = _unwrap(e)
                        actor_died = isinstance(e, (ray.exceptions.RayActorError,)) or \
                            type(e).__name__ in ("ActorDiedError", "ActorUnavailableError")
                        if actor_died and attempt < MAX_MODEL_ATTEMPTS:
                            log.warning("model actor %d died on %s; retrying on another actor", k, job.video_id)
                            self._submit_embed(embedding, load, job, meta, frames_ref, attempt + 1, avoid=k)
                            continue
                        sink.fail(job.video_id, f"feature computation failed: {type(cause).__name__}: {cause}",
                                  {"path": paths.get(job.video_id)})
                        continue
                    sink.ok(job.video_id, feats, video_meta(meta, [], paths.get(job.video_id)))

    def _submit_embed(self, embedding, load, job, meta, frames_ref, attempt, avoid: Optional[int] = None):
        order = sorted(range(len(self.actors)), key=lambda i: (i == avoid, load[i]))
        k = order[0]
        ref = self.actors[k].embed.remote(frames_ref)
        load[k] += 1
        embedding[ref] = (job, meta, frames_ref, attempt, k)

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
