"""The one seam between the epoch loop and where its results go.

``Trainer.fit(run)`` hands everything that leaves the loop to ``run``, a :class:`RunSink`: every
epoch's record is stored there, the loop asks it between steps whether this copy may go on, and
its checkpoints go where it says and are promoted to ``last.pt`` inside its fence. Two sinks exist:

- :class:`~imloss_cli.train.lifecycle.ClaimedRun`: a run claimed in the registry; it stores epochs
  as rows fenced by the claim's attempt, and stops a copy that another worker took over;
- :class:`LocalRun`: a run without a registry (tests, benchmarks, torchrun ranks other than 0);
  it stores nothing and never stops the loop.

The front end's hooks (progress bars) are :class:`Callbacks`, given once to the ``Trainer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imloss_cli.snn.stats import LayerStats

StepCallback = Callable[[int, int], None]
"""Called as ``(steps done, steps in the epoch)`` after each training step, or ``(batches done,
batches in the pass)`` after each scored batch of an evaluation."""


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch produced: scalar metrics and per-layer statistics on the test set."""

    epoch: int
    metrics: dict[str, float]
    layers: list[LayerStats] = field(default_factory=list)


@dataclass(frozen=True)
class RunStart:
    """What a front end shows when a run starts training."""

    run_id: str
    seed: int
    device: str
    epochs: int
    steps_per_epoch: int
    first_epoch: int


class RunPruned(Exception):
    """Raised by a front end's ``on_epoch`` to stop the run after that epoch, its epochs and
    checkpoints kept: a tuner's pruner judged the run not worth finishing. A claimed run ends as
    PRUNED (``lifecycle.ClaimedRun.close``), with this message as the reason."""


@dataclass(frozen=True)
class Callbacks:
    """What a front end wants to hear about while a run trains (each None: not interested).

    ``on_epoch`` runs after the epoch's record is stored and its checkpoint promoted; it may raise
    :class:`RunPruned` to end the run there.
    """

    on_start: Callable[[RunStart], None] | None = None
    on_step: StepCallback | None = None
    on_eval_batch: StepCallback | None = None
    on_epoch: Callable[[EpochRecord], None] | None = None


class RunSink(Protocol):
    """Where an epoch loop's results go; see the module docstring.

    Attributes:
        checkpoint_dir: where this run's checkpoints go (None: it keeps none).
        checkpoint_tag: names this attempt's unpromoted checkpoint files, which no other copy writes.
    """

    checkpoint_dir: Path | None
    checkpoint_tag: str

    def check(self) -> None:
        """Raise if this copy of the run must stop (called after every training step)."""

    def store_epoch(self, record: EpochRecord) -> None:
        """Keep one epoch's record (called before its checkpoint is promoted)."""

    def fenced(self) -> contextlib.AbstractContextManager[None]:
        """Hold the run while the epoch's checkpoint is promoted to ``last.pt``."""


@dataclass
class LocalRun:
    """A run without a registry: checkpoints in ``checkpoint_dir`` if given, epochs not stored."""

    checkpoint_dir: Path | None = None
    checkpoint_tag: str = "local"

    def check(self) -> None:
        return None

    def store_epoch(self, record: EpochRecord) -> None:
        return None

    def fenced(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()
