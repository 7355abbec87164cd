"""``train.memory = "low"``: activation memory that grows about a quarter as fast with T, same gradients.

What a training step keeps for its backward pass, per spiking layer and time step, by default:

    s   the convolution's input (the previous layer's spikes)    for the weight gradient
    c   the convolution's output (the norm's input)              for the norm's backward
    h   the LIF's potentials                                     for BPTT

all in the compute dtype. In low mode spikes are kept as bits (``snn.spike_bits``), and the layers
between what is kept are run again when the backward pass reaches them, from what is kept:

- a LIF and the norms right before it (with a residual block's sum) from the convolution outputs:
  elementwise work, the norm with the same batch statistics;
- in a residual block, also the first convolution, from the block's input spikes. Recomputing only
  norms and LIFs keeps c of every layer (measured on ResNet-19 at 32 px: 47 MB of 131 per time step,
  0.36x); the backward pass then peaks in the first stage with that stage's c and its recomputation
  alive. Keeping only conv2's c per block brings it to 37 MB (0.28x) for about 9% more step time.

How: each recomputed part is a region run through non-reentrant ``torch.utils.checkpoint``, whose
inputs are what is kept (convolution outputs as they are, spikes as bits). Tensors that leave a
region besides its output, the LIF's ``v_mean`` and ``x_mean`` that IM-Loss differentiates, stay on
the graph. Recomputing a region must not count the batch twice: its BatchNorms then run on scratch
copies of their running statistics (same kernels, same batch statistics; the real buffers are
updated once, in the forward pass), and its LIFs store nothing. Max pooling of spikes (resnet34's
stem) is a region too, so its int64 indices are not kept. The recomputation runs the forward
pass's operations on the same inputs, so gradients, spikes and statistics equal the default mode's.

:func:`use_low_memory` turns a network from ``snn.models`` into this mode in place: its blocks get
the forward passes below (their classes are swapped for these subclasses, as
``torch.nn.utils.parametrize`` does; parameters, buffers and state-dict keys stay as they are). They
act only in training with gradients on; evaluation runs the plain forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from imloss_cli.snn.models import BasicBlock, Encoder, Folded, SpikingNet
from imloss_cli.snn.neuron import LIF, spiking_layers
from imloss_cli.snn.spike_bits import mark_spikes, spikes_saved_as_bits


def _active(module: nn.Module) -> bool:
    """Low mode acts where a backward pass follows: training, with gradients on."""
    return module.training and torch.is_grad_enabled()


@contextlib.contextmanager
def _replaying(modules: Sequence[nn.Module]) -> Iterator[None]:
    """A region's recomputation: BatchNorms on scratch copies of their running statistics (batch
    statistics, output and kernels as in the forward pass; the real buffers untouched), LIFs storing nothing."""
    norms = [m for mod in modules for m in mod.modules() if isinstance(m, _BatchNorm)]
    lifs = [m for mod in modules for m in mod.modules() if isinstance(m, LIF)]
    names = ("running_mean", "running_var", "num_batches_tracked")
    buffers = [(m, [getattr(m, n) for n in names]) for m in norms]
    flags = [(m, m.store_v_seq, m.store_x_mean) for m in lifs]
    try:
        for m, values in buffers:
            for name, value in zip(names, values):
                setattr(m, name, None if value is None else value.clone())
        for m in lifs:
            m.store_v_seq = m.store_x_mean = False
        yield
    finally:
        for m, values in buffers:
            for name, value in zip(names, values):
                setattr(m, name, value)
        for m, store_v_seq, store_x_mean in flags:
            m.store_v_seq, m.store_x_mean = store_v_seq, store_x_mean


class _Region:
    """``body`` as checkpoint runs it: the first call is the forward pass, every later one a recomputation."""

    def __init__(self, body: Callable[..., Tensor], modules: Sequence[nn.Module]) -> None:
        self.body, self.modules, self.calls = body, modules, 0

    def __call__(self, *inputs: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == 1:
            return self.body(*inputs)
        with _replaying(self.modules):
            return self.body(*inputs)


def recomputed(body: Callable[..., Tensor], modules: Sequence[nn.Module], *inputs: Tensor) -> Tensor:
    """``body(*inputs)`` (spikes), keeping for the backward pass only ``inputs``, the rest recomputed there.

    ``modules``: those ``body`` runs (their BatchNorms and LIFs are handled as ``_replaying`` says).
    A LIF among them that stores its sequences (``store_v_seq``) keeps only ``v_mean`` (and
    ``x_mean``): nothing reads ``v_seq`` or ``spike_seq`` in training, and holding them would hold
    the memory this mode saves.
    """
    out = checkpoint(_Region(body, modules), *inputs, use_reentrant=False, preserve_rng_state=False)
    for m in modules:
        if isinstance(m, LIF):
            m.v_seq = m.spike_seq = None
    return mark_spikes(out)


def _split(layers: nn.Sequential) -> tuple[list[nn.Module], list[nn.Module]]:
    """(leading layers, trailing norms): conv_norm's (conv, norm) is ([conv], [norm]); ([conv], []) without a norm."""
    mods = list(layers)
    k = len(mods)
    while k > 0 and isinstance(mods[k - 1], _BatchNorm):
        k -= 1
    return mods[:k], mods[k:]


def _run(layers: Sequence[nn.Module], x: Tensor) -> Tensor:
    for layer in layers:
        x = layer(x)
    return x


def _norm_then_lif(folded: nn.Sequential, lif: nn.Module, x_seq: Tensor) -> Tensor:
    """``lif(folded(x_seq))`` for a ``Folded`` [T, B, ...] input: the leading layers run here, the
    trailing norms and the LIF as a region from their output (the only activation it keeps)."""
    T, B = x_seq.shape[:2]
    head, norms = _split(folded)
    c = _run(head, x_seq.flatten(0, 1))  # [T*B, ...]
    return recomputed(lambda c: lif(_run(norms, c).unflatten(0, (T, B))), [*norms, lif], c)


class LowMemoryEncoder(Encoder):
    """``Encoder`` whose LIF (and, for frame sequences, the stem's norm) is recomputed."""

    def forward(self, x: Tensor) -> Tensor:
        if not _active(self):
            return super().forward(x)
        if x.ndim == 5:
            if x.shape[0] != self.timesteps:
                raise ValueError(f"a sequence of {x.shape[0]} frames for a network of T = {self.timesteps}")
            return _norm_then_lif(self.layers, self.lif, x)
        y = self.layers(x)  # [B, C, H, W], small: kept, and the T steps of the LIF recomputed from it
        T = self.timesteps
        return recomputed(lambda y: self.lif(y.unsqueeze(0).expand(T, *y.shape)), [self.lif], y)


class LowMemoryBasicBlock(BasicBlock):
    """``BasicBlock`` keeping conv2's output, the shortcut conv's and its input spikes (as bits):

    - conv1 + norm1 + lif1, recomputed from the input spikes (the block's first half);
    - norm2, the shortcut's norm (or its identity), the sum and lif2, recomputed from conv2's and the
      shortcut conv's outputs (or the input spikes).
    """

    def forward(self, x_seq: Tensor) -> Tensor:
        if not _active(self):
            return super().forward(x_seq)
        T, B = x_seq.shape[:2]
        s1 = recomputed(lambda x: self.lif1(self.conv1(x)), [self.conv1, self.lif1], x_seq)
        conv2, norms2 = _split(self.conv2)
        c2 = _run(conv2, s1.flatten(0, 1))
        if isinstance(self.shortcut, Folded):
            conv_sc, norms_sc = _split(self.shortcut)
            c_sc = _run(conv_sc, x_seq.flatten(0, 1))

            def tail(c2: Tensor, c_sc: Tensor) -> Tensor:
                return self.lif2(_run(norms2, c2).unflatten(0, (T, B)) + _run(norms_sc, c_sc).unflatten(0, (T, B)))

            return recomputed(tail, [*norms2, *norms_sc, self.lif2], c2, c_sc)

        def tail_identity(c2: Tensor, x_seq: Tensor) -> Tensor:
            return self.lif2(_run(norms2, c2).unflatten(0, (T, B)) + self.shortcut(x_seq))

        return recomputed(tail_identity, [*norms2, self.shortcut, self.lif2], c2, x_seq)


def _max_pool(module: nn.Module) -> bool:
    return isinstance(module, Folded) and any(isinstance(m, nn.MaxPool2d) for m in module)


class LowMemorySequential(nn.Sequential):
    """A body of ``Folded`` layers and LIFs: each ``Folded`` followed by a LIF becomes a norm + LIF
    region, each max pooling a region of its own (its input spikes as bits instead of int64 indices)."""

    def forward(self, x: Tensor) -> Tensor:
        if not _active(self):
            return super().forward(x)
        mods = list(self)
        i = 0
        while i < len(mods):
            m, after = mods[i], mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(m, Folded) and isinstance(after, LIF):
                x = _norm_then_lif(m, after, x)
                i += 2
                continue
            x = recomputed(m, [m], x) if _max_pool(m) else m(x)
            i += 1
        return x


class LowMemoryNet(SpikingNet):
    """``SpikingNet`` whose forward pass keeps every saved spike tensor as bits."""

    def forward(self, x: Tensor) -> Tensor:
        if not _active(self):
            return super().forward(x)
        with spikes_saved_as_bits():
            return super().forward(x)


_LOW_MEMORY = {SpikingNet: LowMemoryNet, Encoder: LowMemoryEncoder, BasicBlock: LowMemoryBasicBlock}


def use_low_memory(model: nn.Module) -> nn.Module:
    """Put a network of ``snn.models`` into low-memory training, in place; returns it.

    Raises:
        ValueError: a network without spiking layers (the ANN twin: no spikes to keep as bits).
    """
    if not spiking_layers(model):
        raise ValueError("low-memory training needs spiking layers; the ANN twin (ReLU) has none")
    for m in model.modules():
        low = _LOW_MEMORY.get(type(m))
        if low is None and type(m) is nn.Sequential and any(isinstance(c, LIF) for c in m):
            low = LowMemorySequential
        if low is not None:
            m.__class__ = low
    return model
