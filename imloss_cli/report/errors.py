"""The report package's one exception."""

from __future__ import annotations

from imloss_cli.errors import ImlossError


class ReportError(ImlossError):
    """A report that cannot be built or rendered: no runs, unknown metric, bad option."""
