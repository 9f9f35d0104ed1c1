"""Result tables in the papers' layout: one run, and many runs (methods x feature sets, seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from evaluate import registry
from manifests.errors import UserError
from manifests.markdown import markdown_table

COLUMNS = ("mAP", "head", "medium", "tail", "acc1", "acc5")
HEADERS = ("Overall", "Head", "Medium", "Tail", "Acc@1", "Acc@5")
GROUP_KEYS = ("method", "features", "select_on", "config_id", "schedule")


def columns() -> tuple:
    """The metrics a table shows: the papers' (:data:`COLUMNS`), then the registered ones (evaluate/registry.py)."""
    return COLUMNS + tuple(registry.METRICS)


def headers() -> tuple:
    """Column titles of :func:`columns`."""
    return HEADERS + tuple(m.header for m in registry.METRICS.values())


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def schedule_text(schedule: dict) -> str:
    """A training schedule as one line, ``epochs 30, lr 0.001, lr_steps [20], batch_size 128``; "" when
    it was not recorded (results of older versions)."""
    return ", ".join(f"{key} {json.dumps(value)}" for key, value in (schedule or {}).items())


def run_label(run: dict) -> str:
    """A short name for a run, e.g. ``baseline / resnet50 / seed 2021``."""
    parts = [str(run.get("method", "predictions")), str(run.get("features", "unknown features"))]
    if "seed" in run:
        parts.append(f"seed {run['seed']}")
    return " / ".join(parts)


def protocol(run: dict) -> str:
    """How the scored checkpoint was chosen, as stamped on every result."""
    select_on = run.get("select_on")
    return f"model selected on {select_on}" if select_on else "model selection not recorded"


def run_markdown(label: str, document: dict) -> str:
    """results.md of one evaluation: the papers' table plus the test-distribution profiles."""
    m = document["metrics"]
    text = [f"# {label}\n", f"{document['videos']} {document['split']} videos; groups: head > "
            f"{document['thresholds']['head']}, tail <= {document['thresholds']['tail']} training "
            f"instances; {protocol(document['run'])}.\n",
            markdown_table(["Method", *headers()], [[label, *(_fmt(m[c]) for c in columns())]], compact=True)]
    if document["profiles"]:
        rows = [[name, *(_fmt(p[c]) for c in columns()), f"{p['labels']['ratio']:.1f}"]
                for name, p in document["profiles"].items()]
        text += ["\n## Test-distribution profiles\n",
                 f"The same predictions on re-sampled test sets (seed {document['profile_seed']}); "
                 "ratio = max/min positives per class.\n",
                 markdown_table(["Test profile", *headers(), "ratio"], rows, compact=True)]
    return "\n".join(text)


def experts_markdown(document: dict) -> str:
    """results.md's per-expert section (an ensemble's members, e.g. MEDC's experts, each scored alone
    beside the combination), "" when the predictions have none."""
    experts = document.get("experts")
    if not experts:
        return ""
    names = list(document["profiles"])
    rows = [[name, *(_fmt(m[c]) for c in columns()), *(_fmt(m["profiles"][p]["mAP"]) for p in names)]
            for name, m in [("combination", {**document["metrics"], "profiles": document["profiles"]}),
                            *experts.items()]]
    refit = ("; mix_agreement_per_profile: the experts' agreement weights refitted, without labels, on each "
             "profile's videos" if any(name.endswith("_per_profile") for name in experts) else "")
    return "\n".join(["\n## Experts\n", "Each expert's own predictions scored alone; profile columns are mAP on "
                      f"the re-sampled test sets{refit}.\n",
                      markdown_table(["Expert", *headers(), *(f"mAP[{p}]" for p in names)], rows, compact=True)])


def metrics_files(run_dir: Path) -> list:
    """The metrics.json files of a metrics file, an evaluate run folder or a whole work dir."""
    if run_dir.is_file():
        return [run_dir]
    if (run_dir / "metrics.json").is_file():
        return [run_dir / "metrics.json"]
    found = sorted((run_dir / "evaluate").glob("*/metrics.json"))
    if not found:
        raise UserError(f"{run_dir}: no evaluate results (looked for metrics.json and "
                        "evaluate/<run>/metrics.json); run the evaluate stage there first")
    return found


def collect(run_dirs) -> pd.DataFrame:
    """One row per evaluated run: its identity (method, features, seed, protocol) and metrics."""
    rows = []
    for path in (f for run_dir in run_dirs for f in metrics_files(Path(run_dir))):
        document = json.loads(path.read_text())
        run = document.get("run", {})
        method = run.get("method", "predictions")
        if run.get("head") not in (None, "lateavg"):
            method += f"+{run['head']}"
        row = {"run": str(path.parent), "method": method,
               "features": run.get("features", "unknown"), "seed": run.get("seed"),
               "select_on": run.get("select_on", "unknown"), "config_id": run.get("config_id", ""),
               "schedule": schedule_text(run.get("schedule")),
               **{c: document["metrics"][c] for c in COLUMNS},
               **{c: document["metrics"].get(c, np.nan) for c in registry.METRICS},  # older files lack new ones
               "train_s": run.get("train_seconds", np.nan)}
        for name, profile in document.get("profiles", {}).items():
            if name != "as_is":  # the same numbers as the main columns
                row[f"mAP[{name}]"] = profile["mAP"]
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1) over runs that differ only in their seed."""
    values = [c for c in runs.columns if c in columns() or c.startswith("mAP[") or c == "train_s"]
    grouped = runs.groupby(list(GROUP_KEYS), sort=False, dropna=False)[values]
    means, stds = grouped.mean(), grouped.std(ddof=1)
    table = means.add_suffix("_mean").join(stds.add_suffix("_std"))
    table["runs"] = grouped.size()
    return table.reset_index()


def report_markdown(table: pd.DataFrame) -> str:
    """Methods x feature sets, ``mean ± std (n)`` where several seeds exist, protocol stamped."""
    values = [c[:-5] for c in table.columns if c.endswith("_mean")]
    rows = []
    for _, r in table.iterrows():
        cells = []
        for c in values:
            mean, std, digits = r[f"{c}_mean"], r[f"{c}_std"], 0 if c == "train_s" else 3
            cells.append(_fmt(mean, digits) + (f" ± {std:.{digits}f}" if r["runs"] > 1 and not np.isnan(std) else ""))
        rows.append([r["method"], r["features"], r["select_on"], r["runs"], *cells])
    names = {**dict(zip(columns(), headers())), "train_s": "Train (s)"}
    header = ["Method", "Features", "Selected on", "Runs", *(names.get(c, c) for c in values)]
    schedules = list(dict.fromkeys(table["schedule"])) if "schedule" in table else [""]
    if len(schedules) > 1:  # never a silent comparison of different schedules: each row says its own
        header.append("Schedule")
        for row, schedule in zip(rows, table["schedule"]):
            row.append(schedule or "not recorded")
        note = ("**Warning: these rows were trained with different schedules** (see the Schedule column); "
                "differences between them are not only the methods'.\n\n")
    else:
        note = f"Every row trained with {schedules[0]}.\n\n" if schedules[0] else ""
    return ("Mean ± sample std over seeds where a configuration has several runs. 'Selected on' is the "
            "split the checkpoint was chosen on (test = the papers' protocol).\n\n" + note
            + markdown_table(header, rows, compact=True))


def write_report(run_dirs, out_dir: Path) -> str:
    """Collect, aggregate and write ``report.md`` and ``report.csv`` to ``out_dir``; returns the markdown."""
    from manifests.files import atomic_path, write_text_atomic

    table = aggregate(collect(run_dirs))
    text = report_markdown(table)
    write_text_atomic(Path(out_dir) / "report.md", text)
    with atomic_path(Path(out_dir) / "report.csv") as tmp:
        table.to_csv(tmp, index=False)
    return text
