"""The one lifecycle of a claimed run: claim -> heartbeat -> train -> finish, or close on any way out.

``train``, ``resume``, the ``--nproc`` launcher and every ablation worker run a trial the same way::

    with claimed_run(registry, run_id, how="fresh", heartbeat_s=30, ...) as run:
        ...                      # train, writing through run.log_epoch and run.fence
                                 # leaving normally: FINISHED

The claim returns the run's new attempt, the fence token that every later write carries. While the
body runs, a background thread refreshes the heartbeat; SIGTERM becomes :class:`Terminated`, an
interrupt. On the way out the run is closed once: KILLED for Ctrl-C or SIGTERM, FAILED (with the
traceback) for any other error, FINISHED otherwise. If another worker took the run over (this
process was paused past its heartbeat), every write is refused with :class:`RunFencedError`; the
heartbeat thread notices first, :meth:`ClaimedRun.check` stops training at the next step, and
nothing more is written for the run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imloss_cli.registry import FAILED, FINISHED, KILLED, Registry, RegistryError, RunFencedError
from imloss_cli.train.environment import environment, git_state
from imloss_cli.train.loop import EpochRecord

HEARTBEAT_S = 30.0
"""Seconds between a training run's heartbeats (``--heartbeat``); LOST after a few missed ones."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run is closed as KILLED like Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread for the duration (elsewhere: a no-op)."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class ClaimedRun:
    """A run this process holds at ``attempt``: every write it makes is fenced by that token."""

    registry: Registry
    run_id: str
    attempt: int
    checkpoint_dir: Path | None
    _fenced: RunFencedError | None = field(default=None, repr=False)

    def log_epoch(self, record: EpochRecord) -> None:
        """Store one epoch's metrics and layer statistics (RunFencedError when taken over)."""
        layers = [(s.index, s.name, s.as_dict()) for s in record.layers]
        self.registry.log_epoch(self.run_id, record.epoch, record.metrics, layers, attempt=self.attempt)

    def fence(self) -> contextlib.AbstractContextManager[None]:
        """Hold the run while this attempt is current (promoting a checkpoint happens inside)."""
        return self.registry.fenced(self.run_id, attempt=self.attempt)

    def check(self) -> None:
        """Raise :class:`RunFencedError` if the heartbeat found the run taken over."""
        if self._fenced is not None:
            raise self._fenced

    def beat(self) -> None:
        """One heartbeat; remembers a takeover for :meth:`check` instead of raising it."""
        try:
            self.registry.heartbeat(self.run_id, attempt=self.attempt)
        except RunFencedError as e:
            self._fenced = e

    def close(self, error: BaseException) -> None:
        """End the run after ``error``: KILLED for an interrupt, FAILED otherwise (never after a takeover)."""
        if isinstance(error, RunFencedError):
            return
        fields: dict[str, Any] = (
            {"error_type": "KeyboardInterrupt", "error_message": "interrupted"}
            if isinstance(error, KeyboardInterrupt)
            else {"error_type": type(error).__name__, "error_message": str(error), "traceback": traceback.format_exc()}
        )
        status = KILLED if isinstance(error, KeyboardInterrupt) else FAILED
        # A takeover or a broken database while closing must not hide the error that ended the run.
        with contextlib.suppress(RegistryError):
            self.registry.finish_run(self.run_id, status, attempt=self.attempt, **fields)


@contextlib.contextmanager
def heartbeat(run: ClaimedRun, interval: float) -> Iterator[None]:
    """Refresh the run's heartbeat from a background thread every ``interval`` seconds.

    Epochs can last hours; the beat shows every machine that the run is alive in between. A beat
    that fails (the database briefly unreachable) is retried at the next interval; a beat that
    finds the run taken over stops beating and leaves the news for :meth:`ClaimedRun.check`.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(RegistryError):
                run.beat()
            if run._fenced is not None:
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{run.run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def claimed_run(
    registry: Registry,
    run_id: str,
    *,
    how: str,
    heartbeat_s: float,
    device: torch.device,
    checkpoint_dir: Path | None,
    argv: list[str],
) -> Iterator[ClaimedRun]:
    """Claim ``run_id`` for this process and hold it for the body; close it once on the way out.

    Args:
        how: how this attempt starts, recorded in the run's attempts ("fresh", "resumed from ...").
        heartbeat_s: seconds between heartbeats.
        device: the device this attempt trains on (recorded in its environment).
        checkpoint_dir: where this attempt's checkpoints go (created now), if anywhere.
        argv: the command line, recorded with the attempt.

    Raises:
        RunClaimedError: another live process holds the run. RegistryError: it cannot be claimed.
        RunFencedError: the run was taken over while the body ran (nothing more was written).
        Whatever the body raised, after the run was closed as KILLED or FAILED.
    """
    git = git_state()
    attempt = registry.claim_run(
        run_id, environment=environment(device), argv=argv, git_commit=git.commit, git_dirty=git.dirty,
        checkpoint_dir=checkpoint_dir, heartbeat_s=heartbeat_s, how=how,
    )  # fmt: skip
    run = ClaimedRun(registry, run_id, attempt, checkpoint_dir)
    with sigterm_as_interrupt(), heartbeat(run, heartbeat_s):
        try:
            if checkpoint_dir is not None:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                if git.dirty:
                    (checkpoint_dir / "code.diff").write_text(git.diff)
            yield run
        except BaseException as e:
            run.close(e)
            raise
    registry.finish_run(run_id, FINISHED, attempt=attempt)
