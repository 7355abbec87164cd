"""The tune package's one exception."""

from __future__ import annotations

from imloss_cli.errors import ImlossError


class TuneError(ImlossError):
    """A study that cannot run as asked: Optuna missing, a registry it cannot live beside, a group that is no study."""
