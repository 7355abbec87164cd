"""ESG: the evolutionary surrogate gradient.

Forward the spike is the Heaviside step O = H(u - V_th). Backward it is replaced by the derivative of
g(u) = 1/2 tanh(K (u - V_th)) + 1/2, whose sharpness K grows with the epoch: wide gradients early
(many neurons learn), close to the true step late.
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


def surrogate_grad(u: Tensor, k: Tensor | float, v_threshold: float) -> Tensor:
    """g'(u) = 1/2 * K * (1 - tanh(K (u - V_th))^2), the ESG backward of the spike (Algorithm 1, l. 12)."""
    return 0.5 * k * (1.0 - torch.tanh(k * (u - v_threshold)).square())


class SpikeFunction(torch.autograd.Function):
    """Heaviside forward, ESG backward, for a single tensor (the reference the fused LIF is checked against)."""

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor, v_threshold: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u, k)
        ctx.v_threshold = v_threshold
        return (u >= v_threshold).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        u, k = ctx.saved_tensors
        return grad_out * surrogate_grad(u, k, ctx.v_threshold), None, None


def spike(u: Tensor, k: Tensor | float, v_threshold: float) -> Tensor:
    """O = H(u - V_th) with the ESG surrogate gradient of sharpness ``k``."""
    k_t = k if isinstance(k, Tensor) else torch.tensor(float(k), dtype=u.dtype, device=u.device)
    return SpikeFunction.apply(u, k_t, v_threshold)
