"""Text from a registry row made inert for each output format.

Run names, recipe values and messages come from whoever can write the registry; a report shows
them as text, never as markup or code: no formula in a spreadsheet, no LaTeX command, no broken
markdown table, no HTML (``html.py`` escapes with ``html.escape``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a CSV cell as a formula (OWASP's list)."""


def one_line(value: Any) -> str:
    """``value`` as text on one line: a newline would end a comment, a table row or a heading."""
    return " ".join(str(value).splitlines())


def markdown_text(value: Any) -> str:
    """A heading, warning or cell text: one line, and no HTML a markdown renderer would pass through."""
    return one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_cell(value: Any) -> str:
    """A table cell: ``markdown_text`` with its ``|`` escaped, so the row keeps its columns."""
    return markdown_text(value).replace("|", "\\|")


def latex_comment(value: Any) -> str:
    """The text of a ``%`` comment line: one line, so nothing after a newline escapes the comment."""
    return one_line(value)


def csv_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell that a spreadsheet would read as a formula prefixed with ``'``."""

    def inert(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(FORMULA_STARTS):
            return "'" + value
        return value

    out = frame.copy()
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]):  # numbers (a negative one too) stay numbers
            out[column] = out[column].map(inert)
    out.columns = [inert(str(c)) for c in out.columns]
    return out
