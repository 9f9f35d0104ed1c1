"""Import released per-video features (`<npy_dir>/<video_id>.npy`, shape (frames, dim)) into the store.

Every file is checked: present, readable without pickle, 2-D, at least one frame, a float dtype,
the common feature dim, no NaN/Inf (never stored), fits the store dtype. Problems are per-file
failures with the reason; `npy_report.csv` lists every file of the run.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np


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


def prepare_npy(cfg, todo: list, stage_dir: Path) -> NpyPlan:
    d = Path(cfg.npy_dir)
    items = []
    for vid, _ in todo:
        f = d / f"{vid}.npy"
        it = _Item(vid, f)
        if not f.is_file():
            it.problem = f"missing file {f}"
        else:
            try:
                a = np.load(f, mmap_mode="r", allow_pickle=False)
                it.shape, it.dtype = tuple(a.shape), str(a.dtype)
                del a
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
    unused = sum(1 for p in d.glob("*.npy") if p.name not in wanted)
    return NpyPlan(items, dim, stage_dir / "npy_report.csv", d, unused)


def run_npy(plan: NpyPlan, sink, stop) -> None:
    rows = []
    for it in plan.items:
        if stop.is_set():
            break
        status, problem, notes = "failed", it.problem, []
        if problem is None:
            try:
                a = np.load(it.file, allow_pickle=False)
            except Exception as e:
                a, problem = None, f"unreadable .npy ({type(e).__name__}: {str(e)[:150]})"
            if a is not None:
                bad_nan, bad_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
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
