"""Multi-step leaky integrate-and-fire neuron on time-first tensors [T, B, ...].

    h[t] = decay * r(h[t-1], o[t-1]) + x[t]                  (h: membrane potential before the spike)
    h[t] = decay * r(h[t-1], o[t-1]) + (1 - decay) * x[t]    with ``decay_input`` (Fang et al.'s PLIF)
    o[t] = H(h[t] - V_th)
    r(h, o) = h * (1 - o)        hard reset
    r(h, o) = h - V_th * o       soft reset
    (at t = 0 the state is 0: h[0] = x[0], or (1 - decay) * x[0])

The whole time loop is one autograd function: forward saves only the pre-spike potentials h,
backward recomputes the spikes from them and runs BPTT in a second loop, with the ESG surrogate
g'(h) = 1/2 K (1 - tanh(K (h - V_th))^2) for dO/dh. Both loops are plain tensor code that
torch.compile turns into one kernel each, a single pass over the neurons carrying h through time.

One precision rule for every kernel set (these loops, their compiled form, the Triton kernels, and
MPBN's loop): the membrane state and every sum over it are carried in fp32 (or the input's wider
type) whatever the compute dtype; v_seq is stored in the input's dtype and each spike is read off
the stored value, o[t] = H(v_seq[t] - V_th), so the backward, which recomputes the spikes from
v_seq, sees the forward's spikes, and the kernel sets agree spike for spike in bf16 as in fp32.

The loops see every tensor as [T, N], one row per time step in the order the step lies in memory
(NCHW or channels_last alike): a 2-D elementwise kernel, compiled once for every layer and batch
size (N is a dynamic dimension), instead of one kernel per 5-D shape and stride pattern. The same
loops written as Triton kernels (``triton_lif``) are the third kernel set, the one the trainer
picks on CUDA.
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

    The state h is carried in fp32 (``acc``); each step's potential is stored in x's dtype and its
    spike read off that stored value (the module docstring's precision rule; for fp32 inputs the
    rounding is a no-op). Every step is a tensor of its own, stacked at the end: compiled, that is one
    pass over N that carries h from step to step (writing into slices of one [T, N] buffer instead
    makes Inductor recompute the recurrence for every row, O(T^2) work).

    Returns:
        spike_seq and v_seq, both shaped like x_seq [T, N] in its dtype, and v_sum [N], each neuron's
        fp32 potential summed over time: IM-Loss needs only the mean of v_seq, and a sum kept inside
        the loop leaves the compiled kernel pointwise (a full reduction would add size-dependent
        reduction strategies, each with its own compile guard), so only N values remain to reduce.
    """
    dtype, acc = x_seq.dtype, torch.promote_types(x_seq.dtype, torch.float32)
    decay = p.decay.to(acc) if isinstance(p.decay, Tensor) else p.decay
    h = _charge(x_seq[0].to(acc), decay, p.decay_input)
    v = h.to(dtype)
    o = fires(v, p.v_threshold, p.strict).to(acc)
    v_sum = h
    vs, spikes = [v], [o.to(dtype)]
    for t in range(1, x_seq.shape[0]):
        kept = h - p.v_threshold * o if p.soft_reset else h * (1.0 - o)
        h = decay * kept + _charge(x_seq[t].to(acc), decay, p.decay_input)
        v = h.to(dtype)
        o = fires(v, p.v_threshold, p.strict).to(acc)
        v_sum = v_sum + h
        vs.append(v)
        spikes.append(o.to(dtype))
    return torch.stack(spikes), torch.stack(vs), v_sum


def _charge(x: Tensor, decay: float | Tensor, decay_input: bool) -> Tensor:
    """What the input adds to the potential in one step: x, or (1 - decay) x with ``decay_input``."""
    return (1.0 - decay) * x if decay_input else x


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
        dL/dx[t] = dL/dh[t]                      ((1 - decay) * dL/dh[t] with ``decay_input``)
        dL/d(decay) = sum over t and neurons of g * dh[t+1]/d(decay):
            r(h[t], o[t])                        imloss's charge
            r(h[t], o[t]) - x[t+1]               ``decay_input``, and -x[0] for h[0] = (1 - decay) x[0]
    With ``decay_input`` x is not saved: h[t+1] = decay * r + (1 - decay) * x[t+1] gives
    r - x[t+1] = (r - h[t+1]) / (1 - decay), from the potentials the loop reads anyway (r = 0 before t = 0).
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
    h_next: Tensor | None = None  # h[t+1], read one step earlier
    for t in range(v_seq.shape[0] - 1, -1, -1):
        h = v_seq[t].to(acc)
        o = fires(h, v_threshold, p.strict).to(acc)
        grad_o = grad_spike[t].to(acc)
        if g is not None and not p.detach_reset:
            grad_o = grad_o - g * (decay_f * v_threshold if soft_reset else decay_f * h)
        grad_h = grad_o * surrogate_grad(h, k.to(acc), v_threshold, p.surrogate)
        if g is not None:  # through h[t+1] = decay * r(h[t], o[t]) + x[t+1], the spike o[t] held fixed
            grad_h = grad_h + g * (decay_f * (1.0 if soft_reset else 1.0 - o))
            if grad_decay is not None and h_next is not None:
                kept = h - v_threshold * o if soft_reset else h * (1.0 - o)
                if p.decay_input:
                    kept = (kept - h_next) / (1.0 - decay_f)
                grad_decay = grad_decay + (g * kept).sum()
        if grad_v is not None:
            grad_h = grad_h + grad_v[t].to(acc)
        if from_mean is not None:
            grad_h = grad_h + from_mean
        grads.append(_charge(grad_h, decay_f, p.decay_input))  # dL/dx[t] = dh[t]/dx[t] * dL/dh[t]
        g, h_next = grad_h, h
    if grad_decay is not None and p.decay_input and g is not None and h_next is not None:
        grad_decay = grad_decay - (g * h_next).sum() / (1.0 - decay_f)  # h[0] = (1 - decay) x[0]: -x[0]
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
        # round where the loop rounds: without it Inductor skips the bf16 store-and-reload inside
        # the fused kernel and fires on the fp32 potential, so spikes differ from the stored v_seq
        # (which backward reads) and from the eager and Triton kernels
        "emulate_precision_casts": True,
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
            test; surrogate shape; the charge, ``decay_input``).
        kernels: which time loops run it: "eager", "compiled" (torch.compile'd) or "triton" (CUDA
            tensors, or CPU ones under TRITON_INTERPRET=1); see ``kernel_set``.
        block_output: whether this layer counts for IM-Loss when only block outputs are chosen.
        learn_decay: one learnable w per layer sets the decay, trained with the network in the same
            fused kernels. With ``params.decay_input`` it is PLIF as Fang et al. (ICCV 2021) and
            SpikingJelly's ``ParametricLIFNode`` define it: sigmoid(w) = 1/tau = 1 - decay, so w
            starts at -log(tau0 - 1). Without, it is a learnable leak on imloss's charge:
            decay = sigmoid(w), w starting at logit(decay).

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
        # w is the logit of what sigmoid(w) stands for: 1/tau = 1 - decay (Fang et al.), or the decay.
        share = 1.0 - decay if params.decay_input else decay
        self.w = nn.Parameter(torch.tensor(math.log(share / (1.0 - share)))) if learn_decay else None
        # K of the surrogate; a buffer so it follows .to(device) and changes without recompiling.
        self.register_buffer("k", torch.tensor(1.0), persistent=False)
        self.store_v_seq = False
        self.v_seq: Tensor | None = None
        self.v_mean: Tensor | None = None
        self.spike_seq: Tensor | None = None
        self.store_x_mean = False
        self.x_mean: Tensor | None = None

    def leak(self) -> float | Tensor:
        """The decay the next forward pass uses: the constant, or from w (a tensor with a gradient):
        sigmoid(-w) = 1 - 1/tau with ``decay_input`` (Fang et al.), else sigmoid(w)."""
        if self.w is None:
            return self.params.decay
        return torch.sigmoid(-self.w) if self.params.decay_input else torch.sigmoid(self.w)

    def decay_value(self) -> float:
        """The decay as a number (a learned one computed from w in float64): what an export writes."""
        if self.w is None:
            return float(self.params.decay)
        w = self.w.detach().double()
        return float(torch.sigmoid(-w) if self.params.decay_input else torch.sigmoid(w))

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
        if self.w is None:
            decay = f"decay={p.decay}"
        elif p.decay_input:
            decay = f"tau=learnable from {1.0 / (1.0 - float(p.decay)):g}"
        else:
            decay = f"decay=learnable from {p.decay}"
        extra = (", decay_input" if p.decay_input else "") + (", strict" if p.strict else "")
        extra += f", surrogate={p.surrogate}" if p.surrogate != "tanh" else ""
        return f"{decay}, v_threshold={p.v_threshold}, reset={p.reset}, kernels={self.kernels}{extra}"


def spiking_layers(model: nn.Module) -> list[tuple[str, LIF]]:
    """The model's LIF layers with their qualified names, in forward order of registration."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LIF)]


def set_surrogate_k(model: nn.Module, k: float) -> None:
    """Set the ESG sharpness K of every LIF layer (once per epoch)."""
    for _, layer in spiking_layers(model):
        layer.k.fill_(k)
