"""``python -m pipeline bench scale``: the pipeline at VideoLT's sizes, measured stage by stage.

A synthetic dataset of VideoLT's shape at several training-set sizes N goes through every stage,
each as its own ``python -m pipeline run`` child process, so its wall time, CPU time and peak RSS
(``wait4``) are the stage's alone; the disk it leaves is summed from its files' blocks. Time and
memory are fitted as ``value ~ N^k`` on log-log axes. Features are small (default 8 x 64 float16 per
video) so that the full set fits a small machine (docs/benchmarks.md, "Scale").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from manifests.markdown import markdown_table

# VideoLT (Zhang et al., ICCV 2021): videos per split, classes, train imbalance, multi-label share.
VIDEOLT = {"train": 179_334, "val": 25_619, "test": 51_239, "classes": 1004, "imbalance": 43.0,
           "multi_label_share": 0.08}
DEFAULT_SIZES = (10_000, 50_000, VIDEOLT["train"])
METHODS = ("baseline", "move")
# Model settings of the measured epoch: the product defaults except MOVE's PSA width, which the
# reference ties to 2048-d features (null = feature dim / heads, as lt_bench does for small features).
TRAIN_SETTINGS = {"epochs": 1, "eval_every": 1, "batch_size": 128, "lr_steps": [], "cache": "auto"}
STREAM_STAGE = "train/baseline, cache none"  # the baseline epoch again, features read from the store's shards


def scale_spec(n_train: int, frames: int = 8, dim: int = 64, classes: int = VIDEOLT["classes"], seed: int = 0):
    """A :class:`SyntheticSpec` with VideoLT's shape and about ``n_train`` training videos.

    ``max_per_class`` (the head class's count) is the smallest whose exponential profile over
    ``classes`` classes holds at least ``n_train`` videos; val/test keep VideoLT's proportions to train.
    """
    from pipeline.synthetic_config import SyntheticSpec, train_profile

    base = SyntheticSpec(num_classes=classes, imbalance=VIDEOLT["imbalance"], max_per_class=1,
                         val_fraction=VIDEOLT["val"] / VIDEOLT["train"],
                         test_fraction=VIDEOLT["test"] / VIDEOLT["train"], min_val=1, min_test=1,
                         multi_label_share=VIDEOLT["multi_label_share"], frames_min=frames, frames_max=frames,
                         dim=dim, seed=seed)
    low, high = 1, max(2, n_train)
    while low < high:
        middle = (low + high) // 2
        if train_profile(base.model_copy(update={"max_per_class": middle})).sum() < n_train:
            low = middle + 1
        else:
            high = middle
    return base.model_copy(update={"max_per_class": low})


def scale_config(spec, work_dir: Path) -> dict:
    """The run config of one size: the synthetic set, the given split, one epoch of training."""
    return {"work_dir": str(work_dir), "seed": 0,
            "dataset": {"format": "synthetic", "root": str(Path(work_dir) / "synthetic-data"),
                        "synthetic": spec.model_dump()},
            "split": {"profile": "given"},
            "train": {**TRAIN_SETTINGS, "train_frames": spec.frames_max, "eval_frames": spec.frames_max},
            "move": {"psa_dim": None}}


def measure(command: list, env: dict | None = None) -> dict:
    """Run ``command`` as a child process: wall s, CPU s (user + system, with waited-for children)
    and peak RSS MB (the largest of the child and the processes it waited for, from ``wait4``)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()  # drained while it runs, so a chatty child never blocks
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(command[-6:])} failed ({process.returncode}): " + " | ".join(tail))
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # Linux reports KiB


def disk_usage(path: Path) -> dict:
    """Bytes on disk (allocated blocks) and the number of files under ``path``."""
    total, files = 0, 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
                files += 1
            except FileNotFoundError:
                pass
    return {"disk_mb": round(total / 2**20, 1), "files": files}


def stage_commands(config_file: Path, spec_file: Path, data_dir: Path) -> list:
    """``(stage name, command, folder whose disk use it adds)`` in pipeline order."""
    run = [sys.executable, "-m", "pipeline", "run", "--config", str(config_file), "--no-progress", "-q"]
    generate = [sys.executable, "-c", "import sys; from pathlib import Path; from pipeline.data.synthetic_data import "
                "generate_synthetic; from pipeline.synthetic_config import SyntheticSpec; "
                "generate_synthetic(sys.argv[2], SyntheticSpec.model_validate_json(Path(sys.argv[1]).read_text()))",
                str(spec_file), str(data_dir)]
    work = config_file.parent
    stages = [("generate", generate, data_dir), ("ingest", run + ["--stage", "ingest"], work / "ingest"),
              ("extract", run + ["--stage", "extract"], work / "extract"),
              ("split", run + ["--stage", "split"], work / "split")]
    for method in METHODS:
        stages.append((f"train/{method}", run + ["--stage", "train", "--set", f"train.method={method}"],
                       work / "train" / method))
    for method in METHODS:
        stages.append((f"evaluate/{method}", run + ["--stage", "evaluate", "--set", f"train.method={method}"],
                       work / "evaluate" / method))
    # last (it replaces train/baseline's outputs): the same epoch with features streamed from the store
    stages.append((STREAM_STAGE, run + ["--stage", "train", "--force", "--set", "train.method=baseline", "--set",
                                        "train.cache=none"], work / "train" / "baseline"))
    return stages


def run_size(n_train: int, root: Path, frames: int, dim: int, classes: int, stages=None) -> dict:
    """Every stage (or those named in ``stages``) at one size; returns the set's sizes and a row per stage."""
    import yaml

    spec = scale_spec(n_train, frames, dim, classes)
    work = Path(root) / f"n{n_train}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(spec.model_dump_json(), encoding="utf-8")
    (work / "config.yaml").write_text(yaml.safe_dump(scale_config(spec, work)), encoding="utf-8")
    rows = {}
    for name, command, folder in stage_commands(work / "config.yaml", work / "spec.json", work / "synthetic-data"):
        if stages is None or name in stages:
            rows[name] = {**measure(command), **disk_usage(folder)}
    meta = json.loads((work / "synthetic-data" / "synthetic.json").read_text(encoding="utf-8"))
    return {"n_target": n_train, "videos": meta["videos"], "multi_label_videos": meta["multi_label_videos"],
            "max_per_class": spec.max_per_class, "stages": rows,
            "work_dir_disk_mb": disk_usage(work)["disk_mb"]}


def loader_rate(store_dir: str, batch: int = 128, frames: int = 60, batches: int = 20) -> dict:
    """Training batches per second read from the store with ``cache=none`` (random videos, sorted
    random frames, float16 -> float32), after one warm-up batch."""
    from extract.store import FeatureStore
    from train.data import FeatureBank, train_frames

    bank = FeatureBank(store_dir, FeatureStore(store_dir).ids(), cache="none")
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, len(bank.video_ids), batch) for _ in range(batches + 1)]
    bank.clips(draws[0], train_frames(bank.lengths[draws[0]], frames, rng))
    started = time.perf_counter()
    for positions in draws[1:]:
        x = bank.clips(positions, train_frames(bank.lengths[positions], frames, rng))
    seconds = time.perf_counter() - started
    return {"batches_per_s": round(batches / seconds, 2), "batch_mb": round(x.numel() * 4 / 2**20, 1),
            "batch": batch, "frames": frames}


def probe_real_shape(root: Path, frames: int = 150, dim: int = 2048, per_class: int = 48) -> dict:
    """Generate, ingest and import a few hundred videos of the real feature shape (``frames`` x
    ``dim``), and time training batches read from their store: the per-video costs that grow with
    the feature size, for the extrapolation."""
    import yaml

    from pipeline.synthetic_config import SyntheticSpec

    spec = SyntheticSpec(num_classes=8, imbalance=1.0, max_per_class=per_class, frames_min=frames,
                         frames_max=frames, dim=dim, min_val=1, min_test=1)
    work = Path(root) / "probe"
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(spec.model_dump_json(), encoding="utf-8")
    (work / "config.yaml").write_text(yaml.safe_dump(scale_config(spec, work)), encoding="utf-8")
    stages = {}
    for name, command, folder in stage_commands(work / "config.yaml", work / "spec.json", work / "synthetic-data")[:3]:
        stages[name] = {**measure(command), **disk_usage(folder)}
    probe = [sys.executable, "-c", "import json, sys; from pipeline.bench.scale_bench import loader_rate; "
             "print(json.dumps(loader_rate(sys.argv[1])))", str(work / "extract")]
    loader = json.loads(subprocess.run(probe, check=True, capture_output=True, text=True).stdout)
    videos = sum(json.loads((work / "synthetic-data" / "synthetic.json").read_text())["videos"].values())
    return {"videos": videos, "frames": frames, "dim": dim, "stages": stages, "loader": loader}


def growth_exponent(sizes, values) -> float | None:
    """k of ``value ~ N^k``: the least-squares slope of log(value) on log(N) (None below 2 sizes)."""
    x, y = np.log(np.asarray(sizes, dtype=float)), np.log(np.maximum(np.asarray(values, dtype=float), 1e-9))
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def exponents(runs: list) -> dict:
    """Per stage, the growth exponents of wall time, CPU time, peak RSS and disk in N (training videos)."""
    sizes = [r["videos"]["train"] for r in runs]
    out = {}
    for stage in runs[0]["stages"]:
        rows = [r["stages"][stage] for r in runs]
        out[stage] = {key: growth_exponent(sizes, [row[key] for row in rows])
                      for key in ("wall_s", "cpu_s", "peak_rss_mb", "disk_mb")}
    return out


def bench_scale(sizes=DEFAULT_SIZES, frames: int = 8, dim: int = 64, root: str | None = None,
                keep: bool = False, probe: dict | None = None, classes: int = VIDEOLT["classes"],
                stages=None) -> dict:
    """Measure every size (smallest first; each size's files are deleted after it unless ``keep``),
    then the real-shape probe (``probe``: :func:`probe_real_shape` keywords; ``{}`` for its defaults,
    None to skip it). ``classes`` and ``stages`` (a subset of stage names) make small test runs."""
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="vltr-scale-"))
    runs, real = [], None
    try:
        for n in sorted(sizes):
            runs.append(run_size(int(n), base, frames, dim, classes, stages))
            if not keep:
                shutil.rmtree(base / f"n{int(n)}", ignore_errors=True)
        if probe is not None:
            real = probe_real_shape(base, **probe)
            if not keep:
                shutil.rmtree(base / "probe", ignore_errors=True)
    finally:
        if not keep and root is None:
            shutil.rmtree(base, ignore_errors=True)
    return {"bench": "scale", "frames": frames, "dim": dim, "dtype": "float16", "classes": classes,
            "methods": list(METHODS), "threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
            "runs": runs, "exponents": exponents(runs) if len(runs) > 1 else {}, "probe": real}


# ----------------------------------------------------------------------------- report

SCALE_HEADING = "## Scale"
EPOCH_BATCHES = -(-VIDEOLT["train"] // 128)  # training batches of one VideoLT epoch at batch 128
REAL = {"frames": 150, "dim": 2048, "videos": VIDEOLT["train"] + VIDEOLT["val"] + VIDEOLT["test"]}


def _cells(runs: list, stage: str, key: str, fmt: str) -> list:
    """One stage's ``key`` at every size, formatted (blank where the stage was not run)."""
    return [format(r["stages"][stage][key], fmt) if stage in r["stages"] else "" for r in runs]


def _metric_table(result: dict, key: str, fmt: str) -> str:
    """One metric of every stage at every size, with its growth exponent."""
    runs = result["runs"]
    header = ["stage", *(f"N = {r['videos']['train']:,}" for r in runs), "k"]
    rows = []
    for stage in runs[-1]["stages"]:
        k = result["exponents"].get(stage, {}).get(key)
        rows.append([stage, *_cells(runs, stage, key, fmt), "" if k is None else f"{k:.2f}"])
    return markdown_table(header, rows)


def _sizes_table(result: dict) -> str:
    """The measured sets: videos per split, multi-label videos, head-class count, disk and total time."""
    rows = [[f"{r['videos']['train']:,}", f"{r['videos']['val']:,}", f"{r['videos']['test']:,}",
             f"{r['multi_label_videos']:,}", r["max_per_class"], f"{r['work_dir_disk_mb']:,.0f}",
             f"{sum(s['wall_s'] for s in r['stages'].values()):,.0f}"] for r in result["runs"]]
    return markdown_table(["train", "val", "test", "multi-label", "head class", "work dir MB", "all stages s"], rows)


def extrapolation(result: dict) -> list:
    """``[quantity, estimate, basis]`` rows for VideoLT's real features (150 x 2048, all 256,192 videos)."""
    probe, largest = result["probe"], result["runs"][-1]
    per_video = {k: v / probe["videos"] for k, v in
                 {"wall": probe["stages"]["extract"]["wall_s"], "cpu": probe["stages"]["extract"]["cpu_s"],
                  "store": probe["stages"]["extract"]["disk_mb"], "npy": probe["stages"]["generate"]["disk_mb"]}.items()}
    n, loader, gb = REAL["videos"], probe["loader"], 2**20 / 1e9  # GB per MB (disk use is counted in MiB)
    cache_gb = n * REAL["frames"] * REAL["dim"] * 2 / 1e9
    stream = largest["stages"].get(STREAM_STAGE, {}).get("peak_rss_mb")
    in_flight = 2 * 2 * loader["batch_mb"]  # 2 loader processes x prefetch 2 batches
    return [
        ["npy import (extract), 256,192 videos", f"{n * per_video['wall'] / 3600:.1f} h wall, "
         f"{n * per_video['cpu'] / 3600:.1f} h CPU", f"the probe: {per_video['wall'] * 1e3:.1f} ms wall per "
         f"{probe['frames']}x{probe['dim']} video on this machine (one process, start-up included, its files "
         "still in the page cache: a lower bound, reading them from disk adds the input's size / disk speed)"],
        ["feature store on disk", f"{n * per_video['store'] * gb:.0f} GB", "the probe's store per video"],
        ["input .npy files (float16)", f"{n * per_video['npy'] * gb:.0f} GB",
         "the probe's files per video; float32 files are twice that"],
        ["features in RAM (train.cache=auto)", f"{cache_gb:.0f} GB", "packed float16; auto packs them only "
         f"when available memory is >= {2 * cache_gb:.0f} GB, else it streams (cache none)"],
        ["one epoch's training reads (cache none)", f"{EPOCH_BATCHES / loader['batches_per_s']:.0f} s",
         f"{EPOCH_BATCHES:,} batches of {loader['batch']}x{loader['frames']}x{probe['dim']} at "
         f"{loader['batches_per_s']} batches/s (the probe, warm page cache, one process)"],
        ["train peak RSS, cache none", "" if stream is None else f"{stream + in_flight:,.0f} MB",
         f"measured at N = {largest['videos']['train']:,} ({stream or 0:,.0f} MB) + {in_flight:.0f} MB of "
         "150x2048 batches in flight (2 loader processes x 2)"],
    ]


def render_scale(result: dict) -> str:
    """The ``## Scale`` section of docs/benchmarks.md for a :func:`bench_scale` result."""
    from datetime import date

    r = result
    sizes = ", ".join(f"{x['videos']['train']:,}" for x in r["runs"])
    parts = [
        f"{SCALE_HEADING}\n\n`python -m pipeline bench scale` ({date.today().isoformat()}; not part of `bench all`, "
        f"which keeps this section): a synthetic set with VideoLT's shape ({r['classes']:,} classes, exponential training "
        f"profile with {VIDEOLT['imbalance']:.0f}x imbalance, {VIDEOLT['multi_label_share']:.0%} multi-label, val and "
        "test at VideoLT's 0.143 and 0.286 of train) at N = " + sizes + " training videos, through generation, "
        "ingest, npy import (extract), split, one training epoch of baseline and of MOVE (with the val "
        "evaluation and test predictions the train stage makes), evaluate, and the baseline epoch again with "
        "features streamed from the store (`train.cache=none`). "
        f"Features are {r['frames']} frames x {r['dim']} float16 per video (VideoLT's are 150 x 2048, "
        f"{REAL['frames'] * REAL['dim'] / (r['frames'] * r['dim']):,.0f}x the bytes) so that the full set fits this machine ({r['cpus']} CPU cores shared with other jobs, "
        f"OMP_NUM_THREADS={r['threads']}). Each stage is one `python -m pipeline run --stage ...` child process: "
        "times include its start-up and imports (2-6 s); peak RSS is the largest resident set among the stage's "
        "processes (`wait4`); disk is what the stage leaves. k: the exponent of value ~ N^k, least squares "
        "on log-log over the sizes.\n\n" + _sizes_table(r),
        "### Wall time (s)\n\n" + _metric_table(r, "wall_s", ",.1f"),
        "### CPU time (s)\n\nUser + system, less sensitive than wall time to the other jobs on the machine.\n\n"
        + _metric_table(r, "cpu_s", ",.1f"),
        "### Peak RSS (MB)\n\n" + _metric_table(r, "peak_rss_mb", ",.0f"),
        "### Disk (MB)\n\n" + _metric_table(r, "disk_mb", ",.1f")]
    if r.get("probe"):
        p = r["probe"]
        parts.append(f"### Extrapolation to VideoLT's features\n\n150 x 2048 per video, all "
                     f"{REAL['videos']:,} videos, from the measured sizes and a probe of {p['videos']} videos of "
                     f"{p['frames']} x {p['dim']} (generated, imported, read as training batches):\n\n"
                     + markdown_table(["quantity", "estimate", "from"], extrapolation(r)))
    return "\n\n".join(parts)
