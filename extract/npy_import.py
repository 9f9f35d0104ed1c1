"""Import released per-video features (`<npy_dir>/<video_id>.npy`, shape (frames, dim)) into the store.

Every file is checked: present, readable without pickle, 2-D, at least one frame, a float dtype,
the common feature dim, no NaN/Inf (never stored), fits the store dtype. Problems are per-file
failures with the reason; `npy_report.csv` lists every file of the run.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import io
import os
from pathlib import Path
from typing import Optional

import numpy as np

HEADER_PROBE = 4096  # bytes read to find an .npy header (numpy pads headers to 64 bytes; 128 is usual)


@dataclasses.dataclass
class _Item:
    video_id: str
    file: Path
    problem: Optional[str] = None
    shape: tuple = ()
    dtype: str = ""


@dataclasses.dataclass
class NpyPlan:
    items: list
    dim: int
    report_path: Path
    npy_dir: Path
    unused_files: int


@functools.lru_cache(maxsize=1024)
def _parse_header(raw: bytes) -> tuple:
    """``(shape, fortran_order, dtype)`` of a raw .npy header (magic to the end of the header dict).

    Cached: numpy parses the header dict with ``ast.literal_eval`` (~100 us), and a set of released
    features has only a few distinct headers (one per frame count).
    """
    handle = io.BytesIO(raw)
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")


def _header(head: bytes, path: Path) -> tuple:
    """``(shape, dtype, Fortran order, data offset)`` from the first bytes of an .npy file."""
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy file (no NUMPY magic)")
    size = 10 + int.from_bytes(head[8:10], "little") if head[6] == 1 else 12 + int.from_bytes(head[8:12], "little")
    if len(head) < size:
        with open(path, "rb") as handle:
            head = handle.read(size)
    shape, fortran, dtype = _parse_header(bytes(head[:size]))
    if dtype.hasobject:
        raise ValueError("the array holds Python objects (pickle), which is refused")
    return tuple(shape), dtype, bool(fortran), size


def load_npy(path: Path) -> np.ndarray:
    """The array of an .npy file, read with one ``read`` (never unpickles; a short file is refused)."""
    with open(path, "rb") as handle:
        data = handle.read()
    shape, dtype, fortran, offset = _header(data, path)
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(f"file truncated ({len(data) - offset} of {count * dtype.itemsize} data bytes)")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def prepare_npy(cfg, todo: list, stage_dir: Path) -> NpyPlan:
    """Check every listed file's header (present, readable, 2-D, float, the common dim) without
    reading its data; problems become per-file failures."""
    d = Path(cfg.npy_dir)
    items = []
    for vid, _ in todo:
        f = d / f"{vid}.npy"
        it = _Item(vid, f)
        try:
            with open(f, "rb") as handle:
                shape, dtype, _, _ = _header(handle.read(HEADER_PROBE), f)
            it.shape, it.dtype = shape, str(dtype)
        except (FileNotFoundError, IsADirectoryError):
            it.problem = f"missing file {f}"
        except Exception as e:
            it.problem = f"unreadable .npy ({type(e).__name__}: {str(e)[:150]})"
        if it.problem is None:
            if len(it.shape) != 2:
                it.problem = f"array of shape {it.shape}; expected 2-D (frames, dim)"
            elif it.shape[0] == 0:
                it.problem = "empty (0 frames)"
            elif not np.issubdtype(np.dtype(it.dtype), np.floating):
                it.problem = f"dtype {it.dtype} is not a float type"
        items.append(it)
    dims = collections.Counter(it.shape[1] for it in items if it.problem is None)
    dim = int(cfg.npy_dim or (dims.most_common(1)[0][0] if dims else 1))
    for it in items:
        if it.problem is None and it.shape[1] != dim:
            why = "extract.npy_dim" if cfg.npy_dim else "most files"
            it.problem = f"feature dim {it.shape[1]} differs from {dim} ({why})"
    wanted = {f"{vid}.npy" for vid, _ in todo}
    with os.scandir(d) as entries:  # names only: no Path object per file
        unused = sum(1 for e in entries if e.name.endswith(".npy") and e.name not in wanted)
    return NpyPlan(items, dim, stage_dir / "npy_report.csv", d, unused)


def run_npy(plan: NpyPlan, sink, stop) -> None:
    """Import the planned .npy files into `sink` (a NaN/Inf array or an unreadable file fails its video)
    until `stop` is set, then write npy_report.csv (one row per file)."""
    rows = []
    for it in plan.items:
        if stop.is_set():
            break
        status, problem, notes = "failed", it.problem, []
        if problem is None:
            try:
                a = load_npy(it.file)
            except Exception as e:
                a, problem = None, f"unreadable .npy ({type(e).__name__}: {str(e)[:150]})"
            if a is not None:
                finite = bool(np.isfinite(a).all())  # one pass; NaN and Inf are counted only when there are any
                bad_nan, bad_inf = (0, 0) if finite else (int(np.isnan(a).sum()), int(np.isinf(a).sum()))
                if bad_nan or bad_inf:
                    problem = f"contains {bad_nan} NaN and {bad_inf} Inf values (not stored)"
                else:
                    if a.dtype == np.float64:
                        notes.append("converted from float64")
                    sink.ok(it.video_id, a, {"decoder": "npy", "frame_indices": np.arange(len(a)), "notes": notes,
                                             "n_frames_meta": len(a), "n_frames_decoded": len(a),
                                             "path": str(it.file)})
                    # sink.ok records a failure itself when the store refuses the array (e.g. fp16 overflow)
                    ok = it.video_id in sink.ok_now
                    rows.append((it.video_id, str(it.file), "ok" if ok else "failed", it.shape, it.dtype,
                                 "; ".join(notes) if ok else sink.failed_now.get(it.video_id)))
                    continue
        if status != "ok":
            sink.fail(it.video_id, f"{it.file.name}: {problem}", {"path": str(it.file)})
        rows.append((it.video_id, str(it.file), status, it.shape, it.dtype, problem or ("; ".join(notes) or None)))
    from manifests.files import atomic_path  # an OSError (disk full) becomes a UserError naming the file

    with atomic_path(plan.report_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["video_id", "file", "status", "shape", "dtype", "problem"])
            for r in rows:
                w.writerow([r[0], r[1], r[2], "x".join(map(str, r[3])), r[4], r[5] or ""])
