"""Threshold-dependent batch normalisation (tdBN, Zheng et al., AAAI 2021).

    x_hat = (x - E[x]) / sqrt(Var[x] + eps)        per channel, over time, batch and space
    y     = lambda * (alpha * V_th * x_hat) + beta

alpha * V_th is a fixed constant (alpha = 1, or 1/sqrt(2) on the two branches a residual block
sums), lambda and beta are trained, lambda starting at 1. Only the initial scale equals a BatchNorm
whose weight starts at alpha * V_th: under SGD the effective scale lambda * alpha * V_th then moves
(alpha * V_th)^2 times as fast as that BatchNorm's weight would (the gradient and the weight decay
act on lambda), as in the tdBN paper and the IM-Loss authors' ``tdBatchNorm2d``. The layers run on
the folded batch [T*B, C, H, W], so the statistics span time and batch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TdBatchNorm2d(nn.BatchNorm2d):
    """tdBN: ``weight`` is lambda (starting at 1), ``bias`` beta, ``scale`` the fixed alpha * V_th.

    ``scale`` is a buffer, saved with the weights: a checkpoint of the former "tdbn" (a BatchNorm
    whose weight started at alpha * V_th) holds no such entry and is refused rather than misread.
    """

    def __init__(self, num_features: int, scale: float) -> None:
        super().__init__(num_features)
        self.register_buffer("scale", self.weight.new_tensor(scale))

    def forward(self, x: Tensor) -> Tensor:
        # BatchNorm2d's own bookkeeping (momentum, running statistics; built with its defaults), and
        # lambda * alpha * V_th as the affine weight: one fused kernel, as a BatchNorm.
        if self.training:
            self.num_batches_tracked.add_(1)  # type: ignore[operator]
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight * self.scale, self.bias, self.training,
            self.momentum if self.momentum is not None else 0.1, self.eps,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={float(self.scale):g}"
