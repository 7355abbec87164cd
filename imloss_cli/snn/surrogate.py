"""ESG: the evolutionary surrogate gradient, and the IM-Loss authors' fixed surrogate.

Forward the spike is the Heaviside step O = H(u - V_th) (``u >= V_th``; ``strict``: ``u > V_th``, as
the authors' code tests it). Backward it is replaced by the derivative of a smooth step:

- ``"tanh"`` (the paper's ESG, and its fixed-K baseline): g(u) = 1/2 tanh(K (u - V_th)) + 1/2, whose
  sharpness K grows with the epoch: wide gradients early (many neurons learn), close to the true
  step late.
- ``"guo"`` (the authors' public code, ``spike_activation`` with temperature K = 3): with
  s = u / (2 V_th), the potential on the scale where their threshold test reads ``s > 0.5``,
      g(s) = (tanh(K (clamp(s, 0, 1) - 1/2)) + tanh(K/2)) / (2 tanh(K/2)),
  so dg/du = K (1 - tanh(K (s - 1/2))^2) / (2 tanh(K/2)) / (2 V_th) for 0 <= s <= 1 and 0 outside
  (clamp passes the gradient at both ends). At V_th = 0.5 the peak is 3 / (2 tanh 1.5) = 1.657 at
  u = V_th and 0.299 at u = 0 and u = 2 V_th.
"""

from __future__ import annotations

import torch
from torch import Tensor


def esg_k(epoch: int, epochs: int, k_min: float, k_max: float) -> float:
    """K(i) of the evolutionary surrogate gradient at epoch ``i`` of ``I``.

        K(i) = K_min + (K_max - K_min) * (10^(i/I) - 1) / 9

    an exponential ramp from K(0) = K_min to K(I) = K_max. Training numbers its epochs as
    Algorithm 1 does, i = 1..I, so the first epoch trains with K(1) and the last with K_max.

    Args:
        epoch: i, the epoch being trained (1-based; 0 gives K_min).
        epochs: I, the total number of epochs (>= 1).
        k_min: K at the start.
        k_max: K at the end.

    Returns:
        K(i) as a float.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return k_min + (k_max - k_min) * (10.0 ** (epoch / epochs) - 1.0) / 9.0


SURROGATES = ("tanh", "guo")
"""The surrogate shapes: "tanh" (ESG and fixed K), "guo" (the authors' code)."""


def surrogate_grad(u: Tensor, k: Tensor | float, v_threshold: float, shape: str = "tanh") -> Tensor:
    """dO/du of the spike's surrogate (module docstring).

    "tanh": g'(u) = 1/2 * K * (1 - tanh(K (u - V_th))^2), the ESG backward (Algorithm 1, line 12).
    "guo": K (1 - tanh(K (s - 1/2))^2) / (2 tanh(K/2)) / (2 V_th) for s = u / (2 V_th) in [0, 1], else 0.
    """
    if shape == "tanh":
        return 0.5 * k * (1.0 - torch.tanh(k * (u - v_threshold)).square())
    if shape != "guo":
        raise ValueError(f"surrogate shape must be one of {', '.join(SURROGATES)}, got {shape!r}")
    s = u / (2.0 * v_threshold)
    k_t = torch.as_tensor(k, dtype=u.dtype, device=u.device)
    inside = ((s >= 0.0) & (s <= 1.0)).to(u.dtype)
    return (
        k_t
        * (1.0 - torch.tanh(k_t * (s - 0.5)).square())
        / (2.0 * torch.tanh(k_t / 2.0))
        / (2.0 * v_threshold)
        * inside
    )


def fires(u: Tensor, v_threshold: float | Tensor, strict: bool = False) -> Tensor:
    """The spike test: u >= V_th, or u > V_th when ``strict`` (bool tensor; V_th may be per channel)."""
    return u > v_threshold if strict else u >= v_threshold


class SpikeFunction(torch.autograd.Function):
    """Heaviside forward, surrogate backward, for a single tensor (the reference the fused LIF is checked against)."""

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor, v_threshold: float, strict: bool = False, shape: str = "tanh") -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u, k)
        ctx.v_threshold, ctx.shape = v_threshold, shape
        return fires(u, v_threshold, strict).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        u, k = ctx.saved_tensors
        return grad_out * surrogate_grad(u, k, ctx.v_threshold, ctx.shape), None, None, None, None


def spike(u: Tensor, k: Tensor | float, v_threshold: float, strict: bool = False, shape: str = "tanh") -> Tensor:
    """O = H(u - V_th) (``strict``: u > V_th) with the surrogate gradient of ``shape`` and sharpness ``k``."""
    k_t = k if isinstance(k, Tensor) else torch.tensor(float(k), dtype=u.dtype, device=u.device)
    return SpikeFunction.apply(u, k_t, v_threshold, strict, shape)
