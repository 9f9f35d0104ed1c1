"""Video decoding: decord first, PyAV fallback, preprocessing while decoding, killable workers
(spawned processes that need only numpy, PIL, decord and av: this module must not import torch).
A decode is a stream of events (tuples) so that memory never grows with the video's length:

    ("meta",   {"decoder", "n_frames_meta", "fps", "height", "width", "indices"})
    ("frames", uint8 array (k, crop, crop, 3))    preprocessed frames, in index order
    ("reset",  reason)                            drop the frames of this video received so far
    ("done",   meta dict)                         final per-video metadata
    ("error",  reason)                            the video failed; reason is one line
    ("beat",)                                     heartbeat (long PyAV scans), never leaves the pool
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
from PIL import Image

from .sampling import sample_indices

# Full-resolution RGB bytes one decord get_batch call may hold (bounds memory for 4K inputs).
DECODE_BUDGET_BYTES = 64 * 1024 * 1024
MAX_FRAMES_PER_EVENT = 16
# FFmpeg codecs of still images: a file whose only frame is in one of them is a picture, not a video
# (a one-frame H.264 clip is still a video: its frame is repeated, RELIABILITY.md).
STILL_IMAGE_CODECS = frozenset({"png", "apng", "mjpeg", "jpegls", "jpeg2000", "bmp", "gif", "tiff", "webp",
                                "ppm", "pgm", "pbm", "pam", "sgi", "targa", "dpx", "exr", "qoi"})


@dataclasses.dataclass(frozen=True)
class DecodeJob:
    video_id: str
    path: Optional[str]
    sampling: str = "fixed"
    num_frames: int = 150
    fps: float = 1.0
    max_frames: Optional[int] = None
    resize: int = 256
    crop: int = 224
    decoder: str = "auto"  # auto | decord | pyav
    interpolation: str = "bilinear"  # PIL filter of the resize (extract.registry.INTERPOLATIONS)

    def indices(self, n: int, video_fps: float) -> np.ndarray:
        return sample_indices(n, sampling=self.sampling, num_frames=self.num_frames,
                              video_fps=video_fps, fps=self.fps, max_frames=self.max_frames)


class DecodeError(Exception):
    """A video could not be decoded; the message is the reason recorded for it."""


class NotAVideo(DecodeError):
    """The file is readable but is not a video (a still image): no other decoder is tried."""


# --------------------------------------------------------------------------- preprocessing

def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(w, h) with the short side = resize and the aspect ratio kept (torchvision's rule)."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def preprocess_image(img: Image.Image, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """Short side -> resize (PIL `interpolation`, antialiased), centre crop -> uint8 (crop, crop, 3) RGB."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    nw, nh = resized_size(w, h, resize)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), getattr(Image.Resampling, interpolation.upper()))
    top = int(round((nh - crop) / 2.0))
    left = int(round((nw - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    return np.asarray(img, dtype=np.uint8)


def preprocess_array(frame: np.ndarray, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    return preprocess_image(Image.fromarray(frame), resize, crop, interpolation)


# --------------------------------------------------------------------------- decoders

def _check_file(path: Optional[str]) -> None:
    if path is None or (isinstance(path, float) and np.isnan(path)):
        raise DecodeError("no video file for this id (path is empty)")
    if not os.path.exists(path):
        raise DecodeError(f"file not found: {path}")
    if os.path.isdir(path):
        raise DecodeError(f"path is a directory, not a video file: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DecodeError(f"empty file (0 bytes): {path}")


def _chunks_of_repeats(idx: np.ndarray, frames: dict[int, np.ndarray]) -> Iterator[np.ndarray]:
    """The frames of `idx` in order (repeated indices repeat the frame), stacked MAX_FRAMES_PER_EVENT at a time."""
    out = [frames[int(i)] for i in idx]
    for s in range(0, len(out), MAX_FRAMES_PER_EVENT):
        yield np.stack(out[s:s + MAX_FRAMES_PER_EVENT])


def _emit(idx: np.ndarray, pos: int, end: int, pending: dict[int, np.ndarray]):
    """Yield the "frames" events of index positions pos:end (indices are sorted); returns the pending
    frames that later positions still need."""
    yield from (("frames", c) for c in _chunks_of_repeats(idx[pos:end], pending))
    keep = int(idx[end]) if end < len(idx) else None
    return {k: v for k, v in pending.items() if keep is not None and k >= keep}


def decode_decord(job: DecodeJob) -> Iterator[tuple]:
    """Decode with decord: the sampled frames, a bounded number per get_batch call."""
    import decord  # local: keeps the import cost in workers

    try:
        vr = decord.VideoReader(job.path, ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises its own error types
        raise DecodeError(f"decord could not open the file: {_one_line(e)}") from None
    try:
        n = len(vr)
        if n < 1:
            raise DecodeError("decord reports 0 frames")
        if n == 1:
            _check_not_still(job.path)
        fps = float(vr.get_avg_fps() or 0.0)
        idx = job.indices(n, fps)
        first = vr.get_batch([int(idx[0])]).asnumpy()
        height, width = int(first.shape[1]), int(first.shape[2])
        del first
        try:
            ts = vr.get_frame_timestamp(idx)[:, 0].astype(np.float64)
        except Exception:
            ts = idx / fps if fps > 0 else np.full(len(idx), np.nan)
        yield ("meta", {"decoder": "decord", "n_frames_meta": n, "fps": fps, "height": height,
                        "width": width, "indices": idx})
        uniq = np.unique(idx)
        per_call = int(max(1, min(MAX_FRAMES_PER_EVENT, DECODE_BUDGET_BYTES // max(1, height * width * 3))))
        pending: dict[int, np.ndarray] = {}
        pos = 0  # next position of idx to emit
        for s in range(0, len(uniq), per_call):
            part = uniq[s:s + per_call]
            batch = vr.get_batch([int(i) for i in part]).asnumpy()
            for i, fr in zip(part, batch):
                pending[int(i)] = preprocess_array(fr, job.resize, job.crop, job.interpolation)
            del batch
            # emit every index position whose frame is ready (indices are sorted)
            last_ready = int(part[-1])
            end = int(np.searchsorted(idx, last_ready, side="right"))
            if end > pos:
                pending = yield from _emit(idx, pos, end, pending)
                pos = end
        try:
            vr.seek(0)
        except Exception:
            pass
    finally:
        del vr
    yield ("done", {"decoder": "decord", "n_frames_meta": n, "n_frames_decoded": n, "fps": fps,
                    "duration": (n / fps) if fps > 0 else float("nan"), "height": height,
                    "width": width, "frame_indices": idx, "timestamps": ts})


def _still_image(container, stream, frames: int) -> Optional[str]:
    """Why an opened file is a still image rather than a video (None for a video): FFmpeg read it with
    an image demuxer (a PNG or JPEG renamed .mp4), or its only frame is in a still-image codec."""
    demuxer = container.format.name
    if demuxer.endswith("_pipe") or demuxer.startswith("image2"):
        return f"a still image ({demuxer.removesuffix('_pipe')}), not a video"
    codec = stream.codec_context.name
    if frames <= 1 and codec in STILL_IMAGE_CODECS:
        return f"a still image (one {codec} frame in a {demuxer.split(',')[0]} file), not a video"
    return None


def _check_not_still(path: str) -> None:
    """DecodeError when the file is a still image (see :func:`_still_image`); for files whose decoder
    reports a single frame."""
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                return
            s = c.streams.video[0]
            reason = _still_image(c, s, sum(1 for p in c.demux(s) if p.size > 0))
    except av.FFmpegError:
        return  # not readable by PyAV: the decoders report it
    if reason:
        raise NotAVideo(reason)


def _pyav_count(path: str) -> tuple[int, float]:
    """(video packets with data, average frame rate) of a file, by demuxing without decoding; a still
    image is a DecodeError."""
    import av

    with av.open(path) as c:
        if not c.streams.video:
            raise DecodeError("no video stream in the file (audio-only or not a video)")
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        n = 0
        for p in c.demux(s):
            if p.size > 0:
                n += 1
        reason = _still_image(c, s, n)
    if reason:
        raise NotAVideo(reason)
    return n, fps


def _pyav_frame_count(path: str) -> tuple[int, float]:
    """(frames announced by the packets, average frame rate); DecodeError when PyAV finds none."""
    try:
        n, fps = _pyav_count(path)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"PyAV could not read the file: {_one_line(e)}") from None
    if n < 1:
        raise DecodeError("PyAV found no video frames in the file")
    return n, fps


def decode_pyav(job: DecodeJob) -> Iterator[tuple]:
    """Decode with PyAV up to the last sampled frame. When fewer frames decode than the packets
    announced, the indices are re-derived once from the real count (a "reset" event)."""
    n, fps = _pyav_frame_count(job.path)
    for attempt in range(2):
        idx = job.indices(n, fps)
        decoded, height, width, times = yield from _pyav_pass(job, n, fps, idx)
        if decoded > int(idx.max()):
            ts = np.array([times[int(k)] for k in idx], dtype=np.float64)
            yield ("done", {"decoder": "pyav", "n_frames_meta": n, "n_frames_decoded": decoded, "fps": fps,
                            "duration": (n / fps) if fps > 0 else float("nan"), "height": height,
                            "width": width, "frame_indices": idx, "timestamps": ts})
            return
        if decoded < 1:
            raise DecodeError("PyAV decoded no frames")
        # fewer frames decode than the container announced: re-derive the indices from the real count
        if attempt == 0:
            yield ("reset", f"PyAV decoded {decoded} of {n} announced frames; indices re-derived")
            n = decoded
    raise DecodeError("PyAV frame count unstable between two passes")


def _pyav_pass(job: DecodeJob, n: int, fps: float, idx: np.ndarray):
    """One decode pass up to the last index: yields meta, beats and frames events; returns (frames
    decoded, height, width, {index: timestamp}). A stream broken part way ends the pass early."""
    import av

    want = np.unique(idx)
    last = int(want[-1])
    pending: dict[int, np.ndarray] = {}
    times: dict[int, float] = {}
    pos = wi = 0
    i = -1
    height = width = 0
    try:
        with av.open(job.path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            s.codec_context.thread_count = 1
            for i, frame in enumerate(c.decode(s)):
                if i == 0:
                    height, width = int(frame.height), int(frame.width)
                    yield ("meta", {"decoder": "pyav", "n_frames_meta": n, "fps": fps, "height": height,
                                    "width": width, "indices": idx})
                if i % 128 == 127:
                    yield ("beat",)
                if wi < len(want) and i == want[wi]:
                    pending[i] = preprocess_image(frame.to_image(), job.resize, job.crop, job.interpolation)
                    times[i] = float(frame.time) if frame.time is not None else float("nan")
                    wi += 1
                    end = int(np.searchsorted(idx, i, side="right"))
                    if end - pos >= MAX_FRAMES_PER_EVENT or wi == len(want):
                        pending = yield from _emit(idx, pos, end, pending)
                        pos = end
                if i >= last:
                    break
    except DecodeError:
        raise
    except Exception as e:
        if i < 0:
            raise DecodeError(f"PyAV could not decode any frame: {_one_line(e)}") from None
        # a stream broken part way: keep what decodes (the caller re-derives the indices)
    return i + 1, height, width, times


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; fresh after exec, unlike RUSAGE_CHILDREN)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else ""
    # decord puts a C++ backtrace after the message
    for line in msg:
        if "Error" in line or "error" in line:
            text = line.strip()
            break
    return f"{type(e).__name__}: {text}"[:300]


def decode_video(job: DecodeJob) -> Iterator[tuple]:
    """Decode one video as a stream of events (see module doc). Never raises."""
    try:
        _check_file(job.path)
    except DecodeError as e:
        yield ("error", str(e))
        return
    decord_reason = None
    if job.decoder in ("auto", "decord"):
        sent = False
        try:
            for ev in decode_decord(job):
                sent = True
                yield ev
            return
        except NotAVideo as e:
            yield ("error", str(e))
            return
        except Exception as e:
            decord_reason = str(e) if isinstance(e, DecodeError) else f"decord failed: {_one_line(e)}"
            if job.decoder == "decord":
                yield ("error", decord_reason)
                return
            if sent:
                yield ("reset", f"decord failed part way ({decord_reason}); PyAV fallback")
    try:
        yield from decode_pyav(job)
    except Exception as e:
        reason = str(e) if isinstance(e, DecodeError) else f"PyAV failed: {_one_line(e)}"
        if decord_reason and not isinstance(e, NotAVideo):
            reason = f"{reason} (decord: {decord_reason})"
        yield ("error", reason)


def decode_all(job: DecodeJob) -> tuple[Optional[np.ndarray], dict]:
    """Decode a whole video in this process: (frames uint8 (T, crop, crop, 3) | None, meta | {"error"})."""
    frames: list[np.ndarray] = []
    notes: list[str] = []
    for ev in decode_video(job):
        kind = ev[0]
        if kind == "frames":
            frames.append(ev[1])
        elif kind == "reset":
            frames.clear()
            notes.append(ev[1])
        elif kind == "done":
            meta = dict(ev[1])
            meta["notes"] = notes
            return np.concatenate(frames), meta
        elif kind == "error":
            return None, {"error": ev[1], "notes": notes}
    return None, {"error": "decoder ended without a result", "notes": notes}


# --------------------------------------------------------------------------- killable workers

def _worker_entry(fd: int) -> None:
    """Entry point of a decode worker process (started by DecodePool with the socket's fd)."""
    from multiprocessing.connection import Connection
    _worker_main(Connection(fd))


def _worker_main(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent at a safe point
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        for ev in decode_video(job):
            if ev[0] == "done":
                ev = ("done", {**ev[1], "decode_peak_rss_mb": peak_rss_mb()})
            conn.send(ev)


class DecodePool:
    """Decode jobs in `num_workers` child processes; a worker that makes no progress for
    `timeout_s` (a hung decoder holds its GIL and ignores signals) is killed and the video is
    retried with PyAV. Yields (job, event) pairs; events of different videos interleave when
    num_workers > 1. Memory is bounded by the event queue (max_events)."""

    def __init__(self, num_workers: int = 1, timeout_s: float = 60.0, max_events: int = 16,
                 max_jobs_per_worker: int = 200):
        self.num_workers = max(1, int(num_workers))
        self.timeout_s = float(timeout_s)
        self.max_events = max_events
        self.max_jobs_per_worker = max_jobs_per_worker
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: set = set()
        self._lock = threading.Lock()

    # -- process management
    def _spawn(self):
        """Start one decode worker process; returns (process, connection)."""
        # A fresh interpreter (not multiprocessing's spawn, which re-imports the caller's __main__):
        # works from any caller (scripts, stdin, notebooks) and never inherits torch's threads.
        a, b = socket.socketpair()
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        fd = b.fileno()
        p = subprocess.Popen([sys.executable, "-c", f"from extract.decode import _worker_entry; _worker_entry({fd})"],
                             pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL, close_fds=True)
        b.close()
        conn = Connection(a.detach())
        with self._lock:
            self._procs.add(p)
        return p, conn

    def _kill(self, p, conn) -> None:
        """Close the connection and kill the worker process (either may be None)."""
        try:
            if conn is not None:
                conn.close()
        except Exception:
            pass
        if p is not None:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            with self._lock:
                self._procs.discard(p)

    def _put(self, outq: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                outq.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self, conn, p, job, outq, state) -> str:
        """Forward the worker's events of `job` to `outq` until the video ends: "ok", "timeout" (no event
        for timeout_s), "died" (the worker is gone) or "stopped" (the pool is closing)."""
        while not self._stop.is_set():
            try:
                ready = conn.poll(self.timeout_s)
            except (EOFError, OSError):
                return "died"
            if not ready:
                return "timeout"
            try:
                ev = conn.recv()
            except (EOFError, OSError):
                return "died"
            if ev[0] == "beat":
                continue
            if ev[0] == "meta":
                state["decoder"] = ev[1].get("decoder")
            if not self._put(outq, (job, ev)):
                return "stopped"
            if ev[0] in ("done", "error"):
                return "ok"
        return "stopped"

    def _slot(self, jobq: queue.Queue, outq: queue.Queue) -> None:
        """One worker slot (a thread): take jobs until the queue is empty, (re)spawning its worker process
        every max_jobs_per_worker jobs or after a failure; a decord timeout or crash under decoder=auto
        resets the video and retries it with PyAV, any other failure is the video's error event."""
        p = conn = None
        served = 0
        try:
            while not self._stop.is_set():
                try:
                    job = jobq.get_nowait()
                except queue.Empty:
                    break
                mode = job.decoder
                while not self._stop.is_set():
                    if p is None or served >= self.max_jobs_per_worker:
                        self._kill(p, conn)
                        p, conn = self._spawn()
                        served = 0
                    state = {"decoder": "decord" if mode in ("auto", "decord") else "pyav"}
                    try:
                        conn.send(dataclasses.replace(job, decoder=mode))
                        outcome = self._pump(conn, p, job, outq, state)
                    except (BrokenPipeError, EOFError, OSError):
                        outcome = "died"
                    served += 1
                    if outcome in ("ok", "stopped"):
                        break
                    code = None
                    if outcome == "died":
                        try:
                            code = p.wait(timeout=2)
                        except subprocess.TimeoutExpired:
                            pass
                    self._kill(p, conn)
                    p = conn = None
                    which = state["decoder"]
                    if outcome == "timeout":
                        why = f"{which} made no progress for {self.timeout_s:g} s (killed)"
                    else:
                        why = f"{which} decode process died (exit code {code})"
                    if which == "decord" and mode in ("auto",):
                        self._put(outq, (job, ("reset", why + "; PyAV fallback")))
                        mode = "pyav"
                        continue
                    self._put(outq, (job, ("error", why)))
                    break
        finally:
            self._kill(p, conn)
            self._put(outq, (None, ("__slot_done__",)))

    def imap(self, jobs: Iterable[DecodeJob]) -> Iterator[tuple[DecodeJob, tuple]]:
        """Decode `jobs` on up to num_workers slots; yields (job, event) as the events arrive (the events
        of one video in order, videos interleaved). Closing the iterator stops the pool."""
        jobq: queue.Queue = queue.Queue()
        n = 0
        for j in jobs:
            jobq.put(j)
            n += 1
        if n == 0:
            return
        outq: queue.Queue = queue.Queue(maxsize=self.max_events)
        slots = min(self.num_workers, n)
        self._threads = [threading.Thread(target=self._slot, args=(jobq, outq), daemon=True,
                                          name=f"extract-decode-slot{k}") for k in range(slots)]
        for t in self._threads:
            t.start()
        done = 0
        try:
            while done < slots:
                job, ev = outq.get()
                if ev[0] == "__slot_done__":
                    done += 1
                    continue
                yield job, ev
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            self._kill(p, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
