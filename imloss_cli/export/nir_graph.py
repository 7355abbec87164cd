"""A trained imloss network as a NIR graph (the Neuromorphic Intermediate Representation, ``nir`` 1.0.x).

One NIR graph is one time step of the network; a simulator runs it T times. The mapping:

- convolution + BatchNorm (or tdBN) -> one ``Conv2d``, the norm folded in with its running statistics:
  ``w' = w * s``, ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)`` per channel (tdBN's
  gamma is ``lambda * alpha * V_th``); computed and stored in float64, so nothing is rounded twice;
- LIF -> ``LIF`` with the usual discrete-time mapping: for ``h[t] = decay * h[t-1] + x[t]`` and a step
  dt, ``tau = dt / (1 - decay)``, ``r = tau / dt``, ``v_leak = v_reset = 0`` (a hard reset), the
  threshold V_th; forward Euler of ``tau dv/dt = v_leak - v + r I`` over dt is then that update
  exactly. dt = 1e-4 (snnTorch's choice; only dt/tau matters). A learned decay is the trained one
  (from w, in float64); Fang et al.'s charge ``h[t] = decay * h[t-1] + (1 - decay) x[t]`` is r = 1;
- MPBN's LIF -> ``LIF`` whose ``v_threshold`` is the folded per-channel threshold V'_c
  (``MembraneBNLIF.folded_thresholds``, every neuron of a channel the same): its BatchNorm between
  potential and threshold folds away with the running statistics (a channel with gamma <= 0 fires
  below V'_c and is refused, named);
- a residual block's sum -> two edges into its output LIF (NIR sums the inputs of a node);
- average pooling -> ``AvgPool2d`` (the global pool before a readout: its window is the whole map);
- flatten -> ``Flatten`` (NIR shapes have no batch dimension, so torch's dim 1 is NIR's 0);
- the readout -> ``Affine``, the graph's output; imloss averages it over the T steps.

NIR's LIF fires on ``v > v_threshold``; imloss's default spike test is ``v >= V_th`` (the two differ
only at exact equality): the graph's metadata names the test the network was trained with. What NIR
cannot express is refused before anything is written, naming the layer: a soft reset, max pooling,
an MPBN channel with gamma <= 0, the ANN twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from imloss_cli.export.problems import ExportError
from imloss_cli.snn.models import BasicBlock, Encoder, Folded, Readout, SpikingNet
from imloss_cli.snn.mpbn import MembraneBNLIF
from imloss_cli.snn.neuron import LIF
from imloss_cli.snn.norm import TdBatchNorm2d

DT = 1e-4
"""The time step a LIF's tau is expressed in; NIR stores tau and r, and only dt/tau matters."""


def network_graph(model: SpikingNet, sample: torch.Tensor, metadata: dict[str, Any]) -> Any:
    """The NIR graph of ``model`` (in eval mode, its running statistics) for inputs like ``sample``.

    Args:
        model: an imloss network.
        sample: one input of the network, batch of one: an image [1, C, H, W] or frames [1, T, C, H, W].
        metadata: stored with the graph (strings and numbers).

    Raises:
        ExportError: a layer NIR cannot express (named).
    """
    import nir

    builder = _Builder(model, sample)
    x = builder.add("input", nir.Input(input_type=np.array(builder.step_input)), [])
    x = builder.encoder(model.encoder, x)
    for index, module in enumerate(model.body):
        x = builder.module(f"body.{index}", module, x)
    x = builder.readout(model.readout, x)
    builder.add("output", nir.Output(output_type=None), [x])
    spike_test = "v > V_th" if any(m.params.strict for m in builder.lifs) else "v >= V_th"
    meta = {**metadata, "dt": DT, "spike_test": spike_test, "readout": "the output averaged over the T steps"}
    return nir.NIRGraph(nodes=builder.nodes, edges=builder.edges, metadata=meta)


class _Builder:
    """Walks an imloss network in forward order and adds its NIR nodes and edges."""

    def __init__(self, model: SpikingNet, sample: torch.Tensor) -> None:
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.lifs: list[LIF] = []
        self.names = {m: n for n, m in model.named_modules()}
        self.shapes = _probe_shapes(model, sample)
        # one step's input: an image [C, H, W], or one frame of a sequence [1, T, C, H, W]
        self.step_input = tuple(sample.shape[1:] if sample.ndim == 4 else sample.shape[2:])

    def add(self, name: str, node: Any, sources: Sequence[str]) -> str:
        key = name.replace(".", "_")
        self.nodes[key] = node
        self.edges += [(s, key) for s in sources]
        return key

    def encoder(self, encoder: Encoder, x: str) -> str:
        layers = encoder.layers
        x = self.sequence("encoder.layers", list(layers) if isinstance(layers, nn.Sequential) else [layers], x)
        return self.neuron(encoder.lif, [x])

    def module(self, name: str, module: nn.Module, x: str) -> str:
        if isinstance(module, Folded):
            return self.sequence(name, list(module), x)
        if isinstance(module, BasicBlock):
            y = self.sequence(f"{name}.conv1", list(module.conv1), x)
            y = self.neuron(module.lif1, [y])
            y = self.sequence(f"{name}.conv2", list(module.conv2), y)
            short = (
                x
                if isinstance(module.shortcut, nn.Identity)
                else self.sequence(f"{name}.shortcut", list(module.shortcut), x)
            )
            return self.neuron(module.lif2, [y, short])  # NIR sums a node's inputs: the residual addition
        if isinstance(module, (LIF, nn.ReLU)):
            return self.neuron(module, [x])
        if not list(module.children()):
            return self.sequence(name, [module], x)
        raise ExportError(f"{name}: {type(module).__name__} has no NIR counterpart")

    def readout(self, readout: Readout, x: str) -> str:
        pool = list(readout.pool) if isinstance(readout.pool, nn.Sequential) else [readout.pool]
        x = self.sequence("readout.pool", pool, x)
        return self.sequence("readout", [readout.fc], x)

    def neuron(self, lif: nn.Module, sources: list[str]) -> str:
        import nir

        name = self.names[lif]
        if not isinstance(lif, LIF):
            raise ExportError(f"{name}: {type(lif).__name__} is not a spiking neuron (the ANN twin does not export)")
        if lif.params.soft_reset:
            raise ExportError(f"{name}: a soft reset subtracts V_th; NIR's LIF resets to v_reset")
        decay = lif.decay_value()
        if not decay < 1.0:
            raise ExportError(f"{name}: decay {decay} has no leak; NIR's LIF needs tau = dt / (1 - decay) finite")
        shape = self.shapes[lif]
        tau = DT / (1.0 - decay)  # in float64: 1 - dt / tau gives the decay back
        # the input's gain per step, r dt / tau: 1 (imloss's charge) or 1 - decay (Fang et al.'s: r = 1)
        r = 1.0 if lif.params.decay_input else tau / DT
        self.lifs.append(lif)
        node = nir.LIF(
            tau=np.full(shape, tau), r=np.full(shape, r), v_leak=np.zeros(shape),
            v_threshold=self._thresholds(name, lif, shape), v_reset=np.zeros(shape),
        )  # fmt: skip
        return self.add(name, node, sources)

    @staticmethod
    def _thresholds(name: str, lif: LIF, shape: tuple[int, ...]) -> np.ndarray:
        """V_th for every neuron: the layer's, or MPBN's folded per-channel thresholds (float64, eval
        statistics) broadcast over the channel's neurons."""
        if not isinstance(lif, MembraneBNLIF):
            return np.full(shape, float(lif.params.v_threshold))
        try:
            folded = lif.folded_thresholds(torch.float64).cpu().numpy()
        except ValueError as e:
            raise ExportError(f"{name}: {e}; NIR's LIF fires above its threshold") from None
        return np.broadcast_to(folded.reshape(-1, *(1,) * (len(shape) - 1)), shape).copy()

    def sequence(self, name: str, layers: list[nn.Module], x: str) -> str:
        """Stateless layers in order; a BatchNorm folds into the convolution before it."""
        import nir

        i = 0
        while i < len(layers):
            layer = layers[i]
            where = f"{name}.{i}"
            if isinstance(layer, nn.Conv2d):
                norm = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d) else None
                x = self.add(where, _conv(layer, norm, self.shapes[layer][0]), [x])
                i += 2 if norm is not None else 1
                continue
            if isinstance(layer, nn.Linear):
                weight = layer.weight.detach().double().numpy()
                bias = layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(weight.shape[0])
                x = self.add(where, nir.Affine(weight=weight, bias=bias), [x])
            elif isinstance(layer, nn.AvgPool2d):
                x = self.add(where, _avg_pool(layer.kernel_size, layer.stride or layer.kernel_size, layer.padding), [x])
            elif isinstance(layer, nn.AdaptiveAvgPool2d):
                h, w = self.shapes[layer][0][-2:]  # (input shape, output shape): its window is the whole input
                if self.shapes[layer][1][-2:] != (1, 1):
                    raise ExportError(
                        f"{where}: an adaptive pool to {self.shapes[layer][1][-2:]} has no NIR counterpart"
                    )
                x = self.add(where, _avg_pool((h, w), (h, w), 0), [x])
            elif isinstance(layer, nn.Flatten):
                x = self.add(where, nir.Flatten(input_type=None, start_dim=0, end_dim=-1), [x])
            elif isinstance(layer, nn.Identity):
                pass
            elif isinstance(layer, nn.MaxPool2d):
                raise ExportError(
                    f"{self.names.get(layer, where)}: NIR has no max pooling (resnet34: model.stem_pool = 'avg')"
                )
            elif isinstance(layer, nn.BatchNorm2d):
                raise ExportError(
                    f"{self.names.get(layer, where)}: a BatchNorm without a convolution before it to fold into"
                )
            else:
                raise ExportError(f"{self.names.get(layer, where)}: {type(layer).__name__} has no NIR counterpart")
            i += 1
        return x


def _conv(conv: nn.Conv2d, norm: nn.BatchNorm2d | None, in_shape: tuple[int, ...]) -> Any:
    """The convolution with the norm (eval mode: running statistics) folded in, in float64."""
    import nir

    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if norm is not None:
        gamma = norm.weight.detach().double()
        if isinstance(norm, TdBatchNorm2d):
            gamma = gamma * float(norm.scale)
        s = gamma / torch.sqrt(norm.running_var.double() + norm.eps)  # type: ignore[union-attr]
        w = w * s.view(-1, 1, 1, 1)
        b = (b - norm.running_mean.double()) * s + norm.bias.detach().double()  # type: ignore[union-attr]
    return nir.Conv2d(
        input_shape=tuple(in_shape[-2:]), weight=w.numpy(), stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=b.numpy(),
    )  # fmt: skip


def _avg_pool(kernel: Any, stride: Any, padding: Any) -> Any:
    import nir

    def pair(v: Any) -> np.ndarray:
        return np.array(v if isinstance(v, (tuple, list)) else (v, v))

    return nir.AvgPool2d(kernel_size=pair(kernel), stride=pair(stride), padding=pair(padding))


def _probe_shapes(model: nn.Module, sample: torch.Tensor) -> dict[nn.Module, Any]:
    """Per module, the shape of one sample at one step: a LIF its output [...] (inputs are [T, B, ...]);
    other leaves (input shape, output shape) without the folded batch dimension."""
    shapes: dict[nn.Module, Any] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if isinstance(module, LIF):
            shapes[module] = tuple(out.shape[2:])
        elif args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            shapes[module] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))

    modules = [m for m in model.modules() if isinstance(m, LIF) or not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return shapes


def lif_decay(tau: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """(decay, input gain) of a NIR LIF stepped by forward Euler over ``DT``: 1 - dt/tau and r dt/tau."""
    ratio = DT / np.asarray(tau, dtype=np.float64)
    decays, gains = 1.0 - ratio, np.asarray(r, dtype=np.float64) * ratio
    if not (np.allclose(decays, decays.flat[0]) and np.allclose(gains, gains.flat[0])):
        raise ExportError("a LIF whose neurons have different time constants: imloss runs one decay per layer")
    return float(decays.flat[0]), float(gains.flat[0])
