"""TET: temporal efficient training (Deng et al., ICLR 2022; their public code, functions.TET_loss).

The classification term reads every time step's output instead of their mean:

    L_TET = 1/T sum_t CE(O(t), y)
    L_MSE = 1/(T B C) sum_{t,b,c} (O(t)_{b,c} - phi)^2
    L     = (1 - lambda) L_TET + lambda L_MSE            (lambda 1e-3, phi 1 in their scripts)

a convex mix, as their code writes it (``(1 - lamb) * Loss_es + lamb * Loss_mmd``). The prediction is
still the mean of the outputs over T.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def tet_loss(logits_seq: Tensor, labels: Tensor, lam: float, phi: float) -> Tensor:
    """TET's loss of time-first outputs ``logits_seq`` [T, B, classes] and labels [B] (module docstring)."""
    T = logits_seq.shape[0]
    per_step = F.cross_entropy(logits_seq.flatten(0, 1).float(), labels.repeat(T))  # mean over T*B = mean_t of CE_t
    if lam == 0:
        return per_step
    mse = (logits_seq.float() - phi).square().mean()
    return (1.0 - lam) * per_step + lam * mse
