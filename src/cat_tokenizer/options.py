"""Small parsers and printers shared by the commands of the core and of every task (a leaf module)."""

from __future__ import annotations

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.markdown import md_records

__all__ = ["FEATURES", "parse_numbers", "print_table"]

FEATURES = {"auto": None, "on": True, "off": False}  # --features auto|on|off


def parse_numbers(text: str | None, flag: str, kind: type = int) -> list | None:
    """"1,2,3" -> [1, 2, 3]; a one-line error for anything else."""
    if text is None:
        return None
    try:
        return [kind(t) for t in text.split(",")]
    except ValueError:
        noun = {int: "integers", float: "numbers"}[kind]
        raise UserInputError(f"{flag} takes comma-separated {noun}, e.g. 8,4,2,1; got {text!r}") from None


def print_table(rows: list[dict], cols: list[str], formats: dict[str, str] | None = None) -> None:
    """Print dict rows as a Markdown table."""
    print("\n".join(md_records(rows, cols, formats=formats)))
