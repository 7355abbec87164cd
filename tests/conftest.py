"""Shared fixtures: a throwaway working directory, a registry URL in it, a tiny digits recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory so runs/ and data/ land in tmp, never in the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMLOSS_REGISTRY", raising=False)
    return tmp_path


@pytest.fixture
def registry_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'reg.db'}"


@pytest.fixture
def tiny_recipe(workdir: Path) -> Path:
    """Digits, 2 epochs: enough to train past chance in about a second."""
    path = workdir / "tiny.toml"
    path.write_text(
        'name = "tiny"\n[model]\narch = "convnet3"\ntimesteps = 2\n[train]\nepochs = 2\n[data]\nbatch_size = 64\n'
    )
    return path
