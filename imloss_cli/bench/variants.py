"""The benchmark's variants: module surgery swaps every LIF of a model for another neuron.

imloss (the fused LIF on its eager, compiled or Triton kernels; imloss-plif: the same kernels with Fang et
al.'s PLIF, its learnable time constant from the recipe's ``neuron.plif_tau``), each also in low-memory
training (``imloss-low``, ``snn.memory``), the naive per-step loop, SpikingJelly 2.0's LIF with the same
dynamics, and the same with SpikingJelly's memopt (every block checkpointed, its input spikes kept as
bits), the ReLU floor (with the stem on [B] or, for relu-tb, on the folded batch T*B), and conv-only: the
convolutions alone (norms and neurons are identities), a bound below every variant.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import Tensor, nn

from imloss_cli.errors import ImlossError
from imloss_cli.recipe import MEMORY_MODES, NeuronConfig
from imloss_cli.snn.memory import use_low_memory
from imloss_cli.snn.models import BasicBlock, Encoder, Folded
from imloss_cli.snn.neuron import LIF, spiking_layers
from imloss_cli.snn.reference import lif_naive

KNOWN = (
    "imloss", "imloss-eager", "imloss-plif", "naive", "spikingjelly", "spikingjelly-memopt", "relu", "relu-tb",
    "conv-only",
)  # fmt: skip
IMLOSS_KINDS = ("imloss", "imloss-eager", "imloss-plif")  # the variants that run in every --memory-mode
SJ_CUDA_BACKENDS = ("triton", "cuda", "torch")  # SpikingJelly 2.0's CUDA providers (no cupy any more)


def memory_variant(variant: str, mode: str) -> str:
    """An imloss variant's name in a training memory mode: ``imloss`` by default, ``imloss-low`` in "low"."""
    return variant if mode == MEMORY_MODES[0] else f"{variant}-{mode}"


def split_memory_variant(variant: str) -> tuple[str, str]:
    """(variant, memory mode) of a name: the inverse of ``memory_variant`` (other variants: their default mode)."""
    for mode in MEMORY_MODES[1:]:
        kind = variant.removesuffix(f"-{mode}")
        if kind != variant and kind in IMLOSS_KINDS:
            return kind, mode
    return variant, MEMORY_MODES[0]


class BenchError(ImlossError):
    """The benchmark cannot run as asked (unknown variant or architecture, no CUDA device)."""


class NaiveLIF(nn.Module):
    """``lif_naive``: one autograd node per time step, as in the authors' code."""

    def __init__(self, lif: LIF) -> None:
        super().__init__()
        self.params = lif.params
        self.register_buffer("k", lif.k.detach().clone(), persistent=False)
        self.v_mean: Tensor | None = None

    def forward(self, x_seq: Tensor) -> Tensor:
        spike_seq, v_seq = lif_naive(x_seq, self.k.to(x_seq.dtype), self.params)
        self.v_mean = v_seq.mean(dtype=torch.float32)
        return spike_seq


class ReLUNeuron(nn.Module):
    """The floor: ReLU on the same tensors; IM-Loss runs on its input as if it were the potential."""

    def __init__(self) -> None:
        super().__init__()
        self.v_mean: Tensor | None = None

    def forward(self, x_seq: Tensor) -> Tensor:
        self.v_mean = x_seq.mean(dtype=torch.float32)
        return torch.relu(x_seq)


class IdentityNeuron(ReLUNeuron):
    """conv-only's neuron: passes its input on; IM-Loss sees its mean, as with ReLUNeuron."""

    def forward(self, x_seq: Tensor) -> Tensor:
        self.v_mean = x_seq.mean(dtype=torch.float32)
        return x_seq


_SJ_SELECTIONS: dict[str, dict] = {}


def _sj_use(backend: str | None) -> None:
    """Point SpikingJelly's LIF op at one CUDA provider (2.0 picks one per process from
    $SJ_LIF_CUDA_IMPLEMENTATION; swapping its private selection lets interleaved rows differ)."""
    if backend is None:
        return
    from spikingjelly._ops.lif import _selection

    _selection._requested = backend
    _selection._selections = _SJ_SELECTIONS.setdefault(backend, {})


class SpikingJellyLIF(nn.Module):
    """SpikingJelly 2.0's LIFNode with our dynamics: decay_input=False and v_reset=0 give
    H = V - V/tau + X = decay * V + X for tau = 1/(1 - decay). Sigmoid(alpha=2K) is exactly ESG's
    surrogate (1/2 tanh(K u) + 1/2 = sigmoid(2K u)), so gradients match too.

    Forward calls ``functional.lif_multi_step`` (what ``LIFNode.multi_step_forward`` calls) with an fp32
    initial state: LIFNode would make the state bf16 under autocast, which sends SJ to its slow
    reference path. The node is stateless here, so no ``reset_net`` is needed between steps.
    """

    def __init__(self, lif: LIF, backend: str | None = None) -> None:
        super().__init__()
        from spikingjelly.activation_based import neuron, surrogate

        self.node = neuron.LIFNode(
            tau=1.0 / (1.0 - lif.params.decay),
            decay_input=False,
            v_threshold=lif.params.v_threshold,
            v_reset=None if lif.params.soft_reset else 0.0,
            surrogate_function=surrogate.Sigmoid(alpha=2.0 * float(lif.k)),
            detach_reset=lif.params.detach_reset,
            step_mode="m",
            store_v_seq=True,
        )
        self.backend = backend
        self.v_mean: Tensor | None = None
        # SJ's v_seq (the potential after the reset) is kept only on request (the gate): holding it
        # through the step would charge SJ memory that IM-Loss, which needs only its mean, does not use.
        self.keep_v_seq = False
        self.v_seq: Tensor | None = None

    def forward(self, x_seq: Tensor) -> Tensor:
        from spikingjelly.activation_based import functional

        _sj_use(self.backend)
        n = self.node
        v0 = torch.zeros(x_seq.shape[1:], dtype=torch.float32, device=x_seq.device)
        spike_seq, _, v_seq = functional.lif_multi_step(
            x_seq, v0, n.tau, n.decay_input, n.v_threshold, n.v_reset, n.surrogate_function, n.detach_reset, True
        )
        # spikingjelly-memopt runs the node again in the backward pass, from a checkpoint: the loss
        # read the first call's v_mean, and keeping the second would keep its recomputed graph alive.
        if self.v_mean is None:
            self.v_mean = v_seq.mean(dtype=torch.float32)
            self.v_seq = v_seq if self.keep_v_seq else None
        return spike_seq


class FoldedEncoder(Encoder):
    """Encoder without the broadcast trick for images: the stem runs on the folded batch [T*B, ...]."""

    def forward(self, x: Tensor) -> Tensor:
        T, B = self.timesteps, x.shape[0]
        x_flat = x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1)  # [T*B, C, H, W]
        return self.lif(self.layers(x_flat).unflatten(0, (T, B)))  # [T, B, C', H', W']


def sj_memopt(model: nn.Module, example: Tensor) -> nn.Module:
    """SpikingJelly 2.0's memopt at level 1 (the level that runs without CUDA): every stem, residual
    block and ``Folded`` layer outside them checkpointed, its first input kept as bits where
    memopt's probe on ``example`` finds it binary (SpikingJelly's CIFAR10-DVS example checkpoints
    its conv-BN-neuron blocks the same way). The neurons must be cleared after every step (the
    benchmark's step does): each keeps the first v_mean of a step."""
    from spikingjelly.activation_based import memopt

    memopt.optimize_memory(model, (Encoder, BasicBlock, Folded), lambda m: m(example), level=1, compress=True)
    for m in model.modules():  # what memopt's probing forward pass left behind
        if isinstance(m, SpikingJellyLIF):
            m.v_mean = m.v_seq = None
    return model


def build_variant(
    base: nn.Module, variant: str, kernels: str = "compiled", example: Tensor | None = None
) -> tuple[nn.Module, list[nn.Module]]:
    """A deep copy of ``base`` with its LIF layers swapped for ``variant``'s neurons.

    ``kernels`` is the LIF kernel set of the "imloss" variant ("imloss-eager" always runs "eager");
    an imloss variant named for a memory mode (``imloss-low``) trains in that mode. ``example``: an
    input batch, which spikingjelly-memopt needs (memopt probes the network with it).

    Returns the model and its neurons, in order (all of them are hidden layers that IM-Loss uses).
    """
    model = copy.deepcopy(base)
    variant, memory = split_memory_variant(variant)
    kind, _, backend = variant.partition("[")
    backend = backend.rstrip("]") or None
    neurons: list[nn.Module] = []
    for name, lif in spiking_layers(model):
        if kind in ("imloss", "imloss-eager"):
            lif.kernels, lif.store_v_seq = kernels if kind == "imloss" else "eager", True
            neurons.append(lif)
            continue
        new: nn.Module
        if kind == "imloss-plif":  # Fang et al.'s PLIF at the recipe's tau0, on the same kernels
            tau = NeuronConfig().plif_tau
            params = replace(lif.params, decay=1.0 - 1.0 / tau, decay_input=True)
            plif = LIF(params, kernels, lif.block_output, learn_decay=True)
            plif.store_v_seq = True
            new = plif
        elif kind == "naive":
            new = NaiveLIF(lif)
        elif kind in ("spikingjelly", "spikingjelly-memopt"):
            new = SpikingJellyLIF(lif, backend)
        elif kind in ("relu", "relu-tb"):
            new = ReLUNeuron()
        elif kind == "conv-only":
            new = IdentityNeuron()
        else:
            raise BenchError(f"unknown variant {variant!r}; known: {', '.join(KNOWN)}")
        model.set_submodule(name, new.to(lif.k.device))
        neurons.append(new)
    if kind == "conv-only":  # every norm goes too: what is left is what no variant can skip
        norms = [name for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        for name in norms:
            model.set_submodule(name, nn.Identity())
    if kind == "relu-tb":
        enc = model.encoder
        if not isinstance(enc, Encoder):
            raise BenchError("relu-tb needs a model whose encoder is an Encoder")
        model.encoder = FoldedEncoder(enc.layers, enc.lif, enc.timesteps)
    if memory == "low":
        use_low_memory(model)
    if kind == "spikingjelly-memopt":
        if example is None:
            raise BenchError("spikingjelly-memopt needs an example batch to probe the network with")
        sj_memopt(model, example)
    return model, neurons
