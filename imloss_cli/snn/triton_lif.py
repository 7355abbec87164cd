"""The LIF time loops as Triton kernels: one program per block of neurons carries h through time.

Same interface as ``neuron.lif_forward_loop`` / ``lif_backward_loop`` (so ``MultiStepLIFFunction``
takes them as a third kernel set, ``TRITON_KERNELS``) and the same equations, with two differences
that only matter in low precision:

- the membrane state is carried in fp32 whatever the input dtype (bf16 or fp32); v_seq is stored in
  the input's dtype, and each spike is read off the stored potential (``o[t] = H(v_seq[t] - V_th)``),
  so backward, which recomputes the spikes from v_seq, sees exactly the forward's spikes;
- BPTT accumulates in fp32 and writes dL/dx in the input's dtype.

The forward kernel also sums each neuron's potential over time (v_sum [N], fp32), what IM-Loss needs
of v_seq; the backward kernel adds dL/dv_mean / (T*N) to every step inside the loop. Rows are read
with their strides (a time stride of 0 for a broadcast input, 0 throughout for an expanded gradient), so any layer in any layout that ``StepLayout``
flattens runs through one compiled kernel per direction. Floating-point contraction into FMAs is
off, so on a GPU the kernels perform the reference loop's roundings: spikes equal the naive loop's.

Triton runs only on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (the tests); the
kernels are defined on first use, so that setting is read then, not at import.
"""

from __future__ import annotations

import functools
import importlib.util
from types import SimpleNamespace

import torch
from torch import Tensor

BLOCK = 1024  # neurons per program; the loops are memory-bound, one fp32 state per neuron
NUM_WARPS = 4


def triton_available() -> bool:
    """Whether triton can be imported here (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _jit() -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit
    def lif_fwd(
        x_ptr, s_ptr, v_ptr, vsum_ptr, T, N, stride_xt, stride_xn, decay, v_th,
        SOFT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        h = tl.full(
            [BLOCK], 0.0, tl.float32
        )  # tl.full, not tl.zeros: a @jit helper the interpreter rejects once triton was imported uninterpreted
        o = tl.full([BLOCK], 0.0, tl.float32)
        v_sum = tl.full([BLOCK], 0.0, tl.float32)
        for t in range(T):
            x = tl.load(x_ptr + t * stride_xt + offs * stride_xn, mask=mask, other=0.0).to(tl.float32)
            kept = h - v_th * o if SOFT else h * (1.0 - o)
            h = decay * kept + x  # at t = 0, h = o = 0: h = x exactly
            v = h.to(v_ptr.dtype.element_ty)
            o = (v >= v_th).to(tl.float32)
            v_sum += h
            tl.store(v_ptr + t * N + offs, v, mask=mask)
            tl.store(s_ptr + t * N + offs, o.to(s_ptr.dtype.element_ty), mask=mask)
        tl.store(vsum_ptr + offs, v_sum, mask=mask)

    @triton.jit
    def lif_bwd(
        gs_ptr, gv_ptr, gm_ptr, v_ptr, k_ptr, gx_ptr, T, N, stride_gst, stride_gsn, stride_gvt, stride_gvn,
        decay, v_th, decay_v_th,
        SOFT: tl.constexpr, DETACH: tl.constexpr, HAS_GV: tl.constexpr, HAS_GM: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        k = tl.load(k_ptr).to(tl.float32)
        if HAS_GM:
            from_mean = tl.load(gm_ptr).to(tl.float32)  # dL/dv_mean / (T*N), divided on the device
        g = tl.full([BLOCK], 0.0, tl.float32)  # dL/dh[t+1]; zero past the last step
        for i in range(T):
            t = T - 1 - i
            h = tl.load(v_ptr + t * N + offs, mask=mask, other=0.0).to(tl.float32)
            grad_o = tl.load(gs_ptr + t * stride_gst + offs * stride_gsn, mask=mask, other=0.0).to(tl.float32)
            if not DETACH:
                grad_o = grad_o - g * (decay_v_th if SOFT else decay * h)
            # g'(h) = 1/2 K (1 - tanh(z)^2), z = K (h - V_th); 1 - tanh(z)^2 = 4a / (1 + a)^2, a = exp(-2|z|)
            a = tl.exp(-2.0 * tl.abs(k * (h - v_th)))
            grad_h = grad_o * (0.5 * k * (4.0 * a / ((1.0 + a) * (1.0 + a))))
            # through h[t+1] = decay * r(h[t], o[t]) + x[t+1], the spike held fixed
            grad_h = grad_h + g * (decay if SOFT else decay * (1.0 - (h >= v_th).to(tl.float32)))
            if HAS_GV:
                grad_h = grad_h + tl.load(gv_ptr + t * stride_gvt + offs * stride_gvn, mask=mask, other=0.0).to(
                    tl.float32
                )
            if HAS_GM:
                grad_h = grad_h + from_mean
            tl.store(gx_ptr + t * N + offs, grad_h.to(gx_ptr.dtype.element_ty), mask=mask)
            g = grad_h

    return SimpleNamespace(forward=lif_fwd, backward=lif_bwd)


def _strides(rows: Tensor, name: str) -> tuple[int, int]:
    """(time, neuron) strides of ``rows`` [T, N]: 1 over N for flat rows, 0 for broadcast ones."""
    if rows.ndim != 2:
        raise ValueError(f"{name} must be [T, N] rows, got shape {tuple(rows.shape)}")
    return rows.stride(0), rows.stride(1)


def _grid(n: int) -> tuple[int]:
    return ((n + BLOCK - 1) // BLOCK,)


def lif_forward_triton(
    x_seq: Tensor, decay: float, v_threshold: float, soft_reset: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``lif_forward_loop`` as one Triton kernel. Returns spike_seq, v_seq [T, N] (x's dtype), v_sum [N] fp32."""
    T, N = x_seq.shape
    stride_t, stride_n = _strides(x_seq, "x_seq")
    spike_seq = torch.empty((T, N), dtype=x_seq.dtype, device=x_seq.device)
    v_seq = torch.empty_like(spike_seq)
    v_sum = torch.empty(N, dtype=torch.float32, device=x_seq.device)
    if N and T:
        _jit().forward[_grid(N)](
            x_seq, spike_seq, v_seq, v_sum, T, N, stride_t, stride_n, decay, v_threshold,
            SOFT=soft_reset, BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False,
        )  # fmt: skip
    return spike_seq, v_seq, v_sum


def lif_backward_triton(
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
    """``lif_backward_loop`` as one Triton kernel: dL/dx_seq [T, N] in v_seq's dtype."""
    T, N = v_seq.shape
    if not v_seq.is_contiguous():
        raise ValueError("v_seq must be the contiguous rows the forward kernel wrote")
    grad_x = torch.empty_like(v_seq)
    if not (N and T):
        return grad_x
    stride_gs = _strides(grad_spike, "grad_spike")
    stride_gv = (0, 0) if grad_v is None else _strides(grad_v, "grad_v")
    k_t = k.reshape(1).to(device=v_seq.device)
    # divided here, not in the kernel: Triton may make T or N a compile-time 1, and T*N a Python int
    mean_t = k_t if grad_v_mean is None else (grad_v_mean.float() / v_seq.numel()).reshape(1).to(v_seq.device)
    _jit().backward[_grid(N)](
        grad_spike, v_seq if grad_v is None else grad_v, mean_t, v_seq, k_t, grad_x, T, N, *stride_gs, *stride_gv,
        decay, v_threshold, decay * v_threshold,
        SOFT=soft_reset, DETACH=detach_reset, HAS_GV=grad_v is not None, HAS_GM=grad_v_mean is not None,
        BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False,
    )  # fmt: skip
    return grad_x
