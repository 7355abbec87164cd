"""The trainer's GPU switches on this CPU: device-resident data trains exactly as the host loaders,
the LIF kernel choice, and CUDA graphs refused where there is no CUDA device."""

from __future__ import annotations

import pytest
import torch

from imloss_cli.recipe import load_recipe
from imloss_cli.train.loop import Trainer, TrainingError

SHORT = {"train.device": "cpu", "train.epochs": 2, "train.max_steps_per_epoch": 3, "model.timesteps": 2,
         "train.compile": "off"}  # fmt: skip
TIMING = {"train_seconds", "epoch_seconds"}


def _metrics(overrides: dict) -> list[dict[str, float]]:
    trainer = Trainer(load_recipe(None, {**SHORT, **overrides}), seed=0)
    return [{k: v for k, v in r.metrics.items() if k not in TIMING} for r in trainer.fit()]


def test_digits_held_on_the_device_train_exactly_as_through_the_host_loaders() -> None:
    on = _metrics({"data.device_resident": "on"})
    off = _metrics({"data.device_resident": "off"})
    assert on == off  # the same batches in the same order: the same run, bit for bit


def test_device_resident_auto_keeps_the_host_loaders_on_cpu() -> None:
    trainer = Trainer(load_recipe(None, SHORT), seed=0)
    assert trainer.resident is None
    assert Trainer(load_recipe(None, {**SHORT, "data.device_resident": "on"}), seed=0).resident is not None


def test_lif_kernels_follow_the_recipe_and_auto_falls_back_to_train_compile_on_cpu() -> None:
    trainer = Trainer(load_recipe(None, SHORT), seed=0)
    assert trainer.lif_kernels == "eager"  # auto on CPU, compile off
    assert {m.kernels for m in trainer.model.modules() if hasattr(m, "kernels")} == {"eager"}
    compiled = Trainer(load_recipe(None, {**SHORT, "train.lif_kernels": "compiled"}), seed=0)
    assert compiled.lif_kernels == "compiled"


def test_triton_kernels_and_cuda_graphs_ask_for_a_cuda_device() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError, match="lif_kernels = 'triton' needs a CUDA device"):
        Trainer(load_recipe(None, {**SHORT, "train.lif_kernels": "triton"}), seed=0)
    with pytest.raises(TrainingError, match="cuda_graphs needs a single CUDA process"):
        Trainer(load_recipe(None, {**SHORT, "train.cuda_graphs": True}), seed=0)
