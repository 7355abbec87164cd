"""Checkpoints: written atomically, read back without unpickling arbitrary objects."""

from __future__ import annotations

import os
import pickle
import random
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imloss_cli.errors import ImlossError
from imloss_cli.files import replacing

FORMAT = "imloss-checkpoint-1"
EPOCH_FILE = re.compile(r"epoch-\d{4,}\.pt")


class CheckpointError(ImlossError):
    """A checkpoint that cannot be read: missing, truncated, foreign or unsafe."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same directory (mode per umask), are fsync'ed, then
    renamed over ``path`` (atomic on POSIX); the directory is fsync'ed so the rename itself survives
    a crash (``files.replacing``).
    """
    with replacing(path) as f:
        torch.save({"format": FORMAT, **state}, f)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``.

    ``weights_only=True``: tensors and plain containers only, so a crafted pickle cannot run code.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, or not an imloss checkpoint.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an imloss checkpoint (expected format {FORMAT!r})")
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, in a form ``weights_only`` loading accepts (tensors, tuples, ints)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointDir:
    """``epoch-NNNN.pt`` for the last ``keep_last`` epochs, ``last.pt`` and ``best.pt`` beside them.

    An epoch's checkpoint is written in two steps. :meth:`write` puts it in a file of this attempt's
    own (``.epoch-NNNN.TAG.pt``), which no other process writes; :meth:`promote` then renames it to
    ``epoch-NNNN.pt`` and points ``last.pt`` (and ``best.pt``) at it. A run's owner promotes under
    the registry's fence, so a copy that was taken over can write its own file but never replace
    the current attempt's ``last.pt``. ``last.pt`` and ``best.pt`` are hard links to epoch files
    (replaced atomically by rename): keeping them costs no extra write, and a pruned epoch file
    lives on through its links.
    """

    def __init__(self, path: Path, keep_last: int, tag: str = "0") -> None:
        self.path, self.keep_last, self.tag = path, keep_last, tag
        path.mkdir(parents=True, exist_ok=True)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def write(self, epoch: int, state: dict[str, Any]) -> Path:
        """Write the epoch's checkpoint to this attempt's own file; returns it, not yet promoted."""
        pending = self.path / f".epoch-{epoch:04d}.{self.tag}.pt"
        save_checkpoint(pending, state)
        return pending

    def promote(self, pending: Path, epoch: int, is_best: bool) -> None:
        """Make a written checkpoint the run's: ``epoch-NNNN.pt``, ``last.pt``, ``best.pt`` if best."""
        epoch_file = self.path / f"epoch-{epoch:04d}.pt"
        os.replace(pending, epoch_file)
        self._link(epoch_file, self.last)
        if is_best:
            self._link(epoch_file, self.best)
        # Only the epoch files this class writes: a name of the exact form, a regular file (a planted
        # symlink or folder is left alone).
        epochs = [p for p in self.path.glob("epoch-*.pt") if EPOCH_FILE.fullmatch(p.name) and not p.is_symlink()]
        for old in sorted(epochs)[: -self.keep_last]:
            old.unlink()

    @staticmethod
    def _link(source: Path, target: Path) -> None:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.link")  # a name no one can plant first
        os.link(source, tmp)
        os.replace(tmp, target)
