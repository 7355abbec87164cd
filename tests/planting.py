"""Runs planted in a registry through its public path, as ``imloss train`` records them."""

from __future__ import annotations

import uuid
from typing import Any

from imloss_cli.registry import QUEUED, Claim, NewRun, Registry

CLAIM_FIELDS = ("environment", "git_commit", "git_dirty", "checkpoint_dir", "heartbeat_s")


def start_run(registry: Registry, *, group_id: str | None = None, status: str = "RUNNING", **fields: Any) -> str:
    """A run queued (``status=QUEUED``) or queued and claimed by this process (RUNNING at attempt 1).

    ``fields`` are :class:`NewRun`'s, plus the claim's (environment, git_commit, ...).
    """
    claim = Claim(**{k: fields.pop(k) for k in CLAIM_FIELDS if k in fields})
    run_id = registry.queue_run(NewRun(**fields), group_id=group_id)
    if status != QUEUED:
        registry.claim_run(run_id, claim)
    return run_id


def new_group(registry: Registry, name: str, base_recipe: dict[str, Any], axes: dict[str, Any], argv: list[str]) -> str:
    """A new group (a key of its own, so never an existing one)."""
    return registry.claim_group(uuid.uuid4().hex, name, base_recipe, axes, argv)
