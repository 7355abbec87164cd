"""Running a NIR graph back in torch, to check an export: nirtorch's graph executor with imloss's LIF.

``nirtorch.nir_to_torch`` turns the graph into one torch module per time step; every node gets the
module of a mapping written here (nirtorch's own Affine mapping leaves the bias at random in the
releases available, and its Flatten would flatten the batch too). A LIF node becomes :class:`StepLIF`,
the discrete LIF its (tau, r) stand for: ``h = decay * h + gain * x`` with ``decay = 1 - dt/tau`` and
``gain = r dt / tau``, the spike test the network was trained with (the graph's metadata), a hard
reset to v_reset. Running it T steps and averaging the output gives imloss's logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from imloss_cli.export.nir_graph import lif_decay


class StepLIF(nn.Module):
    """One step of a NIR LIF node, stateful as nirtorch expects: ``forward(x, state) -> (spikes, state)``."""

    def __init__(self, node: Any, strict: bool) -> None:
        super().__init__()
        self.decay, self.gain = lif_decay(node.tau, node.r)
        self.register_buffer("v_threshold", torch.from_numpy(np.asarray(node.v_threshold, dtype=np.float64)))
        self.register_buffer("v_reset", torch.from_numpy(np.asarray(node.v_reset, dtype=np.float64)))
        self.strict = strict
        self.spikes: list[Tensor] = []  # every step's spikes, for the check

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.gain * x if state is None else self.decay * state + self.gain * x
        o = (h > self.v_threshold if self.strict else h >= self.v_threshold).to(x.dtype)
        self.spikes.append(o)
        return o, torch.where(o.bool(), self.v_reset.to(x.dtype).expand_as(h), h)


class _Flatten(nn.Module):
    """NIR's Flatten (no batch dimension) on a batch: dims shifted by one."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__()
        self.start, self.end = start + 1, end if end < 0 else end + 1

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start, self.end)


def _node_map(strict: bool) -> dict[type, Any]:
    import nir

    def conv(n: Any) -> nn.Module:
        w = torch.from_numpy(np.asarray(n.weight))
        layer = nn.Conv2d(w.shape[1] * int(n.groups), w.shape[0], tuple(w.shape[2:]), tuple(n.stride),
                          tuple(n.padding), tuple(n.dilation), int(n.groups))  # fmt: skip
        layer.weight.data, layer.bias.data = w, torch.from_numpy(np.asarray(n.bias))  # type: ignore[union-attr]
        return layer

    def affine(n: Any) -> nn.Module:
        w = torch.from_numpy(np.asarray(n.weight))
        layer = nn.Linear(w.shape[1], w.shape[0])
        layer.weight.data, layer.bias.data = w, torch.from_numpy(np.asarray(n.bias))
        return layer

    def pool(n: Any) -> nn.Module:
        return nn.AvgPool2d(tuple(int(v) for v in n.kernel_size), tuple(int(v) for v in n.stride),
                            tuple(int(v) for v in n.padding))  # fmt: skip

    return {
        nir.Conv2d: conv,
        nir.Affine: affine,
        nir.AvgPool2d: pool,
        nir.Flatten: lambda n: _Flatten(int(n.start_dim), int(n.end_dim)),
        nir.LIF: lambda n: StepLIF(n, strict),
        nir.Input: lambda n: nn.Identity(),
        nir.Output: lambda n: nn.Identity(),
    }


@dataclass(frozen=True)
class GraphRun:
    """What running an exported graph for T steps gave."""

    logits: Tensor  # [B, classes], the output averaged over the steps
    spikes: dict[str, Tensor]  # per LIF node (its name), [T, B, ...]


def run_graph(path: Path, inputs: Tensor, timesteps: int) -> GraphRun:
    """Read the NIR file at ``path`` and run it on ``inputs`` (images [B, C, H, W], the same at every step,
    or frames [B, T, C, H, W]) in float64."""
    import nir
    import nirtorch

    graph = nir.read(str(path))
    strict = str(graph.metadata.get("spike_test", "")) == "v > V_th"
    module = nirtorch.nir_to_torch(graph, _node_map(strict), dtype=torch.float64)
    lifs = {name: m for name, m in module.named_modules() if isinstance(m, StepLIF)}
    x = inputs.double()
    state = None
    outputs = []
    with torch.no_grad():
        for t in range(timesteps):
            out, state = module(x if x.ndim == 4 else x[:, t], state)
            outputs.append(out)
    return GraphRun(torch.stack(outputs).mean(0), {name: torch.stack(m.spikes) for name, m in lifs.items()})
