"""``python -m pipeline``: the command line of the long-tailed video recognition pipeline."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from manifests.errors import StageFailed, UserError

log = logging.getLogger("pipeline")

BENCHMARKS = ("evaluate", "store", "extract", "train", "demo", "scale", "gpu", "all")
IN_BENCH_ALL = ("evaluate", "store", "extract", "train", "demo")  # scale takes about an hour: run on its own
EPILOG = """examples:
  python -m pipeline run                                   # the embedded demo, end to end, offline
  python -m pipeline run --config videolt_r50 --stage split
  python -m pipeline run --config my.yaml --stage all --set split.imbalance=0.1
  python -m pipeline status --work-dir runs/demo
  python -m pipeline predict clip.mp4 videos/ --work-dir runs/demo --out preds.csv
"""


def _add_config_args(parser: argparse.ArgumentParser, with_work_dir: bool = True) -> None:
    """``--config``, ``--set`` (and ``--work-dir``) of the commands that read a config."""
    parser.add_argument("--config", metavar="FILE_OR_NAME",
                        help="YAML config file, or the name of a shipped config (pipeline/configs/) or of "
                             "./configs/NAME.yaml (default: the embedded demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set split.imbalance=0.1 (repeatable)")
    if with_work_dir:
        parser.add_argument("--work-dir", metavar="DIR",
                            help="where stage outputs go (<work-dir>/<stage>/); overrides work_dir")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: run, status, config, report, suite, bench, demo-data, predict, export."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Long-tailed video recognition: videos -> per-frame features -> imbalanced splits "
                    "-> long-tailed training -> literature-exact evaluation. Stages chain through "
                    "manifest files in the work directory; finished stages are skipped.")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_parser(commands, quiet)

    status = commands.add_parser("status", parents=[quiet], help="what each stage has produced, and whether it is stale",
                                 description="Show each stage's state in a work directory: done, stale "
                                             "(and why) or missing. With --config, config "
                                             "changes count as staleness too.")
    _add_config_args(status)

    show = commands.add_parser("config", parents=[quiet], help="print the resolved config (defaults + file + --set)")
    _add_config_args(show)

    report = commands.add_parser("report", parents=[quiet], help="one table over many evaluated runs (mean ± std over seeds)",
                                 description="Collect evaluate results of several work directories into one "
                                             "table (markdown + CSV): methods x feature sets, mean ± std over "
                                             "runs that differ only in their seed, selection protocol stamped.")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="work directories (or their evaluate/ folders, or metrics.json files)")
    report.add_argument("--out", default="report", metavar="DIR", help="where report.md and report.csv go")

    bench = commands.add_parser("bench", parents=[quiet], help="measure the product against the reference way (JSON line)",
                                description="Benchmarks: ratios measured inside one run; min and median "
                                            "of >= 3 repeats; one JSON line at the end.")
    bench.add_argument("what", choices=BENCHMARKS, help="which benchmark; all runs every one but scale and gpu and "
                                                        "rewrites --out; scale rewrites the Scale section of --out; "
                                                        "gpu is the GPU acceptance check (a CPU dry run without a GPU)")
    bench.add_argument("--out", default=None, metavar="FILE",
                       help="all/scale: the markdown report to rewrite, keeping its measured sections (e.g. "
                            "docs/benchmarks.md of a checkout); without it the report goes to stdout")
    bench.add_argument("--sizes", type=_sizes, default=None, metavar="N[,N...]",
                       help="scale: training-set sizes (default 10000,50000,179334: VideoLT's)")
    bench.add_argument("--scale-dir", metavar="DIR", help="scale: where the data sets go (default: a temporary "
                                                          "folder; the full size needs about 3 GB)")

    _add_suite_parser(commands, quiet)
    demo = commands.add_parser("demo-data", parents=[quiet], help="write the demo set of long-tailed H.264 videos",
                               description="Generate the embedded demo dataset: real H.264 mp4 clips, "
                                           "labels.csv (video_id,path,labels,split) and class_names.txt.")
    demo.add_argument("--out", required=True, metavar="DIR", help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_predict_parsers(commands, quiet)
    return parser


def _add_run_parser(commands, quiet: argparse.ArgumentParser) -> None:
    """`run`; its help lists the stages and the registered backbones, methods and dataset formats."""
    from extract.registry import names_message
    from pipeline import formats
    from pipeline.stages import ORDER, STAGES
    from train import registry as methods

    stage_help = "; ".join(f"{n}: {STAGES[n].description}" for n in ORDER)
    run = commands.add_parser("run", parents=[quiet], help="run a stage or the whole chain (default: the demo, all stages)",
                              description=f"Run stages. {stage_help}. Backbones (--set extract.backbone=NAME): "
                                          f"{names_message()}. Methods (--set train.method=NAME): "
                                          f"{methods.names_message()}. Dataset formats (--set dataset.format=NAME): "
                                          f"{', '.join(formats.FORMATS)}.")
    _add_config_args(run)
    run.add_argument("--stage", choices=(*ORDER, "all"), default="all", help="stage to run (default: all)")
    run.add_argument("--force", action="store_true", help="re-run the stage even if it is up to date")
    run.add_argument("--no-rerun", action="store_true",
                     help="refuse (instead of re-running) when a stage is stale")
    run.add_argument("--resume", choices=("auto", "never"), default="auto",
                     help="train: continue from the last checkpoint when there is one (auto, default) or start over")
    run.add_argument("--retry-failed", action="store_true", help="extract: retry videos that failed before")
    run.add_argument("--repair", action="store_true", help="extract: re-extract corrupted shards")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_suite_parser(commands, quiet: argparse.ArgumentParser) -> None:
    """`suite`: the long-tailed benchmark's variants x methods x seeds, one table each and a rank summary."""
    from pipeline.bench.lt_suite import VARIANTS

    suite = commands.add_parser("suite", parents=[quiet], help="every long-tailed benchmark variant x method x seed, "
                                "one table per variant and a rank summary",
                                description="Run the long-tailed benchmark's variants (each a shipped config) with "
                                            "one method list and one set of seeds, each in <work-dir>/<variant>; "
                                            "finished runs are skipped, so an interrupted suite continues. Writes "
                                            "<work-dir>/suite.md: the rank summaries (overall and tail mAP) and one "
                                            "table per variant.")
    suite.add_argument("--variants", type=_names, default=VARIANTS, metavar="NAME[,NAME...]",
                       help=f"configs to run (default: {','.join(VARIANTS)})")
    suite.add_argument("--methods", type=_names, default=None, metavar="METHOD[,METHOD...]",
                       help="train.method list for every variant (default: each config's own)")
    suite.add_argument("--seeds", type=_sizes, default=(1, 2, 3), metavar="N[,N...]", help="seeds (default 1,2,3)")
    suite.add_argument("--work-dir", default="runs/lt_suite", metavar="DIR", help="root of the variants' work dirs")
    suite.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value in every variant (repeatable)")
    suite.add_argument("--report-only", action="store_true", help="only (re)write suite.md from finished runs")
    suite.add_argument("--no-progress", action="store_true", help="no progress bars")


def _names(text: str) -> tuple:
    """``--variants a,b``: names separated by commas."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give names separated by commas")
    return names


def _add_predict_parsers(commands, quiet: argparse.ArgumentParser) -> None:
    """`predict` (a trained model on new videos) and `export` (the model as one bundle file)."""
    predict = commands.add_parser("predict", parents=[quiet], help="class scores of new videos from a trained model",
                                  description="Decode and embed videos exactly as the run's extract stage did, "
                                              "score them with the selected checkpoint, print each video's top "
                                              "classes and optionally write every class's score.")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="video files, folders of videos, CSV files (the csv or kinetics_csv format); .npy "
                              "feature files for a model trained on imported features")
    model = predict.add_mutually_exclusive_group()
    model.add_argument("--work-dir", metavar="DIR", help="a trained work dir (default: the demo's, runs/demo)")
    model.add_argument("--bundle", metavar="FILE", help="a model bundle written by `python -m pipeline export`")
    predict.add_argument("--method", metavar="RUN", help="which run of the work dir, e.g. ldam_drw (default: the "
                                                         "best by the selection mAP)")
    predict.add_argument("--out", metavar="FILE", help="write every class's score: .csv, .jsonl or .parquet")
    predict.add_argument("--top-k", type=int, default=5, metavar="K", help="classes shown per video (default 5)")
    predict.add_argument("--threshold", default="0.5", metavar="T|val",
                         help="score from which a class counts as predicted (the `predicted` column): a number, or "
                              "val = per-class thresholds that maximise F1 on the validation split (default 0.5)")
    predict.add_argument("--videos", metavar="DIR", help="where the files of CSV rows without a path are")
    predict.add_argument("--weights", metavar="FILE", help="the backbone weights file, if it moved since "
                                                           "extraction (its sha256 must match)")
    predict.add_argument("--device", default="auto", help="auto (a GPU when one is visible), cpu, cuda, cuda:N")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")

    export = commands.add_parser("export", parents=[quiet], help="write a trained model as one self-contained file",
                                 description="Write one safetensors bundle: the head's weights, method and "
                                             "settings, class names and groups, validation-F1 thresholds, and "
                                             "the backbone id, weights sha256 and preprocessing. `predict "
                                             "--bundle FILE` uses it without the work dir.")
    export.add_argument("--work-dir", metavar="DIR", help="a trained work dir (default: the demo's, runs/demo)")
    export.add_argument("--method", metavar="RUN", help="which run (default: the best by the selection mAP)")
    export.add_argument("--out", required=True, metavar="FILE", help="the bundle file, e.g. model.safetensors")
    export.add_argument("--device", default="auto", help="where the validation thresholds are computed")


def main(argv=None) -> int:
    """The ``python -m pipeline`` / ``vltr`` entry point: run one command; a user mistake is one
    ``error:`` line and exit 2, a failed stage exit 1, Ctrl-C / SIGTERM exit 130 (work kept)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    if args.command is None:
        parser.print_help()
        return 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # Docker, Kubernetes and Slurm stop jobs with SIGTERM
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130


def _terminated(signum, frame):
    """SIGTERM stops a run like Ctrl-C: finished work is kept and the same command resumes it."""
    raise KeyboardInterrupt


def _load(args, with_sources: bool = False):
    """The config of a command; warns about settings that have no effect."""
    from pipeline.config import ineffective_settings, read_config

    cfg, sources = read_config(args.config, tuple(args.overrides), getattr(args, "work_dir", None))
    for warning in ineffective_settings(cfg, sources):
        log.warning("warning: %s", warning)
    return (cfg, sources) if with_sources else cfg


def cmd_run(args) -> int:
    """``run``: the stage (or the chain) for the config, then the comparison table when evaluate ran."""
    from pipeline.run import run_pipeline
    from pipeline.stages import RunOptions

    from pipeline.config import schedule_mismatch

    cfg = _load(args)
    log.info("work dir: %s", Path(cfg.work_dir).resolve())
    if args.stage in ("all", "train", "evaluate") and (mismatch := schedule_mismatch(cfg)):
        log.warning("warning: %s", mismatch)
    options = RunOptions(force=args.force, resume=args.resume, no_rerun=args.no_rerun, retry_failed=args.retry_failed,
                         repair=args.repair, progress=not args.no_progress)
    run_pipeline(cfg, args.stage, options)
    if args.stage in ("all", "evaluate"):
        _print_comparison(cfg)
    return 0


def _print_comparison(cfg) -> None:
    """The methods just evaluated side by side, also written to <work_dir>/report.{md,csv}."""
    from evaluate.report import write_report
    from pipeline.config import run_name, single_runs

    work_dir = Path(cfg.work_dir)
    files = [work_dir / "evaluate" / run_name(c) / "metrics.json" for c in single_runs(cfg)]
    print(write_report([f for f in files if f.exists()], work_dir), end="")
    log.info("comparison table: %s; per-run metrics, per-class CSVs and plots: %s",
             work_dir / "report.md", work_dir / "evaluate")


def cmd_suite(args) -> int:
    from pipeline.bench.lt_suite import run_suite, variant_configs, write_suite_report
    from pipeline.stages import RunOptions

    configs = variant_configs(args.variants, Path(args.work_dir), list(args.methods or ()), list(args.seeds),
                              tuple(args.overrides))
    if not args.report_only:
        run_suite(configs, RunOptions(progress=not args.no_progress))
    print(write_suite_report(Path(args.work_dir), args.variants), end="")
    log.info("suite report: %s", Path(args.work_dir) / "suite.md")
    return 0


def cmd_status(args) -> int:
    """``status``: every stage's state in the work dir (done, stale and why, missing)."""
    from pipeline.config import load_config
    from pipeline.run import status_rows

    cfg = _load(args) if args.config or args.overrides else None
    work_dir = Path(args.work_dir) if args.work_dir else Path(cfg.work_dir if cfg else load_config().work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"work dir {work_dir} is a file, not a folder; give the folder a run writes its stages to")
    print(f"work dir: {work_dir.resolve()}" + ("" if cfg else " (config changes not checked: no --config)"))
    rows = status_rows(cfg, work_dir)
    width = max(len(row[0]) for row in rows) + 2
    for name, state, created, digest, reasons in rows:
        line = f"  {name:<{width}}{state:<9} {created:<26} {digest}"
        print(line.rstrip() + (f"\n  {'':<{width}}why: {reasons}" if reasons else ""))
    return 0


def cmd_config(args) -> int:
    """``config``: the resolved config, each value with where it came from, and each run's schedule."""
    from pipeline.config import schedule_mismatch, schedule_report, to_yaml

    cfg, sources = _load(args, with_sources=True)
    print(to_yaml(cfg, sources), end="")
    print("# the schedule each run trains with (value, the key it comes from: where that key was set):")
    print("\n".join(f"#   {line}" for line in schedule_report(cfg, sources)))
    if mismatch := schedule_mismatch(cfg):
        log.warning("warning: %s", mismatch)
    return 0


def cmd_demo_data(args) -> int:
    """``demo-data``: generate the demo videos and labels into ``--out``."""
    from pipeline.data.demo_data import generate_demo

    out = generate_demo(Path(args.out), seed=args.seed, progress=True)
    log.info("demo videos and labels in %s", out)
    return 0


def cmd_report(args) -> int:
    """``report``: one comparison table (report.md, report.csv) over evaluated runs."""
    from evaluate.report import write_report

    print(write_report(args.run_dirs, Path(args.out)), end="")
    log.info("report written to %s (report.md, report.csv)", args.out)
    return 0


def _sizes(text: str) -> tuple:
    """``--sizes 10000,50000``: positive integers."""
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas")
    return sizes


def cmd_bench(args) -> int:
    """``bench``: one benchmark (a JSON line), ``all`` (and the report into ``--out``), ``scale`` or ``gpu``."""
    import json

    from manifests.files import write_text_atomic
    from pipeline.bench.benchmarks import kept_sections, render, run_benchmark

    if args.what == "scale":
        return _bench_scale(args)
    if args.what == "gpu":
        from pipeline.bench.gpu_check import main as gpu_check

        return gpu_check()
    names = IN_BENCH_ALL if args.what == "all" else (args.what,)
    results = {}
    for name in names:
        log.info("bench %s ...", name)
        results[name] = run_benchmark(name)
        print(json.dumps(results[name]), flush=True)
    if args.what == "all":
        if args.out is None:
            print(render(results), end="")
            return 0
        out = Path(args.out)
        previous = out.read_text(encoding="utf-8") if out.is_file() else ""
        write_text_atomic(out, render(results, kept_sections(previous)))  # measured tables are kept
        log.info("benchmark report written to %s", out)
    return 0


def _bench_scale(args) -> int:
    """`bench scale`: one JSON line, then the Scale section into --out (or on stdout)."""
    import json

    from pipeline.bench.benchmarks import scale_report
    from pipeline.bench.scale_bench import DEFAULT_SIZES, bench_scale, render_scale

    if args.out is None:
        result = bench_scale(args.sizes or DEFAULT_SIZES, root=args.scale_dir, probe={})
        print(json.dumps(result), flush=True)
        print(render_scale(result))
        return 0
    print(json.dumps(scale_report(Path(args.out), args.sizes, args.scale_dir)), flush=True)
    log.info("Scale section written to %s", args.out)
    return 0


def _trained_work_dir(args) -> Path:
    """``--work-dir``, else the demo config's work dir."""
    from pipeline.config import load_config

    return Path(args.work_dir or load_config().work_dir)


def cmd_predict(args) -> int:
    """``predict``: class scores of videos or .npy files from a trained run or a bundle."""
    from pipeline.serve.predict import Predictor, format_table, output_format, write_predictions

    if args.bundle and args.method:
        raise UserError("--method picks a run of a work dir; a bundle holds one model")
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: give at least 1")
    if args.out:
        output_format(args.out)
    if args.bundle:
        predictor = Predictor.from_bundle(args.bundle, args.device, args.weights)
    else:
        predictor = Predictor.from_run(_trained_work_dir(args), args.method, args.device, args.weights)
    log.info("model: %s", predictor.describe())
    table = predictor.predict(args.inputs, args.threshold, progress=not args.no_progress, videos_dir=args.videos)
    print(format_table(table, args.top_k), end="")
    if args.out:
        log.info("every class's score: %s", write_predictions(table, Path(args.out)))
    failed = table[table.status != "ok"]
    if len(failed) == len(table):
        raise StageFailed(f"no video could be predicted ({len(table)} failed; e.g. {failed.video_id.iloc[0]}: "
                          f"{failed.error.iloc[0]})")
    if len(failed):
        log.warning("warning: %d of %d videos failed (reasons above)", len(failed), len(table))
    return 0


def cmd_export(args) -> int:
    """``export``: a trained run as one bundle file."""
    from pipeline.serve.predict import Predictor

    predictor = Predictor.from_run(_trained_work_dir(args), args.method, args.device)
    path = predictor.export(args.out)
    log.info("exported %s to %s", predictor.describe(), path)
    return 0


COMMANDS = {"run": cmd_run, "status": cmd_status, "config": cmd_config, "report": cmd_report, "suite": cmd_suite,
            "bench": cmd_bench, "demo-data": cmd_demo_data, "predict": cmd_predict, "export": cmd_export}
