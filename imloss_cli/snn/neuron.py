"""Multi-step leaky integrate-and-fire neuron on time-first tensors [T, B, ...].

    h[t] = decay * r(h[t-1], o[t-1]) + x[t]        (h: membrane potential before the spike)
    o[t] = H(h[t] - V_th)
    r(h, o) = h * (1 - o)        hard reset
    r(h, o) = h - V_th * o       soft reset

The whole time loop is one autograd function: forward saves only the pre-spike potentials h,
backward recomputes the spikes from them and runs BPTT in a second loop, with the ESG surrogate
g'(h) = 1/2 K (1 - tanh(K (h - V_th))^2) for dO/dh. Both loops are plain tensor code that
torch.compile turns into one kernel each, a single pass over the neurons carrying h through time.

The loops see every tensor as [T, N], one row per time step in the order the step lies in memory
(NCHW or channels_last alike): a 2-D elementwise kernel, compiled once for every layer and batch
size (N is a dynamic dimension), instead of one kernel per 5-D shape and stride pattern. The same
loops written as Triton kernels (``triton_lif``, fp32 state for bf16 inputs) are the third kernel
set, the one the trainer picks on CUDA.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from imloss_cli.snn.params import LIFParams
from imloss_cli.snn.surrogate import fires, surrogate_grad
from imloss_cli.snn.triton_lif import lif_backward_triton, lif_forward_triton


def lif_forward_loop(x_seq: Tensor, p: LIFParams) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LIF over T steps (``p.strict``: a spike when h > V_th, else h >= V_th).

    Every step is a tensor of its own, stacked at the end: compiled, that is one pass over N that
    carries h from step to step (writing into slices of one [T, N] buffer instead makes Inductor
    recompute the recurrence for every row, O(T^2) work).

    Returns:
        spike_seq and v_seq, both shaped like x_seq [T, N], and v_sum [N], each neuron's potential
        summed over time in fp32: IM-Loss needs only the mean of v_seq, and a sum kept inside the
        loop leaves the compiled kernel pointwise (a full reduction would add size-dependent
        reduction strategies, each with its own compile guard), so only N values remain to reduce.
    """
    h = x_seq[0]
    o = fires(h, p.v_threshold, p.strict).to(x_seq.dtype)
    v_sum = h.float()
    hs, spikes = [h], [o]
    for t in range(1, x_seq.shape[0]):
        kept = h - p.v_threshold * o if p.soft_reset else h * (1.0 - o)
        h = (p.decay * kept + x_seq[t]).to(x_seq.dtype)
        o = fires(h, p.v_threshold, p.strict).to(x_seq.dtype)
        v_sum = v_sum + h.float()
        hs.append(h)
        spikes.append(o)
    return torch.stack(spikes), torch.stack(hs), v_sum


def lif_backward_loop(
    grad_spike: Tensor,
    grad_v: Tensor | None,
    grad_v_mean: Tensor | None,
    v_seq: Tensor,
    k: Tensor,
    p: LIFParams,
    decay_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """BPTT through the LIF. Returns dL/dx_seq given dL/dspike_seq, dL/dv_seq, dL/dv_mean and h, and
    with ``decay_grad`` dL/d(decay) (0-dim, at least fp32; else None).

    dL/dv_mean reaches every h[t] as the same constant dL/dv_mean / numel, added here instead of
    being expanded into a full tensor by autograd. With g = dL/dh[t+1] flowing back from step t+1
    (none at the last step):
        dL/do[t] = grad_spike[t] + g * dh[t+1]/do[t]      (-decay*h[t] hard, -decay*V_th soft, 0 detached)
        dL/dh[t] = grad_v[t] + dL/do[t] * g'(h[t]) + g * dh[t+1]/dh[t]|o   (decay*(1-o[t]) hard, decay soft)
        dL/dx[t] = dL/dh[t]
        dL/d(decay) = sum over t and neurons of g * r(h[t], o[t])      (dh[t+1]/d(decay) = r)
    Every term is accumulated in fp32 (or the input's wider type) and dL/dx rounded once to v_seq's dtype: in bf16 a per-element
    dL/dv_mean (~1e-9 beside CE terms ~1e-5) would otherwise be rounded away at each step. Steps are
    stacked at the end, as in the forward loop.
    """
    acc = torch.promote_types(v_seq.dtype, torch.float32)  # at least fp32
    from_mean = None if grad_v_mean is None else grad_v_mean.to(acc) / v_seq.numel()
    decay_f = p.decay.to(acc) if isinstance(p.decay, Tensor) else p.decay
    v_threshold, soft_reset = p.v_threshold, p.soft_reset
    grad_decay = v_seq.new_zeros((), dtype=acc) if decay_grad else None
    grads: list[Tensor] = []
    g: Tensor | None = None
    for t in range(v_seq.shape[0] - 1, -1, -1):
        h = v_seq[t].to(acc)
        o = fires(h, v_threshold, p.strict).to(acc)
        grad_o = grad_spike[t].to(acc)
        if g is not None and not p.detach_reset:
            grad_o = grad_o - g * (decay_f * v_threshold if soft_reset else decay_f * h)
        grad_h = grad_o * surrogate_grad(h, k.to(acc), v_threshold, p.surrogate)
        if g is not None:  # through h[t+1] = decay * r(h[t], o[t]) + x[t+1], the spike o[t] held fixed
            grad_h = grad_h + g * (decay_f * (1.0 if soft_reset else 1.0 - o))
            if grad_decay is not None:
                grad_decay = grad_decay + (g * (h - v_threshold * o if soft_reset else h * (1.0 - o))).sum()
        if grad_v is not None:
            grad_h = grad_h + grad_v[t].to(acc)
        if from_mean is not None:
            grad_h = grad_h + from_mean
        grads.append(grad_h)
        g = grad_h
    return torch.stack(grads[::-1]).to(v_seq.dtype), grad_decay


class LIFKernels(NamedTuple):
    forward: Callable[..., tuple[Tensor, Tensor, Tensor]]
    backward: Callable[..., Tensor]


EAGER_KERNELS = LIFKernels(lif_forward_loop, lif_backward_loop)
TRITON_KERNELS = LIFKernels(lif_forward_triton, lif_backward_triton)
KERNEL_SETS = ("eager", "compiled", "triton")


@functools.cache
def compiled_kernels() -> LIFKernels:
    """The two loops compiled once per process (each becomes a single fused kernel)."""
    options = {
        # stack the steps as separate buffers written in one pass, never as a masked [T, N] kernel
        # that recomputes every step's recurrence
        "max_pointwise_cat_inputs": 0,
        "max_complex_pointwise_cat_inputs": 0,
        # N is dynamic, so Inductor cannot size the work at compile time; let OpenMP split the loop
        # over N at run time (otherwise a dynamic CPU kernel runs on one thread)
        "cpp.dynamic_threads": True,
    }
    return LIFKernels(*(torch.compile(loop, options=options) for loop in (lif_forward_loop, lif_backward_loop)))


def kernel_set(name: str) -> LIFKernels:
    """The kernels by name: "eager" (the loops as written), "compiled" (torch.compile'd), "triton"."""
    if name == "eager":
        return EAGER_KERNELS
    if name == "compiled":
        return compiled_kernels()
    if name == "triton":
        return TRITON_KERNELS
    raise ValueError(f"LIF kernels must be one of {', '.join(KERNEL_SETS)}, got {name!r}")


def _traced(kernels: LIFKernels) -> bool:
    """Whether the kernels go through torch.compile (whose guards want N marked dynamic)."""
    return kernels is not EAGER_KERNELS and kernels is not TRITON_KERNELS


class StepLayout(NamedTuple):
    """How to see a [T, ...] tensor as [T, N] rows and back: ``order`` lists the dims, time first,
    in the order one time step lies in memory (outermost first)."""

    order: tuple[int, ...]
    shape: tuple[int, ...]

    @staticmethod
    def of(x_seq: Tensor) -> StepLayout:
        # Sorting by stride (stable, so ties keep their order) recovers NCHW, channels_last, or
        # whatever layout a step is dense in; size-1 dims may land anywhere without harm.
        inner = sorted(range(1, x_seq.ndim), key=lambda d: x_seq.stride(d), reverse=True)
        return StepLayout((0, *inner), tuple(x_seq.shape))

    def flat(self, x_seq: Tensor) -> Tensor:
        """[T, N] rows of ``x_seq``, sharing its memory when each step is dense in this layout (a
        time stride of 0, as for a broadcast input, stays 0); a copy otherwise.

        The shared rows are a fresh tensor on x_seq's storage rather than a view: torch.compile
        guards on a view's base, whose shape differs from layer to layer (a recompile each).
        """
        T = self.shape[0]
        step = x_seq[0].permute([d - 1 for d in self.order[1:]])
        if not step.is_contiguous():
            return x_seq.permute(self.order).reshape(T, -1)
        rows = torch.empty(0, dtype=x_seq.dtype, device=x_seq.device)
        return rows.set_(x_seq.untyped_storage(), x_seq.storage_offset(), (T, step.numel()), (x_seq.stride(0), 1))

    def unflat(self, rows: Tensor) -> Tensor:
        """The [T, ...] tensor whose ``flat`` view is ``rows`` (contiguous [T, N])."""
        permuted = rows.view([self.shape[d] for d in self.order])
        return permuted.permute([self.order.index(d) for d in range(len(self.order))])


def _mark_rows_dynamic(*rows: Tensor | None) -> None:
    """One compiled kernel serves every N: mark it dynamic up front rather than after a recompile."""
    for r in rows:
        if r is not None and r.ndim == 2:
            torch._dynamo.maybe_mark_dynamic(r, 1)


class MultiStepLIFFunction(torch.autograd.Function):
    """Fused multi-step LIF: no per-time-step autograd graph, only h is saved for backward.

    Outputs (spike_seq, v_seq, v_mean) in x_seq's memory layout; any of them may carry a gradient.
    ``decay`` is ``params.decay``, given apart so that autograd sees it: a float, or a 0-dim tensor
    that may require a gradient (PLIF); the kernels get it detached, inside ``params``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x_seq: Tensor, k: Tensor, decay: float | Tensor, params: LIFParams, kernels: LIFKernels
    ) -> tuple[Tensor, Tensor, Tensor]:
        layout = StepLayout.of(x_seq)
        x_rows = layout.flat(x_seq.detach())  # detached: requires_grad would be one more compile guard
        if _traced(kernels):
            _mark_rows_dynamic(x_rows)
        params = dataclasses.replace(params, decay=decay.detach() if isinstance(decay, Tensor) else decay)
        spike_rows, v_rows, v_sum = kernels.forward(x_rows, params)
        v_mean = v_sum.sum() / v_rows.numel()
        ctx.save_for_backward(v_rows, k)
        ctx.args = (layout, params, kernels)
        ctx.set_materialize_grads(False)
        return layout.unflat(spike_rows), layout.unflat(v_rows), v_mean

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad_spike: Tensor | None, grad_v: Tensor | None, grad_v_mean: Tensor | None
    ):
        v_rows, k = ctx.saved_tensors
        layout, params, kernels = ctx.args
        # Autograd may hand the gradients in any layout: bring each to v_rows' (a view when it matches).
        grad_spike_rows = torch.zeros_like(v_rows) if grad_spike is None else layout.flat(grad_spike)
        grad_v_rows = None if grad_v is None else layout.flat(grad_v)
        if _traced(kernels):
            _mark_rows_dynamic(grad_spike_rows, grad_v_rows, v_rows)
        decay_grad = ctx.needs_input_grad[2]
        grad_x_rows, grad_decay = kernels.backward(
            grad_spike_rows, grad_v_rows, grad_v_mean, v_rows, k, params, decay_grad
        )
        if grad_decay is not None:
            grad_decay = grad_decay.to(params.decay.dtype).reshape(params.decay.shape)
        return layout.unflat(grad_x_rows), None, grad_decay, None, None


class LIF(nn.Module):
    """Multi-step LIF layer: x_seq [T, B, ...] -> spike_seq [T, B, ...].

    Args:
        params: the dynamics (decay, with ``learn_decay`` its initial value; V_th; reset; spike
            test; surrogate shape).
        kernels: which time loops run it: "eager", "compiled" (torch.compile'd) or "triton" (CUDA
            tensors, or CPU ones under TRITON_INTERPRET=1); see ``kernel_set``.
        block_output: whether this layer counts for IM-Loss when only block outputs are chosen.
        learn_decay: PLIF (Fang et al., ICCV 2021): the decay is sigmoid(w) of one learnable w per
            layer, w starting at logit(decay); trained with the network, in the same fused kernels.

    Set ``store_v_seq = True`` to keep, from the last forward pass, ``v_mean`` (the mean membrane
    potential, attached to the autograd graph: IM-Loss differentiates it), ``spike_seq`` (attached)
    and ``v_seq`` (for layer statistics; differentiate ``v_mean`` rather than ``v_seq.mean()``,
    which costs a full-size gradient tensor). Set ``store_x_mean = True`` to keep ``x_mean``, the
    mean of the input current over [T, B, ...] (attached): the authors'-code IM-Loss penalises it.
    """

    def __init__(
        self, params: LIFParams, kernels: str = "eager", block_output: bool = True, learn_decay: bool = False
    ) -> None:
        super().__init__()
        decay = float(params.decay)
        if learn_decay and not 0.0 < decay < 1.0:
            raise ValueError(f"a learnable decay starts strictly between 0 and 1, got {decay}")
        if kernels not in KERNEL_SETS:
            raise ValueError(f"kernels must be one of {', '.join(KERNEL_SETS)}, got {kernels!r}")
        self.params = params
        self.kernels = kernels
        self.block_output = block_output
        # PLIF: decay = sigmoid(w), w = logit(decay) at the start (SpikingJelly's ParametricLIFNode
        # parametrises 1/tau the same way).
        self.w = nn.Parameter(torch.tensor(math.log(decay / (1.0 - decay)))) if learn_decay else None
        # K of the surrogate; a buffer so it follows .to(device) and changes without recompiling.
        self.register_buffer("k", torch.tensor(1.0), persistent=False)
        self.store_v_seq = False
        self.v_seq: Tensor | None = None
        self.v_mean: Tensor | None = None
        self.spike_seq: Tensor | None = None
        self.store_x_mean = False
        self.x_mean: Tensor | None = None

    def leak(self) -> float | Tensor:
        """The decay the next forward pass uses: the constant, or sigmoid(w) (a tensor with a gradient)."""
        return self.params.decay if self.w is None else torch.sigmoid(self.w)

    def forward(self, x_seq: Tensor) -> Tensor:
        kernels = kernel_set(self.kernels)
        k = self.k.to(x_seq.dtype)
        spike_seq, v_seq, v_mean = MultiStepLIFFunction.apply(x_seq, k, self.leak(), self.params, kernels)
        if self.store_v_seq:
            self.v_seq, self.v_mean, self.spike_seq = v_seq, v_mean, spike_seq
        if self.store_x_mean:
            self.x_mean = x_seq.mean(dtype=torch.float32)
        return spike_seq

    def clear(self) -> None:
        """Drop what the last forward pass stored (and the graph it holds on to)."""
        self.v_seq = self.v_mean = self.spike_seq = self.x_mean = None

    def extra_repr(self) -> str:
        p = self.params
        decay = f"learnable, from {p.decay}" if self.w is not None else p.decay
        extra = (", strict" if p.strict else "") + (f", surrogate={p.surrogate}" if p.surrogate != "tanh" else "")
        return f"decay={decay}, v_threshold={p.v_threshold}, reset={p.reset}, kernels={self.kernels}{extra}"


def spiking_layers(model: nn.Module) -> list[tuple[str, LIF]]:
    """The model's LIF layers with their qualified names, in forward order of registration."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LIF)]


def set_surrogate_k(model: nn.Module, k: float) -> None:
    """Set the ESG sharpness K of every LIF layer (once per epoch)."""
    for _, layer in spiking_layers(model):
        layer.k.fill_(k)
