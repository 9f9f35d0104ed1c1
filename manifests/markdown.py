"""Markdown tables for the reports the benchmarks write."""

from __future__ import annotations


def markdown_table(header, rows) -> str:
    """A GitHub-flavoured markdown table: ``header`` cells, a rule, then one line per row."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])
