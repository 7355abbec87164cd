"""Why a run cannot go on: errors of the training layer (``imloss_cli.errors`` says how the CLI ends on each)."""

from __future__ import annotations

from imloss_cli.errors import ImlossError, RunFailure


class TrainingError(ImlossError):
    """The run cannot start or go on as asked (bad device request, unusable checkpoint)."""


class DivergedError(TrainingError, RunFailure):
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(f"diverged at epoch {epoch}, step {step}: the loss became NaN or infinite")


class WorkerFailedError(TrainingError, RunFailure):
    """A process of a torchrun job failed (``imloss train --nproc``); its own output says why."""
