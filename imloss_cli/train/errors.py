"""Why a run cannot go on: errors of the training layer (the CLI maps them to exit codes)."""

from __future__ import annotations


class TrainingError(Exception):
    """The run cannot go on (bad device request, divergence, unusable checkpoint)."""


class DivergedError(TrainingError):
    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(f"diverged at epoch {epoch}, step {step}: the loss became NaN or infinite")


class WorkerFailedError(TrainingError):
    """A process of a torchrun job failed (``imloss train --nproc``); its own output says why."""
