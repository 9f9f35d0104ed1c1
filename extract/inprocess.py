"""In-process runner: killable decode worker processes feed the model in this process.

Decoding overlaps the model: each worker streams a video's preprocessed frames as events
(extract/decode.py), `_Embedder` embeds them `batch_size` frames at a time (or whole videos for
temporal backbones) and every finished video goes to the sink (extract/jobs.py's ResultSink, or
the predictor's in-memory collector).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from manifests import resources

from .config import ExtractConfig
from .jobs import log, make_job, video_meta


class _VideoFrames:
    """One video in flight: decoded frames waiting for the model, its features so far, its notes."""

    def __init__(self, notes: Optional[list] = None):
        self.buf: list[np.ndarray] = []
        self.nbuf = 0
        self.feats: list[np.ndarray] = []
        self.notes: list = list(notes or [])


class _Embedder:
    """Turns the decode events of each video into features; a model-side error fails that video only."""

    def __init__(self, encoder, paths: dict):
        self.encoder = encoder
        self.bs = encoder.batch_size
        self.whole = encoder.whole_video
        self.paths = paths
        self.state: dict[str, _VideoFrames] = {}
        self.dead: set[str] = set()

    def handle(self, vid: str, ev: tuple) -> Optional[tuple]:
        """One decode event of `vid`; returns ("ok", feats, meta) or ("fail", reason, meta) once the
        video is finished, else None."""
        if vid in self.dead:
            return None
        st = self.state.setdefault(vid, _VideoFrames())
        try:
            return self._apply(vid, st, ev)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # model-side failure of one video
            self.state.pop(vid, None)
            self.dead.add(vid)
            return "fail", f"feature computation failed: {type(e).__name__}: {e}", {"path": self.paths.get(vid)}

    def _apply(self, vid: str, st: _VideoFrames, ev: tuple) -> Optional[tuple]:
        """Apply one event to the video's state (see `handle`)."""
        kind = ev[0]
        if kind == "frames":
            st.buf.append(ev[1])
            st.nbuf += len(ev[1])
            if not self.whole:
                self._drain(st, False)
        elif kind == "reset":  # the decoder starts the video again: keep only the notes
            self.state[vid] = _VideoFrames(st.notes + [ev[1]])
        elif kind == "done":
            feats = self._finish(st)
            del self.state[vid]
            return "ok", feats, video_meta(ev[1], st.notes, self.paths.get(vid))
        elif kind == "error":
            del self.state[vid]
            return "fail", ev[1], {"notes": st.notes, "path": self.paths.get(vid)}
        return None

    def _drain(self, st: _VideoFrames, final: bool) -> None:
        """Embed full batches of buffered frames (and the rest when `final`)."""
        while st.nbuf >= self.bs or (final and st.nbuf > 0):
            allf = np.concatenate(st.buf) if len(st.buf) > 1 else st.buf[0]
            take = min(self.bs, len(allf))
            st.feats.append(self.encoder.embed_batch(allf[:take]))
            rest = allf[take:]
            st.buf = [rest] if len(rest) else []
            st.nbuf = len(rest)

    def _finish(self, st: _VideoFrames) -> np.ndarray:
        """The (T, D) features of a fully decoded video."""
        if self.whole:
            return self.encoder.embed_video(np.concatenate(st.buf))
        self._drain(st, True)
        return np.concatenate(st.feats)


def run_inprocess(cfg: ExtractConfig, encoder, todo: list, sink, stop) -> None:
    """Decode in killable worker processes (overlapping the model), embed here, write via `sink`."""
    from .decode import DecodePool

    embedder = _Embedder(encoder, dict(todo))
    jobs = [make_job(cfg, vid, path) for vid, path in todo]
    workers = resources.decode_workers(cfg.num_decode_workers, on_gpu=encoder.device.type == "cuda")
    log.info("extract: %d decode worker(s) (CPU budget %d)", workers, resources.available_cpus())
    pool = DecodePool(workers, cfg.decode_timeout_s)
    try:
        for job, ev in pool.imap(jobs):
            if stop.is_set():
                break
            result = embedder.handle(job.video_id, ev)
            # storing is not the video's fault: an OSError of the shard files is fatal (UserError from the sink)
            if result is None:
                continue
            if result[0] == "ok":
                sink.ok(job.video_id, result[1], result[2])
            else:
                sink.fail(job.video_id, result[1], result[2])
    finally:
        pool.close()
