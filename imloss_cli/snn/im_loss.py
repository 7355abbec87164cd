"""IM-Loss: information maximisation of the spikes of each hidden layer.

A spike O is a deterministic function of the membrane potential U, so I(U; O) = H(O), which for a
binary O peaks (1 bit) at p(O=1) = 0.5; with U roughly symmetric around its mean, that happens when
the mean of U sits at the threshold. Hence the paper's loss over the L-1 hidden spiking layers:

    L_IM = 1/(L-1) * sum_{l=1..L-1} (mean(U_l) - V_th)^2

where mean(U_l) averages the pre-spike potential of layer l over time, batch and neurons.

The authors' public code computes something else (``input_im_loss``): for each residual block the
mean of the input current of its output LIF, bn2(conv2(.)) + shortcut, against 0.5/T, squared,
averaged over the blocks with the stem's term and the last block's term left out; it trains on
CE + 0.005 * that. ``rate_im_loss``, (mean spike rate - 0.5/T)^2 over every hidden layer, is
neither the paper nor that code: an earlier reading of it, kept as a comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def im_loss(membrane_means: Sequence[Tensor], v_threshold: float) -> Tensor:
    """L_IM = 1/(L-1) * sum_l (mean(U_l) - V_th)^2 over the given hidden layers.

    Args:
        membrane_means: one scalar per hidden spiking layer, the mean of its pre-spike potential.
        v_threshold: V_th.

    Returns:
        A scalar tensor.
    """
    if not membrane_means:
        raise ValueError("IM-Loss needs at least one hidden spiking layer")
    return (torch.stack(list(membrane_means)) - v_threshold).square().mean()


def rate_im_loss(spike_rates: Sequence[Tensor], timesteps: int) -> Tensor:
    """The authors'-code variant: 1/(L-1) * sum_l (mean(O_l) - 0.5/T)^2.

    Args:
        spike_rates: one scalar per hidden spiking layer, the mean of its spike_seq over [T, B, ...].
        timesteps: T.
    """
    if not spike_rates:
        raise ValueError("IM-Loss needs at least one hidden spiking layer")
    return (torch.stack(list(spike_rates)) - 0.5 / timesteps).square().mean()


def input_im_loss(input_means: Sequence[Tensor], timesteps: int) -> Tensor:
    """The authors'-code IM-Loss: ``(sum_i (m_i - 0.5/T)^2 - first - last) / (n - 2)``.

    Args:
        input_means: the mean input current of the stem's LIF, then of every residual block's
            output LIF (bn2(conv2(.)) + shortcut), in network order; n of them.
        timesteps: T.

    Raises:
        ValueError: fewer than three terms (nothing is left once the first and last are dropped).
    """
    if len(input_means) < 3:
        raise ValueError(
            f"the input-current IM-Loss needs the stem and at least two blocks, got {len(input_means)} terms"
        )
    return (torch.stack(list(input_means)[1:-1]) - 0.5 / timesteps).square().mean()
