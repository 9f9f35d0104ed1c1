"""Markdown tables, for the evaluate reports and the benchmark reports."""

from __future__ import annotations


def markdown_table(header, rows, compact: bool = False) -> str:
    """A GitHub-flavoured markdown table: ``header`` cells, a rule, then one line per row. ``compact``:
    the rule as ``|---|---|`` and a final newline (how results.md and report.md spell it); else the rule
    as ``| --- | --- |`` and no final newline (the benchmark reports)."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    rule = "|" + "|".join("---" for _ in header) + "|" if compact else line(["---"] * len(header))
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + ("\n" if compact else "")
