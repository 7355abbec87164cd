"""What ``imloss models`` lists: every registered architecture measured on the input it is made for."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from imloss_cli.recipe import Recipe
from imloss_cli.snn.models import MODELS, NetSpec, create_model
from imloss_cli.snn.neuron import spiking_layers


@dataclass(frozen=True)
class ModelRow:
    arch: str
    input: str  # "3x32x32"
    parameters: int
    gflops: float  # forward FLOPs per image per time step, counted by FlopCounterMode at T = 1
    spiking_layers: int  # hidden LIF layers (IM-Loss and the layer statistics count these)
    source: str


def model_rows(num_classes: int = 10) -> list[ModelRow]:
    """One row per architecture in ``MODELS``, with the default recipe's neuron and norm settings.

    At T = 1 every layer runs once per image, so the FLOPs are those of one time step (the stem of a
    static image runs once for all T steps; every other layer T times).
    """
    rows = []
    for arch, entry in MODELS.items():
        channels, side = entry.input
        torch.manual_seed(0)
        model = create_model(arch, NetSpec.from_recipe(Recipe(), num_classes, channels, side, timesteps=1)).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, channels, side, side))
        rows.append(
            ModelRow(
                arch=arch,
                input=f"{channels}x{side}x{side}",
                parameters=sum(p.numel() for p in model.parameters()),
                gflops=counter.get_total_flops() / 1e9,
                spiking_layers=len(spiking_layers(model)),
                source=entry.source,
            )
        )
    return rows
