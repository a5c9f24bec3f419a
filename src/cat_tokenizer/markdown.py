"""Markdown tables for the reports every command writes (a leaf module: imports nothing of the project)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["md_header", "md_row", "md_table"]


def md_header(*columns: str) -> list[str]:
    """``["| a | b |", "|---|---|"]``: a table's header line and its separator."""
    return [md_row(*columns), "|" + "---|" * len(columns)]


def md_row(*cells: object) -> str:
    """``"| a | b |"``: one table row (cells formatted with ``str``)."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(columns: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    """Header, separator and one line per row."""
    columns = list(columns)
    return [*md_header(*columns), *(md_row(*r) for r in rows)]

