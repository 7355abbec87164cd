"""Membrane potential batch normalisation (MPBN, Guo et al., ICCV 2023; the official code yfguo91/MPBN).

A LIF whose firing decision reads the membrane potential after a BatchNorm of its own:

    h[t] = decay * h[t-1] * (1 - o[t-1]) + x[t]     the raw potential, hard reset to 0 on a spike
    m[t] = BN(h[t])                                 per channel; gamma, beta and the running statistics
                                                    are shared by the steps (each step's own batch
                                                    statistics in training, as the official mem_update)
    o[t] = H(m[t] - V_th)                           the surrogate reads m, so gradients pass the BN

(the official code fires on BN(h) / 1.0 > 0.5, imloss's V_th = 0.5 and ``neuron.strict_threshold``).
In eval mode the BN is an affine map with the running statistics, so for gamma_c > 0

    BN(h) >= V_th   <=>   h >= V'_c = (V_th - beta_c) * sqrt(var_c + eps) / gamma_c + mean_c,

the BN folds into a per-channel threshold on the raw potential (:meth:`MembraneBNLIF.folded_thresholds`;
``use_folded`` evaluates that way). A channel with gamma <= 0 fires below, or regardless of, a
threshold: it cannot be folded, and is named. ``v_seq`` and ``v_mean`` are the normalised potential
m, the one compared with V_th (IM-Loss pushes its mean to V_th). The steps run as a per-step loop
with autograd, not in the fused kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from imloss_cli.snn.neuron import LIF
from imloss_cli.snn.surrogate import fires, spike


class MembraneBNLIF(LIF):
    """A hidden LIF layer with MPBN on ``channels`` channels (feature maps [.., C, H, W] or features [.., C])."""

    def __init__(self, channels: int, *args: object, spatial: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.params.soft_reset:
            raise ValueError("MPBN resets the raw potential to 0 (hard reset); a soft reset would subtract V_th there")
        self.bn: nn.Module = nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
        self.use_folded = False  # eval: compare the raw potential with the folded thresholds

    def folded_thresholds(self) -> Tensor:
        """Per channel, the raw-potential threshold V' equal to BN(h) >= V_th in eval mode.

        Raises:
            ValueError: a channel whose BN scale gamma is not positive (it cannot fire above a threshold).
        """
        bn = self.bn
        gamma = bn.weight.detach()
        bad = (gamma <= 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"MPBN channels {bad[:5]} have gamma <= 0: their firing cannot be folded into a threshold")
        std = torch.sqrt(bn.running_var + bn.eps)  # type: ignore[operator]
        return (self.params.v_threshold - bn.bias.detach()) * std / gamma + bn.running_mean  # type: ignore[operator]

    def forward(self, x_seq: Tensor) -> Tensor:
        decay = self.leak()
        k = self.k.to(x_seq.dtype)
        folded = self.folded_thresholds() if self.use_folded and not self.training else None
        spikes, normalised = [], []
        h: Tensor | None = None
        o: Tensor | None = None
        for t in range(x_seq.shape[0]):
            if h is None or o is None:
                h = x_seq[t]
            else:
                r = o.detach() if self.params.detach_reset else o
                h = decay * (h * (1.0 - r)) + x_seq[t]
            if folded is not None:  # raw potential against V'_c: the same spikes without the BN
                o = fires(h, folded.view(1, -1, *(1,) * (h.ndim - 2)), self.params.strict).to(h.dtype)
                m = h
            else:
                m = self.bn(h)
                o = spike(m, k, self.params.v_threshold, self.params.strict, self.params.surrogate)
            spikes.append(o)
            normalised.append(m)
        spike_seq, v_seq = torch.stack(spikes), torch.stack(normalised)
        if self.store_v_seq:
            self.v_seq, self.v_mean, self.spike_seq = v_seq, v_seq.mean(dtype=torch.float32), spike_seq
        if self.store_x_mean:
            self.x_mean = x_seq.mean(dtype=torch.float32)
        return spike_seq

    def extra_repr(self) -> str:
        return super().extra_repr() + ", membrane BN"
