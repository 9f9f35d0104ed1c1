"""Benchmarks of the extract stage (``pipeline bench extract`` and ``bench store``; see docs/benchmarks.md).

Both measure ratios inside one run against a reference way of doing the same work, repeat each
measurement (min and median of >= 3) and return a JSON-serialisable dict. Defaults are small so
each finishes in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

import numpy as np


def _stats(xs: list[float]) -> dict:
    """min, median and every run of a list of seconds."""
    return {"min": round(min(xs), 4), "median": round(statistics.median(xs), 4), "runs": [round(x, 4) for x in xs]}


def make_bench_video(path: Path, width: int, height: int, seconds: float, fps: int = 30, gop: int = 60,
                     seed: int = 0) -> str:
    """A synthetic H.264 clip (moving gradient + texture), libx264 veryfast crf 23 with B-frames."""
    import av

    path = Path(path)
    if path.exists():
        return str(path)
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 60, (height, width + 64, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width + 64]
    grad = np.stack([(xx * 255 // (width + 64)), (yy * 255 // height), ((xx + yy) % 256)], -1).astype(np.uint8)
    base = (grad // 2 + tex).astype(np.uint8)
    tmp = path.with_name(path.name + ".partial.mp4")
    c = av.open(str(tmp), "w")
    s = c.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23", "g": str(gop), "bf": "2"})
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    for i in range(int(seconds * fps)):
        off = (i * 2) % 64
        img = np.ascontiguousarray(base[:, off:off + width])
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    os.replace(tmp, path)
    return str(path)


def _jpeg_route(path: str, t: int, resize: int, crop: int, tmpdir: Path, use_ffmpeg: bool) -> np.ndarray:
    """The reference route: every frame -> JPEG on disk (ffmpeg -qscale:v 2, or PyAV+PIL q=95),
    then load the T sampled JPEGs and preprocess them."""
    from PIL import Image

    from extract.decode import preprocess_image
    from extract.sampling import fixed_indices

    d = tmpdir / "frames"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    if use_ffmpeg:
        subprocess.run(["ffmpeg", "-loglevel", "error", "-threads", "1", "-i", path, "-qscale:v", "2",
                        str(d / "img_%05d.jpg")], check=True)
    else:
        import av

        with av.open(path) as c:
            s = c.streams.video[0]
            s.codec_context.thread_count = 1
            for i, fr in enumerate(c.decode(s)):
                fr.to_image().save(d / f"img_{i + 1:05d}.jpg", quality=95)
    files = sorted(d.iterdir())
    idx = fixed_indices(len(files), t)
    out = np.stack([preprocess_image(Image.open(files[i]), resize, crop) for i in idx])
    shutil.rmtree(d)
    return out


_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys, pandas as pd
    from pathlib import Path
    from extract.config import ExtractConfig
    from extract.stage import run_extract
    cfg = ExtractConfig(**json.loads(sys.argv[3]))
    from extract.decode import DecodePool, peak_rss_mb
    from extract.jobs import make_job
    run_extract(cfg, pd.DataFrame({"video_id": ["long"], "path": [sys.argv[1]]}), Path(sys.argv[2]), progress=False)
    worker = None
    with DecodePool(1, 600) as pool:  # the same decode again, to read the worker's own peak
        for _, ev in pool.imap([make_job(cfg, "long", sys.argv[1])]):
            if ev[0] == "done":
                worker = ev[1]["decode_peak_rss_mb"]
    print(json.dumps({"main_mb": peak_rss_mb(), "decode_worker_mb": worker}))
""")


def _peak_rss(video: str, cfg_kwargs: dict, tmp: Path) -> dict:
    """Peak RSS (MB) of a fresh process running the stage on `video`, and of its decode worker."""
    script = tmp / "rss_probe.py"
    script.write_text(_RSS_SCRIPT)
    out = tmp / f"rss-{Path(video).stem}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout holding extract/
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, str(script), video, str(out), json.dumps(cfg_kwargs)], capture_output=True,
                       text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_extract(work_dir: Optional[str] = None, *, num_videos: int = 6, seconds: float = 10.0,
                  width: int = 640, height: int = 360, num_frames: int = 32, backbone: str = "efficientnet_lite0",
                  weights: Optional[str] = None, pretrained: bool = True, resize: int = 256, crop: int = 224,
                  batch_size: int = 32, repeats: int = 3, long_seconds: tuple = (10.0, 40.0),
                  long_size: tuple = (1280, 720), rss: bool = True, device: str = "cpu") -> dict:
    """decode-only, model-only and whole-stage frames/s on the same videos; the JPEG route; peak RSS."""
    import torch

    from extract.config import ExtractConfig
    from extract.encoder import encoder_from_config

    own_tmp = work_dir is None
    wd = Path(work_dir or tempfile.mkdtemp(prefix="vltr-bench-extract-"))
    wd.mkdir(parents=True, exist_ok=True)
    try:
        vids = [make_bench_video(wd / f"clip{i}_{width}x{height}_{seconds:g}s.mp4", width, height, seconds, seed=i)
                for i in range(num_videos)]
        cfg_kwargs = dict(num_frames=num_frames, resize=resize, crop=crop, batch_size=batch_size, backbone=backbone,
                          weights=weights, pretrained=pretrained, device=device, videos_per_shard=64)
        cfg = ExtractConfig(**cfg_kwargs)
        enc = encoder_from_config(cfg)
        use_ffmpeg = shutil.which("ffmpeg") is not None
        times = _time_extract_routes(cfg, enc, vids, wd, repeats, use_ffmpeg)
        res = {
            "bench": "extract", "backbone": backbone, "device": str(enc.device), "torch_threads": torch.get_num_threads(),
            "videos": len(vids), "video": f"{width}x{height} {seconds:g}s 30fps H.264", "frames_per_video": num_frames,
            "resize": resize, "crop": crop, "repeats": repeats,
            **_extract_rates(times, num_frames * len(vids)),
            "jpeg_route_tool": "ffmpeg" if use_ffmpeg else "PyAV+PIL (no ffmpeg binary)",
            "notes": "pipeline_s is the whole run_extract call (model load, decode workers, HDF5 write, videos.parquet)",
        }
        if rss:
            res.update(_rss_section(cfg_kwargs, wd, long_seconds, long_size))
        return res
    finally:
        if own_tmp:
            shutil.rmtree(wd, ignore_errors=True)


def _time_extract_routes(cfg, enc, vids: list, wd: Path, repeats: int, use_ffmpeg: bool) -> dict:
    """Seconds of each route over all videos, `repeats` times: decode only, model only, the whole
    stage (run_extract) and the JPEG route -> {"decode": [...], "model": [...], "pipeline": [...], "jpeg": [...]}."""
    import pandas as pd

    from extract.decode import decode_all
    from extract.jobs import make_job
    from extract.stage import run_extract

    jobs = [make_job(cfg, f"c{i}", p) for i, p in enumerate(vids)]
    times: dict[str, list[float]] = {"decode": [], "model": [], "pipeline": [], "jpeg": []}
    for r in range(repeats):
        t0 = time.perf_counter()
        decoded = [decode_all(j)[0] for j in jobs]
        times["decode"].append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        for fr in decoded:
            enc.embed_video(fr)
        times["model"].append(time.perf_counter() - t0)

        stage = wd / f"stage-{r}"
        shutil.rmtree(stage, ignore_errors=True)
        df = pd.DataFrame({"video_id": [j.video_id for j in jobs], "path": vids})
        t0 = time.perf_counter()
        run_extract(cfg, df, stage, progress=False)
        times["pipeline"].append(time.perf_counter() - t0)
        shutil.rmtree(stage, ignore_errors=True)

        t0 = time.perf_counter()
        for p in vids:
            _jpeg_route(p, cfg.num_frames, cfg.resize, cfg.crop, wd, use_ffmpeg)
        times["jpeg"].append(time.perf_counter() - t0)
    return times


def _extract_rates(times: dict, total_frames: int) -> dict:
    """Per-route seconds, frames/s and the efficiency ratios of the whole stage."""
    decode_t, model_t, pipe_t, jpeg_t = times["decode"], times["model"], times["pipeline"], times["jpeg"]
    d, m, p, j = (statistics.median(x) for x in (decode_t, model_t, pipe_t, jpeg_t))
    return {
        "decode_s": _stats(decode_t), "model_s": _stats(model_t), "pipeline_s": _stats(pipe_t),
        "jpeg_route_decode_s": _stats(jpeg_t),
        "decode_fps": round(total_frames / d, 2), "model_fps": round(total_frames / m, 2),
        "pipeline_fps": round(total_frames / p, 2),
        "efficiency_cpu": round(p / (d + m), 4),
        "efficiency_cpu_min": round(min(pipe_t) / (min(decode_t) + min(model_t)), 4),
        "efficiency_gpu": round((total_frames / p) / min(total_frames / d, total_frames / m), 4),
        "vs_jpeg_route": round(j / d, 3),
    }


def _rss_section(cfg_kwargs: dict, wd: Path, long_seconds: tuple, long_size: tuple) -> dict:
    """Peak RSS of the main process and of a decode worker on a short and a long high-resolution video."""
    rows = {}
    for sec in long_seconds:
        v = make_bench_video(wd / f"long_{long_size[0]}x{long_size[1]}_{sec:g}s.mp4", long_size[0], long_size[1],
                             sec, gop=250, seed=7)
        rows[f"{sec:g}s"] = _peak_rss(v, dict(cfg_kwargs, num_frames=150), wd)
    ks = list(rows)
    return {
        "peak_rss_mb": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in rows.items()},
        "peak_rss_ratio_long_vs_short": {
            "main": round(rows[ks[-1]]["main_mb"] / rows[ks[0]]["main_mb"], 3),
            "decode_worker": round(rows[ks[-1]]["decode_worker_mb"] / max(1e-9, rows[ks[0]]["decode_worker_mb"]), 3)},
        "peak_rss_video": f"{long_size[0]}x{long_size[1]} H.264, {', '.join(ks)}, 150 frames sampled",
    }


def _drop_cache(paths) -> None:
    """Drop the files from the page cache (cold reads); a no-op where fadvise is unavailable."""
    for p in paths:
        try:
            fd = os.open(str(p), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            pass


def _disk_bytes(paths) -> int:
    """Bytes the files take on disk (allocated blocks)."""
    return int(sum(os.stat(p).st_blocks * 512 for p in paths))


def bench_store(work_dir: Optional[str] = None, *, num_videos: int = 256, frames: int = 150, dim: int = 2048,
                batch_videos: int = 128, sample_frames: int = 60, batches: int = 4, repeats: int = 3,
                videos_per_shard: int = 64, seed: int = 0) -> dict:
    """Training-style reads (batch_videos x sample_frames random sorted rows per video) from the
    product's store against one float32 .npy per video loaded with np.load; cold and warm."""
    own_tmp = work_dir is None
    wd = Path(work_dir or tempfile.mkdtemp(prefix="vltr-bench-store-"))
    try:
        store_dir, npy_dir = wd / "store", wd / "npy"
        ids = _write_store_and_npy(store_dir, npy_dir, num_videos, frames, dim, videos_per_shard, seed)
        store_files = sorted(store_dir.glob("shard-*.h5"))
        npy_files = sorted(npy_dir.glob("*.npy"))
        os.sync()
        shape = (batches, batch_videos, sample_frames)
        readers = {"store": (_StoreReads(store_dir, shape), store_files),
                   "store_f32": (_StoreReads(store_dir, shape, np.float32), store_files),
                   "npy": (_NpyReads(npy_dir, shape, dim), npy_files)}
        res_t, open_t = _time_reads(readers, ids, batches * batch_videos, repeats, seed)
        med = {k: statistics.median(v) for k, v in res_t.items()}
        disk_store, disk_npy = _disk_bytes(store_files), _disk_bytes(npy_files)
        return {
            "bench": "store", "videos": num_videos, "frames": frames, "dim": dim, "batch": f"{batch_videos}x{sample_frames}",
            "batches_per_measure": batches, "repeats": repeats,
            "seconds": {k: _stats(v) for k, v in res_t.items()},
            "batches_per_s": {k: round(batches / v, 3) for k, v in med.items()},
            "speedup_cold": round(med["npy_cold"] / med["store_cold"], 3),
            "speedup_warm": round(med["npy_warm"] / med["store_warm"], 3),
            "speedup_cold_f32_output": round(med["npy_cold"] / med["store_f32_cold"], 3),
            "speedup_warm_f32_output": round(med["npy_warm"] / med["store_f32_warm"], 3),
            "store_output": "float16 as stored (training converts on the device); *_f32_output: converted to float32",
            "store_open_s": _stats(open_t),
            "disk_bytes_store": disk_store, "disk_bytes_npy": disk_npy,
            "disk_ratio": round(disk_store / disk_npy, 4),
            "cold_cache": "posix_fadvise(DONTNEED) on every file before the cold pass",
        }
    finally:
        if own_tmp:
            shutil.rmtree(wd, ignore_errors=True)


def _write_store_and_npy(store_dir: Path, npy_dir: Path, num_videos: int, frames: int, dim: int,
                         videos_per_shard: int, seed: int) -> list[str]:
    """The same random float32 features as a float16 store and as one .npy per video; returns the ids."""
    from extract.store import ShardWriter, shard_name

    for d in (store_dir, npy_dir):
        shutil.rmtree(d, ignore_errors=True)
    store_dir.mkdir(parents=True)
    npy_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = [f"vid{i:06d}" for i in range(num_videos)]
    w = None
    for i, v in enumerate(ids):
        x = (rng.standard_normal((frames, dim), dtype=np.float32) * 0.5).astype(np.float32)
        np.save(npy_dir / f"{v}.npy", x)
        if w is None:
            w = ShardWriter(store_dir, shard_name(i // videos_per_shard), dim, "float16", {"backbone": "synthetic"})
        w.add(v, x, {"decoder": "synthetic"})
        if len(w) >= videos_per_shard:
            w.close()
            w = None
    if w is not None:
        w.close()
    return ids


class _StoreReads:
    """Training batches through FeatureStore.sample_batch (in `dtype`, else as stored)."""

    def __init__(self, store_dir: Path, shape: tuple, dtype=None):
        self.dir, self.dtype = store_dir, dtype
        self.batches, self.batch_videos, self.sample_frames = shape
        self.store = None

    def open(self) -> Optional[float]:
        """Open the store; returns the seconds it took."""
        from extract.store import FeatureStore

        t0 = time.perf_counter()
        self.store = FeatureStore(self.dir)
        return time.perf_counter() - t0

    def read(self, order: list, r: np.random.Generator) -> None:
        for b in range(self.batches):
            batch = order[b * self.batch_videos:(b + 1) * self.batch_videos]
            self.store.sample_batch(batch, self.sample_frames, r, dtype=self.dtype)

    def close(self) -> None:
        """Unmap, so that the page cache of the shards can really be dropped."""
        self.store = None


class _NpyReads:
    """The reference: the same batches from one float32 .npy per video, loaded whole with np.load."""

    def __init__(self, npy_dir: Path, shape: tuple, dim: int):
        self.dir, self.dim = npy_dir, dim
        self.batches, self.batch_videos, self.sample_frames = shape

    def open(self) -> Optional[float]:
        return None

    def read(self, order: list, r: np.random.Generator) -> None:
        for b in range(self.batches):
            batch = order[b * self.batch_videos:(b + 1) * self.batch_videos]
            out = np.empty((len(batch), self.sample_frames, self.dim), np.float32)
            for k, v in enumerate(batch):
                a = np.load(self.dir / f"{v}.npy")
                out[k] = a[np.sort(r.integers(0, len(a), self.sample_frames))]

    def close(self) -> None:
        pass


def _time_reads(readers: dict, ids: list, n_order: int, repeats: int, seed: int) -> tuple[dict, list]:
    """Cold (page cache dropped) and warm seconds of each reader on the same random video order, per
    repeat: ({"<name>_cold"|"<name>_warm": [s, ...]}, store open seconds)."""
    open_t: list[float] = []
    res_t: dict[str, list[float]] = {f"{name}_{when}": [] for name in readers for when in ("cold", "warm")}
    for rep in range(repeats):
        rr = np.random.default_rng(seed + rep)
        order = [ids[i] for i in rr.integers(0, len(ids), n_order)]
        for name, (reader, files) in readers.items():
            _drop_cache(files)
            opened = reader.open()
            if opened is not None:
                open_t.append(opened)
            t0 = time.perf_counter()
            reader.read(order, np.random.default_rng(rep))
            res_t[f"{name}_cold"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reader.read(order, np.random.default_rng(rep + 100))
            res_t[f"{name}_warm"].append(time.perf_counter() - t0)
            reader.close()
    return res_t, open_t
