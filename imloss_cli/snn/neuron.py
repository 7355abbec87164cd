"""Multi-step leaky integrate-and-fire neuron on time-first tensors [T, B, ...].

    h[t] = decay * r(h[t-1], o[t-1]) + x[t]        (h: membrane potential before the spike)
    o[t] = H(h[t] - V_th)
    r(h, o) = h * (1 - o)        hard reset
    r(h, o) = h - V_th * o       soft reset

The whole time loop is one autograd function: forward saves only the pre-spike potentials h,
backward recomputes the spikes from them and runs BPTT in a second loop, with the ESG surrogate
g'(h) = 1/2 K (1 - tanh(K (h - V_th))^2) for dO/dh. Both loops are plain tensor code that
torch.compile can fuse into one kernel each.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from imloss_cli.snn.surrogate import surrogate_grad


def lif_forward_loop(
    x_seq: Tensor, decay: float, v_threshold: float, soft_reset: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LIF over T steps.

    Returns:
        spike_seq and v_seq, both shaped like x_seq [T, B, ...], and v_mean, the mean of v_seq
        (the quantity IM-Loss needs; computed here so a compiled kernel fuses it into the loop).
    """
    spike_seq = torch.empty_like(x_seq)
    v_seq = torch.empty_like(x_seq)
    h = x_seq[0]
    for t in range(x_seq.shape[0]):
        if t > 0:
            o = spike_seq[t - 1]
            kept = h - v_threshold * o if soft_reset else h * (1.0 - o)
            h = decay * kept + x_seq[t]
        v_seq[t] = h
        spike_seq[t] = (h >= v_threshold).to(x_seq.dtype)
    return spike_seq, v_seq, v_seq.mean(dtype=torch.float32)


def lif_backward_loop(
    grad_spike: Tensor,
    grad_v: Tensor | None,
    grad_v_mean: Tensor | None,
    v_seq: Tensor,
    k: Tensor,
    decay: float,
    v_threshold: float,
    soft_reset: bool,
    detach_reset: bool,
) -> Tensor:
    """BPTT through the LIF. Returns dL/dx_seq given dL/dspike_seq, dL/dv_seq, dL/dv_mean and h.

    dL/dv_mean reaches every h[t] as the same constant dL/dv_mean / numel, added here instead of
    being expanded into a full tensor by autograd. With g = dL/dh[t+1] flowing back from step t+1:
        dL/do[t] = grad_spike[t] + g * dh[t+1]/do[t]      (-decay*h[t] hard, -decay*V_th soft, 0 detached)
        dL/dh[t] = grad_v[t] + dL/do[t] * g'(h[t]) + g * dh[t+1]/dh[t]|o   (decay*(1-o[t]) hard, decay soft)
        dL/dx[t] = dL/dh[t]
    """
    grad_x = torch.empty_like(v_seq)
    g = torch.zeros_like(v_seq[0])
    from_mean = None if grad_v_mean is None else (grad_v_mean / v_seq.numel()).to(v_seq.dtype)
    for t in range(v_seq.shape[0] - 1, -1, -1):
        h = v_seq[t]
        o = (h >= v_threshold).to(h.dtype)
        grad_o = grad_spike[t]
        if not detach_reset:
            grad_o = grad_o - g * (decay * v_threshold if soft_reset else decay * h)
        through = g * decay if soft_reset else g * (decay * (1.0 - o))
        grad_h = grad_o * surrogate_grad(h, k, v_threshold) + through
        if grad_v is not None:
            grad_h = grad_h + grad_v[t]
        if from_mean is not None:
            grad_h = grad_h + from_mean
        grad_x[t] = grad_h
        g = grad_h
    return grad_x


class LIFKernels(NamedTuple):
    forward: Callable[..., tuple[Tensor, Tensor, Tensor]]
    backward: Callable[..., Tensor]


EAGER_KERNELS = LIFKernels(lif_forward_loop, lif_backward_loop)


@functools.cache
def compiled_kernels() -> LIFKernels:
    """The two loops compiled once per process (each becomes a single fused kernel)."""
    return LIFKernels(torch.compile(lif_forward_loop), torch.compile(lif_backward_loop))


class MultiStepLIFFunction(torch.autograd.Function):
    """Fused multi-step LIF: no per-time-step autograd graph, only h is saved for backward.

    Outputs (spike_seq, v_seq, v_mean); any of them may carry a gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x_seq: Tensor,
        k: Tensor,
        decay: float,
        v_threshold: float,
        soft_reset: bool,
        detach_reset: bool,
        kernels: LIFKernels,
    ) -> tuple[Tensor, Tensor, Tensor]:
        spike_seq, v_seq, v_mean = kernels.forward(x_seq, decay, v_threshold, soft_reset)
        ctx.save_for_backward(v_seq, k)
        ctx.args = (decay, v_threshold, soft_reset, detach_reset, kernels)
        ctx.set_materialize_grads(False)
        return spike_seq, v_seq, v_mean

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad_spike: Tensor | None, grad_v: Tensor | None, grad_v_mean: Tensor | None
    ):
        v_seq, k = ctx.saved_tensors
        decay, v_threshold, soft_reset, detach_reset, kernels = ctx.args
        if grad_spike is None:
            grad_spike = torch.zeros_like(v_seq)
        grad_x = kernels.backward(
            grad_spike,
            grad_v,
            grad_v_mean,
            v_seq,
            k,
            decay,
            v_threshold,
            soft_reset,
            detach_reset,
        )
        return grad_x, None, None, None, None, None, None


class LIF(nn.Module):
    """Multi-step LIF layer: x_seq [T, B, ...] -> spike_seq [T, B, ...].

    Args:
        decay: membrane leak per step.
        v_threshold: firing threshold V_th.
        reset: "hard" or "soft".
        detach_reset: cut the gradient through the reset.
        compiled: use the torch.compile'd time loops.
        block_output: whether this layer counts for IM-Loss when only block outputs are chosen.

    Set ``store_v_seq = True`` to keep, from the last forward pass, ``v_mean`` (the mean membrane
    potential, attached to the autograd graph: IM-Loss differentiates it), ``spike_seq`` (attached)
    and ``v_seq`` (for layer statistics; differentiate ``v_mean`` rather than ``v_seq.mean()``,
    which costs a full-size gradient tensor).
    """

    def __init__(
        self,
        decay: float,
        v_threshold: float,
        reset: str = "hard",
        detach_reset: bool = False,
        compiled: bool = False,
        block_output: bool = True,
    ) -> None:
        super().__init__()
        if reset not in ("hard", "soft"):
            raise ValueError(f"reset must be 'hard' or 'soft', got {reset!r}")
        self.decay = decay
        self.v_threshold = v_threshold
        self.soft_reset = reset == "soft"
        self.detach_reset = detach_reset
        self.compiled = compiled
        self.block_output = block_output
        # K of the surrogate; a buffer so it follows .to(device) and changes without recompiling.
        self.register_buffer("k", torch.tensor(1.0), persistent=False)
        self.store_v_seq = False
        self.v_seq: Tensor | None = None
        self.v_mean: Tensor | None = None
        self.spike_seq: Tensor | None = None

    def forward(self, x_seq: Tensor) -> Tensor:
        kernels = compiled_kernels() if self.compiled else EAGER_KERNELS
        k = self.k.to(x_seq.dtype)
        spike_seq, v_seq, v_mean = MultiStepLIFFunction.apply(
            x_seq, k, self.decay, self.v_threshold, self.soft_reset, self.detach_reset, kernels
        )
        if self.store_v_seq:
            self.v_seq, self.v_mean, self.spike_seq = v_seq, v_mean, spike_seq
        return spike_seq

    def clear(self) -> None:
        """Drop what the last forward pass stored (and the graph it holds on to)."""
        self.v_seq = self.v_mean = self.spike_seq = None

    def extra_repr(self) -> str:
        reset = "soft" if self.soft_reset else "hard"
        return f"decay={self.decay}, v_threshold={self.v_threshold}, reset={reset}, compiled={self.compiled}"


def spiking_layers(model: nn.Module) -> list[tuple[str, LIF]]:
    """The model's LIF layers with their qualified names, in forward order of registration."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LIF)]


def set_surrogate_k(model: nn.Module, k: float) -> None:
    """Set the ESG sharpness K of every LIF layer (once per epoch)."""
    for _, layer in spiking_layers(model):
        layer.k.fill_(k)
