"""Run statuses: every name a run's status can have, spelled here and imported everywhere else.

Stored: QUEUED -> RUNNING -> FINISHED | FAILED | KILLED | PRUNED. LOST is never stored: it is how a
RUNNING row whose process is gone (or whose heartbeat is stale) is displayed. PRUNED is a trial of
``imloss tune`` that the study's pruner stopped early, its epochs kept: an outcome, not a failure.
"""

from __future__ import annotations

QUEUED = "QUEUED"
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
PRUNED = "PRUNED"
LOST = "LOST"

STATUSES: tuple[str, ...] = (QUEUED, RUNNING, FINISHED, FAILED, KILLED, PRUNED)
"""The statuses a row can hold (the schema's check constraint lists the same)."""

TERMINAL: frozenset[str] = frozenset({FINISHED, FAILED, KILLED, PRUNED})
"""A run with one of these has ended; ``finish_run`` refuses it."""

RESUMABLE: tuple[str, ...] = (QUEUED, FAILED, KILLED, LOST)
"""Displayed statuses of the runs ``imloss resume`` (and ``mark_running``) may start again."""

# What an ablation trial can end as besides a run status (never stored in a row).
SKIPPED = "SKIPPED"
"""The trial's run FINISHED in an earlier command: not trained again."""
PLANNED = "PLANNED"
"""A dry run's trial: nothing recorded."""

# What a study's trial (imloss tune) can end as besides a run status (never stored in a row).
DIVERGED = "DIVERGED"
"""The trial's run FAILED because its loss diverged: a result of its values, told to Optuna as FAIL, not retried."""
INVALID = "INVALID"
"""The values Optuna drew form no valid recipe (e.g. k_min above k_max): told as FAIL, no run."""
