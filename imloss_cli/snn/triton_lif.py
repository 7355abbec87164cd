"""The LIF time loops as Triton kernels: one program per block of neurons carries h through time.

Same interface as ``neuron.lif_forward_loop`` / ``lif_backward_loop`` (so ``MultiStepLIFFunction``
takes them as a third kernel set, ``TRITON_KERNELS``), the same equations and the same precision rule
(``snn.neuron``'s module docstring):

- the membrane state is carried in fp32 whatever the input dtype (bf16 or fp32); v_seq is stored in
  the input's dtype, and each spike is read off the stored potential (``o[t] = H(v_seq[t] - V_th)``),
  so backward, which recomputes the spikes from v_seq, sees exactly the forward's spikes;
- BPTT accumulates in fp32 and writes dL/dx in the input's dtype.

Offsets are int64 (a layer's T*N passes 2^31 elements at ImageNet sizes). The spike test (``>=`` or
strict ``>``), the surrogate's shape ("tanh" or "guo"), the charge (``decay_input``: the input scaled
by 1 - decay, Fang et al.'s PLIF) and a learnable decay (read from the device, its gradient summed per
neuron) are compile-time choices of the same two kernels.

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
import importlib
import importlib.util
import sys
from types import ModuleType

import torch
from torch import Tensor

from imloss_cli.snn.params import LIFParams

BLOCK = 1024  # neurons per program; the loops are memory-bound, one fp32 state per neuron
NUM_WARPS = 4


def triton_available() -> bool:
    """Whether triton can be imported here (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _jit() -> ModuleType:
    """The kernels, defined now: imported (or reloaded) at first use, so TRITON_INTERPRET is read then."""
    name = "imloss_cli.snn.triton_kernels"
    return importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)


def _strides(rows: Tensor, name: str) -> tuple[int, int]:
    """(time, neuron) strides of ``rows`` [T, N]: 1 over N for flat rows, 0 for broadcast ones."""
    if rows.ndim != 2:
        raise ValueError(f"{name} must be [T, N] rows, got shape {tuple(rows.shape)}")
    return rows.stride(0), rows.stride(1)


def _grid(n: int) -> tuple[int]:
    return ((n + BLOCK - 1) // BLOCK,)


def _decay_args(decay: float | Tensor, device: torch.device) -> tuple[Tensor | None, float, float, bool]:
    """(pointer tensor, decay, input gain 1 - decay, whether the kernel reads the pointer): a float rides
    as a kernel argument; a tensor (a learned decay) stays on the device, read there without a host sync
    (the kernel then computes the gain itself)."""
    if isinstance(decay, Tensor):
        return decay.detach().reshape(1).to(device=device, dtype=torch.float32), 0.0, 0.0, True
    return None, float(decay), 1.0 - float(decay), False


def lif_forward_triton(x_seq: Tensor, p: LIFParams) -> tuple[Tensor, Tensor, Tensor]:
    """``lif_forward_loop`` as one Triton kernel. Returns spike_seq, v_seq [T, N] (x's dtype), v_sum [N] fp32."""
    T, N = x_seq.shape
    stride_t, stride_n = _strides(x_seq, "x_seq")
    spike_seq = torch.empty((T, N), dtype=x_seq.dtype, device=x_seq.device)
    v_seq = torch.empty_like(spike_seq)
    v_sum = torch.empty(N, dtype=torch.float32, device=x_seq.device)
    decay_t, decay_f, gain_f, decay_ptr = _decay_args(p.decay, x_seq.device)
    if N and T:
        _jit().lif_fwd[_grid(N)](
            x_seq, spike_seq, v_seq, v_sum, v_sum if decay_t is None else decay_t, T, N, stride_t, stride_n,
            decay_f, gain_f, p.v_threshold,
            SOFT=p.soft_reset, STRICT=p.strict, DECAY_PTR=decay_ptr, DECAY_INPUT=p.decay_input, BLOCK=BLOCK,
            num_warps=NUM_WARPS, enable_fp_fusion=False,
        )  # fmt: skip
    return spike_seq, v_seq, v_sum


def lif_backward_triton(
    grad_spike: Tensor,
    grad_v: Tensor | None,
    grad_v_mean: Tensor | None,
    v_seq: Tensor,
    k: Tensor,
    p: LIFParams,
    decay_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``lif_backward_loop`` as one Triton kernel: dL/dx_seq [T, N] in v_seq's dtype, and with
    ``decay_grad`` dL/d(decay) (fp32, 0-dim: the neurons' shares added on the device)."""
    T, N = v_seq.shape
    if not v_seq.is_contiguous():
        raise ValueError("v_seq must be the contiguous rows the forward kernel wrote")
    grad_x = torch.empty_like(v_seq)
    partial = torch.zeros(N if decay_grad else 1, dtype=torch.float32, device=v_seq.device)  # per neuron
    if not (N and T):
        return grad_x, partial.sum() if decay_grad else None
    stride_gs = _strides(grad_spike, "grad_spike")
    stride_gv = (0, 0) if grad_v is None else _strides(grad_v, "grad_v")
    k_t = k.reshape(1).to(device=v_seq.device)
    # divided here, not in the kernel: Triton may make T or N a compile-time 1, and T*N a Python int
    mean_t = k_t if grad_v_mean is None else (grad_v_mean.float() / v_seq.numel()).reshape(1).to(v_seq.device)
    decay_t, decay_f, gain_f, decay_ptr = _decay_args(p.decay, v_seq.device)
    _jit().lif_bwd[_grid(N)](
        grad_spike, v_seq if grad_v is None else grad_v, mean_t, v_seq, k_t, grad_x, k_t if decay_t is None else decay_t,
        partial, T, N, *stride_gs, *stride_gv, decay_f, gain_f, p.v_threshold,
        SOFT=p.soft_reset, DETACH=p.detach_reset, HAS_GV=grad_v is not None, HAS_GM=grad_v_mean is not None,
        STRICT=p.strict, GUO=p.surrogate == "guo", DECAY_PTR=decay_ptr, DECAY_GRAD=decay_grad,
        DECAY_INPUT=p.decay_input, BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False,
    )  # fmt: skip
    return grad_x, partial.sum() if decay_grad else None


def row_offsets(t: int, stride_t: int, stride_n: int, n: int) -> Tensor:
    """What the kernels compute as the element offsets of neurons 0..n-1 of row t (int64; the probe
    of their offset arithmetic). CUDA, or CPU under ``TRITON_INTERPRET=1``."""
    out = torch.empty(n, dtype=torch.int64, device="cuda" if torch.cuda.is_available() else "cpu")
    _jit().offset_probe[(1,)](out, t, stride_t, stride_n, BLOCK=n)
    return out
