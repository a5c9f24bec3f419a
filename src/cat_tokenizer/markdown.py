"""Markdown tables for the reports every command writes (a leaf module: imports nothing of the project)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["md_header", "md_row", "md_table", "md_records"]


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



def md_records(records: Iterable[dict], columns: list[str], float_format: str = "{:.2f}", formats: dict[str, str] | None = None) -> list[str]:
    """A table of dict records: ``columns`` picked from each, floats as ``formats[column]`` or ``float_format``."""
    return md_table(columns, ([(formats or {}).get(c, float_format).format(r[c]) if isinstance(r[c], float) else r[c] for c in columns]
                              for r in records))
