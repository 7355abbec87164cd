"""The exceptions imloss raises on purpose, as one tree the command line maps to exit codes.

Every package raises its own subclass of :class:`ImlossError` with a message that says what is wrong
and what to do; the CLI prints that message in one line. Two branches mean something else than a
bad input: :class:`RunFailure` (a run that ended badly: it diverged, a torchrun process failed,
another worker took it over) and :class:`Terminated` (SIGTERM, handled like Ctrl-C). This module
imports nothing, so a command that only reads the registry never pays for torch to catch errors.
"""

from __future__ import annotations


class ImlossError(Exception):
    """An input the user fixes (recipe, data, registry, checkpoint, option): exit code 2."""


class RunFailure(ImlossError):
    """A run that started and ended badly (diverged, a worker process failed, taken over): exit code 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt so the run is closed as KILLED like Ctrl-C: exit code 143."""
