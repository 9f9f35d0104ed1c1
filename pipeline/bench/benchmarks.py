"""``python -m pipeline bench ...``: run the benchmarks and write docs/benchmarks.md from the results.

Every benchmark measures ratios inside one run (the product against the reference way of doing the
same work), repeats each measurement and reports min and median; see each section's text.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from importlib import import_module
from pathlib import Path

from manifests.markdown import markdown_table

BENCHMARKS = {"evaluate": ("pipeline.bench.evaluate_bench", "bench_evaluate"),
              "store": ("pipeline.bench.extract_bench", "bench_store"),
              "extract": ("pipeline.bench.extract_bench", "bench_extract"),
              "train": ("pipeline.bench.train_bench", "bench_train")}


def run_benchmark(name: str) -> dict:
    """One benchmark's JSON-serialisable result (``demo`` times the end-to-end demo)."""
    if name == "demo":
        return bench_demo()
    module, function = BENCHMARKS[name]
    return getattr(import_module(module), function)()


def bench_demo() -> dict:
    """Wall time of ``python -m pipeline run`` (the demo) per stage, and of a second, cached run."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pipeline", "run", "--work-dir", tmp, "--no-progress", "-q"]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        first = time.perf_counter() - started
        stages = {}
        for manifest in sorted(Path(tmp).glob("**/manifest.json")):
            record = json.loads(manifest.read_text())
            stages[record["stage"]] = record["summary"].get("seconds")
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        second = time.perf_counter() - started
    return {"bench": "demo", "first_run_s": round(first, 1), "cached_run_s": round(second, 1), "stages_s": stages}


def _stage_order(location: str) -> tuple:
    """Sort key of a stage location (``split``, ``train/move``) in pipeline order."""
    from pipeline.stages import ORDER

    stage, _, run = location.partition("/")
    return (ORDER.index(stage) if stage in ORDER else len(ORDER), run)


METHODS_HEADING = "## Long-tailed methods"
METHODS_NOTE = (METHODS_HEADING + "\n\nWhich method works (mAP overall / head / medium / tail over 3 seeds, "
                "mean ± std) is measured by `python -m pipeline run --config lt_bench`, not by a `bench` command: "
                "see [lt_benchmark.md](lt_benchmark.md).")


def methods_section(previous: str) -> str:
    """The long-tailed methods section of an earlier report (kept when `bench all` rewrites it), else a
    pointer to docs/lt_benchmark.md."""
    start = previous.find(METHODS_HEADING)
    return previous[start:].strip() if start >= 0 else METHODS_NOTE


def _machine_text(m: dict) -> str:
    return f"{m.get('cpu', '?')}, {m.get('logical_cpus', '?')} logical CPUs ({m.get('usable_cpus', '?')} usable)"


def evaluate_section(runs) -> str:
    """The ``bench evaluate`` section for one result of :func:`run_benchmark` or a list of them
    (one table row per run, each with its torch threads and the machine load it ran under)."""
    runs = [runs] if isinstance(runs, dict) else list(runs)
    machines = sorted({_machine_text(x["machine"]) for x in runs if "machine" in x})
    rows = [[f"{x['product_s_min']:.3f} / {x['product_s_median']:.3f}",
             f"{x['loop_s_min']:.3f} / {x['loop_s_median']:.3f}", f"**{x['speedup']:.1f}x**",
             f"{x['speedup_of_minima']:.1f}x" if "speedup_of_minima" in x else "", f"{x['max_abs_diff']:.1e}",
             x.get("machine", {}).get("torch_threads", ""),
             "{} -> {}".format(x["machine"].get("load_avg_1m"), x["machine"].get("load_avg_1m_after"))
             if "machine" in x else ""] for x in runs]
    return ("## bench evaluate\n\n`python -m pipeline bench evaluate`: N = {n} videos x C = {c} classes, random "
            "float32 scores, VideoLT-like sparse multi-label targets. Product: `evaluate.metrics.compute` (AP of "
            "every class, group means, Acc@1/5). Reference: a per-class loop sorting each column "
            "(the reference APMeter), AP only. The two are timed alternately, 3 times each.\n\n".format(**runs[0])
            + ("Machine: " + "; ".join(machines) + ", shared with other processes: the load (1-minute average "
               "before -> after the run) comes with every ratio. Torch threads: the product ranks blocks of columns "
               "on that many threads and the loop's torch calls use them too (`OMP_NUM_THREADS=1` compares one "
               "core with one core). At high load the loop's many small multi-threaded torch calls slow down far "
               "more than the product, which inflates the ratio; the one-thread rows are the steadier "
               "comparison.\n\n" if machines else "")
            + markdown_table(["product s (min / median)", "per-class loop s (min / median)", "speed-up (medians)",
                      "speed-up (minima)", "max abs diff", "torch threads", "load"], rows)
            + "\n\nTarget: >= 5x, <= 1e-6. The ranks of the positives are identical; the difference is the "
            "order of the float64 additions (the loop's `torch.sum` against the product's rank-order sum, which "
            "equals a per-class stable-sort computation bit for bit: tests/evaluate/test_metrics.py).")


def _section_span(text: str, heading: str):
    """``(start, end)`` of the ``## `` section ``heading`` of ``text`` (up to the next ``## `` heading), or None."""
    match = re.search(rf"^{re.escape(heading)}[ \t]*$", text, flags=re.MULTILINE)
    if match is None:
        return None
    end = text.find("\n## ", match.end())
    return match.start(), len(text) if end < 0 else end + 1


def kept_sections(previous: str) -> str:
    """What `bench all` keeps of an earlier report: the Scale section (measured by `bench scale`,
    which takes an hour) when there is one, then the long-tailed methods section."""
    from pipeline.bench.scale_bench import SCALE_HEADING

    span = _section_span(previous, SCALE_HEADING)
    scale = previous[span[0]:span[1]].strip() + "\n\n" if span else ""
    return scale + methods_section(previous)


def with_scale_section(previous: str, section: str) -> str:
    """``previous`` (the report) with its Scale section replaced by ``section`` (a ``### Notes``
    subsection of the old one is kept), or inserted before the methods section."""
    from pipeline.bench.scale_bench import SCALE_HEADING

    if not previous.strip():
        return render({}, section.strip() + "\n\n" + METHODS_NOTE)
    span = _section_span(previous, SCALE_HEADING)
    if span is not None:
        old = previous[span[0]:span[1]]
        notes = old.find("\n### Notes")
        section = section.strip() + ("\n\n" + old[notes:].strip() if notes >= 0 else "")
        return previous[:span[0]] + section + "\n\n" + previous[span[1]:].lstrip("\n")
    methods = _section_span(previous, METHODS_HEADING)
    at = methods[0] if methods else len(previous)
    return previous[:at].rstrip("\n") + "\n\n" + section.strip() + "\n\n" + previous[at:].lstrip("\n")


def scale_report(out: Path, sizes=None, scale_dir: str | None = None) -> dict:
    """`bench scale`: measure (see :mod:`pipeline.bench.scale_bench`) and rewrite the Scale section of ``out``."""
    from manifests.files import write_text_atomic
    from pipeline.bench.scale_bench import DEFAULT_SIZES, bench_scale, render_scale

    result = bench_scale(sizes or DEFAULT_SIZES, root=scale_dir, probe={})
    previous = out.read_text(encoding="utf-8") if out.is_file() else ""
    write_text_atomic(out, with_scale_section(previous, render_scale(result)))
    return result


def render(results: dict, methods: str = METHODS_NOTE) -> str:
    """docs/benchmarks.md for the results of :func:`run_benchmark` (any subset of benchmarks)."""
    parts = [f"# Benchmarks\n\nWritten by `python -m pipeline bench all` on {date.today().isoformat()} "
             f"({platform.machine()}, {platform.python_version()}; a shared 2-core CPU machine unless "
             "noted, so absolute times are noisy). Every benchmark measures ratios inside one run, "
             "repeats each measurement and reports min and median. Tests never assert timings."]
    if "evaluate" in results:
        parts.append(evaluate_section(results["evaluate"]))
    if "store" in results:
        r = results["store"]
        b = r["batches_per_s"]
        parts.append(
            f"## bench store\n\n`python -m pipeline bench store`: {r['videos']} videos x {r['frames']} frames x "
            f"{r['dim']}, batches of {r['batch']} (videos x sorted random frames); the HDF5 shard store against one "
            "float32 `.npy` per video loaded with `np.load` (the reference layout). Cold = page cache dropped "
            "before each pass.\n\n"
            + markdown_table(["", "store batches/s", ".npy batches/s", "speed-up"],
                     [["warm", b["store_warm"], b["npy_warm"], f"**{r['speedup_warm']:.2f}x**"],
                      ["cold", b["store_cold"], b["npy_cold"], f"**{r['speedup_cold']:.2f}x**"]])
            + f"\n\nDisk size: **{r['disk_ratio']:.2f}x** the `.npy` layout. Targets: >= 2x reads at <= 0.55x size.")
    if "extract" in results:
        r = results["extract"]
        parts.append(
            f"## bench extract\n\n`python -m pipeline bench extract`: {r['videos']} videos ({r['video']}), "
            f"{r['frames_per_video']} frames each, resize {r['resize']} / crop {r['crop']}, {r['backbone']} on "
            f"{r['device']}. The JPEG route is the reference's ({r['jpeg_route_tool']}).\n\n"
            + markdown_table(["", "median s", "frames/s"],
                     [["decode only", r["decode_s"]["median"], r["decode_fps"]],
                      ["model only", r["model_s"]["median"], r["model_fps"]],
                      ["whole stage", r["pipeline_s"]["median"], r["pipeline_fps"]],
                      ["JPEG route (decode)", r["jpeg_route_decode_s"]["median"], ""]])
            + f"\n\n- efficiency (whole stage / (decode + model)): **{r['efficiency_cpu']:.2f}** (target <= 1.10)\n"
            f"- direct decode vs the JPEG route: **{r['vs_jpeg_route']:.1f}x** faster (target >= 3x)\n"
            f"- peak RSS, {r['peak_rss_video']}: " + ", ".join(
                f"{k}: main {v['main_mb']:.0f} MB, decode worker {v['decode_worker_mb']:.0f} MB"
                for k, v in r["peak_rss_mb"].items())
            + f" (long / short: {r['peak_rss_ratio_long_vs_short']['main']:.2f})")
    if "train" in results:
        r = results["train"]
        rows = [[m, v["step_s_min"], v["step_s_median"], v["samples_per_s"], f"{v['parameters']:,}"]
                for m, v in r["methods"].items()]
        loading = r["loading"]
        parts.append(
            f"## bench train\n\n`python -m pipeline bench train`: one training step (forward, loss, backward, "
            f"Adam) on a fixed synthetic batch B={r['batch']}, T={r['frames']}, D={r['dim']}, C={r['classes']} "
            f"on {r['device']}.\n\n"
            + markdown_table(["method", "step s (min)", "step s (median)", "samples/s", "parameters"], rows)
            + "\n\nBuilding one such batch from the feature store: "
            + ", ".join(f"{k} {v['batch_s_median']:.4f} s" for k, v in loading["caches"].items())
            + "; a baseline step takes "
            + ", ".join(f"{v:.0f}x ({k})" for k, v in loading.get("baseline_step_over_batch_build", {}).items())
            + " as long, so loading keeps up with training.")
    if "demo" in results:
        r = results["demo"]
        parts.append(
            "## end-to-end demo\n\n`python -m pipeline run` (the demo) from an empty work directory: "
            f"**{r['first_run_s']} s**; run again (every stage cached): **{r['cached_run_s']} s**.\n\n"
            + markdown_table(["stage", "seconds"], [[k, r["stages_s"][k]] for k in sorted(r["stages_s"], key=_stage_order)]))
    parts.append(methods)
    return "\n\n".join(parts) + "\n"
