"""The report package's one exception."""

from __future__ import annotations


class ReportError(Exception):
    """A report that cannot be built or rendered: no runs, unknown metric, bad option."""
