"""Ablations: a grid of recipe fields times seeds, trained as one registry group.

Modules:
    grid   the ablate command's axes (:class:`GridSpec`) and the trials they expand to (pure recipes).
    group  :func:`run_ablation`: claim the group, queue every trial, work on it as one of any number of workers.
    jobs   more workers on this machine (``--jobs N``), GPUs round-robin.
"""

from imloss_cli.ablate.grid import NAMED_AXES, GridSpec, Trial, plan_trials, split_values
from imloss_cli.ablate.group import (
    AblationPlan,
    AblationResult,
    TrialOutcome,
    WorkOptions,
    latest_train_recipe,
    plan_ablation,
    run_ablation,
)

__all__ = [
    "NAMED_AXES",
    "AblationPlan",
    "AblationResult",
    "GridSpec",
    "Trial",
    "TrialOutcome",
    "WorkOptions",
    "latest_train_recipe",
    "plan_ablation",
    "plan_trials",
    "run_ablation",
    "split_values",
]
