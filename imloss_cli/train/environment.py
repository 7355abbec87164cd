"""Where a run ran: code version, git state and the software/hardware environment."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imloss_cli import SOURCE_ROOT, __version__


@dataclass(frozen=True)
class GitState:
    commit: str | None
    dirty: bool | None
    diff: str = field(default="", repr=False)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_state() -> GitState:
    """The imloss source tree's commit and whether it has uncommitted changes (with the diff)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return GitState(None, None)
    diff = _git("diff", "HEAD", "--", "imloss_cli", "recipes", "pyproject.toml") or ""
    return GitState(commit.strip(), bool(diff.strip()), diff)


def code_version(git: GitState) -> str:
    """Package version plus commit (and '.dirty'): part of every run's fingerprint."""
    if git.commit is None:
        return __version__
    return f"{__version__}+g{git.commit[:12]}" + (".dirty" if git.dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, object]:
    """Versions and hardware, as recorded with every run."""
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "executable": sys.executable,
    }
