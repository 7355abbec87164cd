"""What one inference costs: synaptic operations of the spikes, multiply-accumulates of the rest.

Only weight layers (``nn.Conv2d``, ``nn.Linear``) are counted: normalisation folds into the
convolution before it at inference, and pooling and the LIF updates are a small share that papers
leave out as well.

A weight layer whose input is a spike map does one accumulate, a synaptic operation (SOP), per
spike and weight it meets. For the spikes s[t, b, p] of neuron p of LIF l,

    SOP_l = sum_p c_l[p] * f_l[p],     c_l[p] = sum_{t, b} s[t, b, p],   f_l[p] = sum_m f_m[p]

where c_l are the per-neuron spike counts the layer statistics sum on the device anyway, and
f_m[p] is the fan-out of neuron p into weight layer m reading the map: the number of
(weight, output position) pairs whose input is p. The fan-out is computed, not estimated as
k*k*C_out/stride^2: each output of m is a sum of weight * input, so with every weight set to 1
and no bias, d sum(m(x)) / dx_p is exactly the number of weights that read x_p, at borders, with
strides, padding, dilation and groups alike. A map read by several layers (a residual block's
input, read by conv1 and by the shortcut convolution) adds the fan-out of each. Counting
therefore costs one dot product per layer at the end of an evaluation pass; during the pass,
only a max-pool of spikes (below) adds a per-batch sum.

Which layers read which map is found once, by a probe (:func:`plan_ops`): one forward pass of
one image with a forward hook on every leaf module, following tensors by their storage:

- a LIF's output is a spike map;
- views (``nn.Identity``, ``nn.Flatten``, ``nn.Dropout``, and the reshapes between modules,
  such as ``Folded``'s [T, B] <-> [T*B]) pass a map on unchanged;
- an average pool (``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d``: the global pool before a readout or
  the FC-256 head) passes it on as a window sum, since its 1/|window| folds into the next weights:
  a spike drives the weights of every pooled position whose window holds it, so a spike map read
  through AvgPool2d(H), AdaptiveAvgPool2d(1) or the readout's mean costs the same SOPs;
- ``nn.MaxPool2d`` of a map is a new, binary map of the same LIF; its counts are summed while
  the pass runs, because a max is not linear in the spikes;
- a weight layer whose input is none of these reads real values: its MACs are counted as
  computed, from the shapes (the stem on pixels: once per image behind ``Encoder`` for static images, T
  times if it ran on [T*B] frames; every layer of the ANN twin). A copy the probe cannot follow
  makes a read count as dense MACs, never as fewer operations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imloss_cli.errors import ImlossError
from imloss_cli.snn.neuron import LIF

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)
VIEWS = (nn.Identity, nn.Flatten, nn.Dropout)
AVERAGE_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)  # linear in the spikes: window sums, 1/|window| folds on


class OpsError(ImlossError):
    """The probe met a read of a spike map it cannot count exactly."""


@dataclass(frozen=True)
class SpikeMap:
    """A binary tensor of the forward pass and what reading it costs per spike.

    Attributes:
        module: the module whose output it is: a LIF, or a max-pool of a LIF's spikes.
        owner: the LIF the spikes come from (its ``sops_per_image`` gets them).
        fanout: float64, one value per neuron of one time step of one image ([C, H, W] or [F]):
            the weights a spike of that neuron drives, summed over every reader.
        readers: the weight layers that read it, in call order.
    """

    module: str
    owner: str
    fanout: Tensor
    readers: tuple[str, ...]


@dataclass(frozen=True)
class OpsPlan:
    """The structure of a network's costs, from :func:`plan_ops`.

    Attributes:
        maps: every spike map that some weight layer reads.
        dense: MACs per image of each weight layer that reads real values, by layer name.
    """

    maps: tuple[SpikeMap, ...]
    dense: dict[str, float]

    @property
    def macs_per_image(self) -> float:
        return sum(self.dense.values())

    def derived(self) -> tuple[SpikeMap, ...]:
        """The maps made from a LIF's spikes by a max-pool: counted while a pass runs."""
        return tuple(m for m in self.maps if m.module != m.owner)


@dataclass
class _Seen:
    """A tensor of the probe that carries a spike map: which, and the window sums since it was made."""

    map_module: str
    owner: str
    shape: tuple[int, ...]  # of one sample of the map
    pools: tuple[tuple[nn.Module, tuple[int, ...]], ...] = ()  # (average pool, its input shape of one sample)


@dataclass
class _Probe:
    names: dict[nn.Module, str]
    seen: dict[int, _Seen] = field(default_factory=dict)  # storage address -> map
    reads: list[tuple[_Seen, str, nn.Module, tuple[int, ...]]] = field(default_factory=list)  # + reader's input
    maps: dict[str, _Seen] = field(default_factory=dict)
    dense: dict[str, float] = field(default_factory=dict)
    alive: list[Tensor] = field(default_factory=list)  # keeps storage addresses from being reused

    def hook(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        x = args[0] if args and isinstance(args[0], Tensor) else None
        if not isinstance(out, Tensor):
            return
        self.alive += [out] if x is None else [x, out]
        name = self.names[module]
        came = self.seen.get(_address(x)) if x is not None else None
        if isinstance(module, LIF):
            self._new_map(out, _Seen(name, name, tuple(out.shape[2:])))  # [T, B, ...]
        elif isinstance(module, WEIGHT_LAYERS):
            if came is None:
                self.dense[name] = self.dense.get(name, 0.0) + _dense_macs(module, out)
            else:
                self.reads.append((came, name, module, tuple(x.shape[1:])))
        elif came is None:
            return
        elif isinstance(module, VIEWS):
            self.seen.setdefault(_address(out), came)
        elif isinstance(module, AVERAGE_POOLS):
            self.seen[_address(out)] = _Seen(
                came.map_module, came.owner, came.shape, (*came.pools, (module, tuple(x.shape[1:])))
            )
        elif isinstance(module, nn.MaxPool2d) and not came.pools:  # max of spikes: spikes again
            self._new_map(out, _Seen(name, came.owner, tuple(out.shape[1:])))  # folded [T*B, ...]

    def _new_map(self, out: Tensor, seen: _Seen) -> None:
        self.seen[_address(out)] = seen
        self.maps[seen.map_module] = seen

    def plan(self) -> OpsPlan:
        """The maps with their readers' fan-out (computed after the pass, with the hooks removed)."""
        maps = []
        for module, seen in self.maps.items():
            reads = [(name, _fanout(came, layer, shape)) for came, name, layer, shape in self.reads
                     if came.map_module == module]  # fmt: skip
            if reads:
                fanout = torch.stack([f for _, f in reads]).sum(0)
                maps.append(SpikeMap(module, seen.owner, fanout, tuple(r for r, _ in reads)))
        return OpsPlan(tuple(maps), dict(self.dense))


def _address(x: Tensor) -> int:
    return x.untyped_storage().data_ptr()


def _dense_macs(layer: nn.Module, out: Tensor) -> float:
    """MACs of one call on real values: every output element needs one product per weight it sums."""
    w = layer.weight
    return float(out.numel() * (w.numel() // w.shape[0]))


def _fanout(seen: _Seen, layer: nn.Module, in_shape: tuple[int, ...]) -> Tensor:
    """Weights driven by a spike of each neuron of ``seen``'s map through ``layer`` (one image, one step).

    The derivative at x = 0 of sum(layer(x)) with all weights 1 and no bias, after the window sums
    of the average pools in between; reshapes keep the logical order, as ``Folded`` and ``Flatten`` do.
    Every output channel of a group reads its inputs alike, so the layer runs with one output
    channel per group and the result is scaled by the channels per group.
    """
    groups = getattr(layer, "groups", 1)
    per_group = layer.weight.shape[0] // groups
    params = {"weight": torch.ones(groups, *layer.weight.shape[1:], dtype=torch.float64)}
    if layer.bias is not None:
        params["bias"] = torch.zeros(groups, dtype=torch.float64)
    with torch.enable_grad():  # the probe runs under no_grad
        x = torch.zeros(1, *seen.shape, dtype=torch.float64, requires_grad=True)
        z = x
        for pool, shape in seen.pools:
            z = _window_sum(pool, _reshape(z, shape, layer))
        z = _reshape(z, in_shape, layer)
        (grad,) = torch.autograd.grad(torch.func.functional_call(layer, params, (z,)).sum(), x)
    return grad[0] * per_group


def _window_sum(pool: nn.Module, z: Tensor) -> Tensor:
    """The pool's windows summed instead of averaged (its 1/|window| folds into the reader's weights)."""
    if isinstance(pool, nn.AvgPool2d):
        return F.avg_pool2d(z, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, True, divisor_override=1)
    # Adaptive windows: rows floor(i*H/out) .. ceil((i+1)*H/out) - 1, likewise columns; the mean times each
    # window's size is its sum.
    out = F.adaptive_avg_pool2d(z, pool.output_size)  # type: ignore[attr-defined]
    (h, w), (oh, ow) = z.shape[-2:], out.shape[-2:]

    def sizes(n: int, m: int) -> Tensor:
        return torch.tensor([-(-(i + 1) * n // m) - i * n // m for i in range(m)], dtype=z.dtype)

    return out * sizes(h, oh).view(-1, 1) * sizes(w, ow).view(1, -1)


def _reshape(z: Tensor, shape: tuple[int, ...], layer: nn.Module) -> Tensor:
    if math.prod(shape) != z[0].numel():
        raise OpsError(
            f"{type(layer).__name__} reads {math.prod(shape)} values of a spike map of {z[0].numel()} neurons per "
            "sample; only whole maps, reshaped in order, can be counted"
        )
    return z.reshape(1, *shape)


def plan_ops(model: nn.Module, sample: Tensor) -> OpsPlan:
    """Find every spike map, its readers and their fan-out, and the dense MACs, in one probe pass.

    Args:
        model: the network (any device; it is run in eval mode and left in the mode it was in).
        sample: the network's input for one image (a batch of one), e.g. [1, C, H, W].

    Returns:
        The plan; the fan-outs are float64 on the CPU.

    Raises:
        OpsError: a weight layer reads part of a spike map.
    """
    probe = _Probe({m: n for n, m in model.named_modules()})
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(probe.hook) for m in leaves]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    return probe.plan()  # the fan-outs call the layers again: after the hooks are gone


@contextmanager
def count_derived(model: nn.Module, plan: OpsPlan, counts: dict[str, Tensor | None]) -> Iterator[None]:
    """While inside, sum over every forward pass the per-neuron spikes of the plan's derived maps.

    ``counts[module]`` becomes a float64 tensor of the map's neuron shape, on the map's device.
    """

    def adder(name: str, ndim: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            batch = out.detach().flatten(0, out.ndim - ndim - 1).sum(0, dtype=torch.float64)
            counts[name] = batch if counts.get(name) is None else counts[name] + batch

        return hook

    handles = [
        model.get_submodule(m.module).register_forward_hook(adder(m.module, m.fanout.ndim)) for m in plan.derived()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
