"""The long-tailed benchmark suite: every variant x method x seed, one table per variant and a rank summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from evaluate.report import aggregate, collect, metrics_files, report_markdown
from manifests.errors import UserError
from manifests.files import write_text_atomic
from manifests.markdown import markdown_table

log = logging.getLogger("pipeline")

VARIANTS = ("lt_bench", "lt_bench_diverse", "lt_bench_exp100", "lt_bench_step10", "lt_bench_multilabel",
            "lt_bench_videolt")


def variant_configs(variants, root: Path, methods: list | None, seeds: list, overrides: tuple) -> list:
    """``[(variant, Config)]``: each named variant with the suite's seeds, methods and overrides, its work dir
    ``<root>/<variant>``."""
    from pipeline.config import load_config

    extra = (f"seeds=[{','.join(map(str, seeds))}]",)
    if methods:
        extra += (f"train.method=[{','.join(methods)}]",)
    return [(v, load_config(v, tuple(overrides) + extra, work_dir=str(Path(root) / v))) for v in variants]


def run_suite(configs: list, options) -> None:
    """Run every stage of every variant (finished runs are skipped, so an interrupted suite continues)."""
    from pipeline.run import run_pipeline

    for number, (variant, cfg) in enumerate(configs, 1):
        log.info("suite: variant %d/%d %s -> %s", number, len(configs), variant, cfg.work_dir)
        run_pipeline(cfg, "all", options)


def variant_table(work_dir: Path) -> pd.DataFrame:
    """Mean and std over seeds of every evaluated method in one variant's work dir; a method with several
    configurations there (e.g. ablations) is named ``<method> [<config id>]``."""
    table = aggregate(collect([work_dir]))
    repeated = table["method"].duplicated(keep=False)
    table.loc[repeated, "method"] = table["method"][repeated] + " [" + table["config_id"][repeated] + "]"
    return table


def weighting_table(work_dir: Path) -> pd.DataFrame:
    """The expert weightings (``mix_*`` entries of an ensemble's experts, e.g. MEA's mean / val / agreement
    and the agreement refitted per test profile) of every evaluated run in ``work_dir``: mean and std over
    seeds of overall and tail mAP and of mAP on each test profile; empty when no run has one."""
    rows = []
    for path in metrics_files(Path(work_dir)):
        document = json.loads(path.read_text())
        method = document.get("run", {}).get("method", "predictions")
        for name, values in document.get("experts", {}).items():
            if name.startswith("mix_"):
                rows.append({"method": method, "weighting": name[len("mix_"):], "mAP": values["mAP"],
                             "tail": values["tail"], **{f"mAP[{p}]": v["mAP"] for p, v in values["profiles"].items()
                                                        if p != "as_is"}})
    if not rows:
        return pd.DataFrame()
    grouped = pd.DataFrame(rows).groupby(["method", "weighting"], sort=False)
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    table["runs"] = grouped.size()
    return table.reset_index()


def weighting_markdown(table: pd.DataFrame) -> str:
    """:func:`weighting_table` as markdown, ``mean ± std`` where several seeds exist."""
    values = [c[:-5] for c in table.columns if c.endswith("_mean")]
    rows = [[r["method"], r["weighting"], r["runs"],
             *(f"{r[f'{c}_mean']:.3f}" + (f" ± {r[f'{c}_std']:.3f}" if r["runs"] > 1 else "") for c in values)]
            for _, r in table.iterrows()]
    return ("Each ensemble's expert weightings scored on the same test videos: `mean` uniform, `val` chosen on "
            "the selection split, `agreement` chosen without labels on the whole test set, "
            "`agreement_per_profile` refitted without labels on each test profile.\n\n"
            + markdown_table(["Method", "Weighting", "Runs", "Overall", "Tail", *values[2:]], rows, compact=True))


def rank_summary(tables: dict, metric: str = "mAP") -> pd.DataFrame:
    """Per variant, each method's ``metric`` (mean), its rank (1 = best) and whether it is within one std
    (of the best method's seeds) of the best; the last column is the mean rank over the variants."""
    rows = {}
    for variant, table in tables.items():
        means = table.set_index("method")[f"{metric}_mean"]
        best = means.idxmax()
        spread = table.set_index("method")[f"{metric}_std"].get(best, np.nan)
        ranks = means.rank(ascending=False, method="min")
        for method, value in means.items():
            near = bool(value >= means[best] - (0 if np.isnan(spread) else spread))
            rows.setdefault(method, {})[variant] = (value, int(ranks[method]), near)
    summary = pd.DataFrame({m: {v: cell for v, cell in cells.items()} for m, cells in rows.items()}).T
    summary["mean_rank"] = [np.mean([c[1] for c in cells.values()]) for cells in rows.values()]
    return summary.sort_values("mean_rank")


def summary_markdown(summary: pd.DataFrame, metric: str) -> str:
    """The rank summary as markdown: ``value (rank)``, bold where within one std of the variant's best."""
    variants = [c for c in summary.columns if c != "mean_rank"]
    rows = []
    for method, row in summary.iterrows():
        cells = []
        for v in variants:
            cell = row[v]
            if not isinstance(cell, tuple):
                cells.append("–")
                continue
            text = f"{cell[0]:.3f} ({cell[1]})"
            cells.append(f"**{text}**" if cell[2] else text)
        rows.append([method, *cells, f"{row['mean_rank']:.1f}"])
    return markdown_table(["Method", *variants, "Mean rank"], rows, compact=True) + (
        f"\n{metric} mAP, mean over seeds (rank in the variant); bold: within one std of the variant's best.\n")


def write_suite_report(root: Path, variants) -> str:
    """``<root>/suite.md``: the rank summaries (overall and tail) and one table per variant; returns it."""
    tables, parts = {}, []
    for variant in variants:
        work_dir = Path(root) / variant
        try:
            tables[variant] = variant_table(work_dir)
        except UserError:
            log.warning("warning: suite: %s has no evaluated runs yet; left out of the report", work_dir)
    if not tables:
        raise UserError(f"no variant under {root} has evaluated runs; run the suite first")
    for metric, title in (("mAP", "overall"), ("tail", "tail")):
        parts.append(f"## Rank summary: {title} mAP\n\n" + summary_markdown(rank_summary(tables, metric), title))
    for variant, table in tables.items():
        parts.append(f"## {variant}\n\n" + report_markdown(table))
        weightings = weighting_table(Path(root) / variant)
        if not weightings.empty:
            parts.append(f"### {variant}: expert weightings\n\n" + weighting_markdown(weightings))
    text = "\n\n".join(parts) + "\n"
    write_text_atomic(Path(root) / "suite.md", text)
    return text
