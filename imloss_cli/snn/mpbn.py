"""Membrane potential batch normalisation (MPBN, Guo et al., ICCV 2023; the official code yfguo91/MPBN).

A LIF whose firing decision reads the membrane potential after a BatchNorm of its own:

    h[t] = decay * h[t-1] * (1 - o[t-1]) + x[t]     the raw potential, hard reset to 0 on a spike
                                                    ((1 - decay) * x[t] with Fang et al.'s PLIF charge)
    m[t] = BN(h[t])                                 per channel; gamma, beta and the running statistics
                                                    are shared by the steps (each step's own batch
                                                    statistics in training, as the official mem_update)
    o[t] = H(m[t] - V_th)                           the surrogate reads m, so gradients pass the BN

(the official code fires on BN(h) / 1.0 > 0.5, imloss's V_th = 0.5 and ``neuron.strict_threshold``).
In eval mode the BN is an affine map with the running statistics, m = a_c h + b_c with
a_c = gamma_c / sqrt(var_c + eps), so the decision folds into the raw potential:

    gamma_c > 0:   BN(h) >= V_th   <=>   h >= V'_c = (V_th - beta_c) * sqrt(var_c + eps) / gamma_c + mean_c
    gamma_c < 0:   BN(h) >= V_th   <=>   h <= V'_c           (the channel fires below V'_c)
    gamma_c = 0:   BN(h) = beta_c: it fires at every step when beta_c >= V_th, else never

(strict: > and <). Evaluation fires on the fold (:meth:`MembraneBNLIF.fold`) and runs no BN:
there are no surrogate gradients in eval mode. An export (:meth:`MembraneBNLIF.folded_thresholds`)
needs gamma_c > 0 in every channel, a threshold NIR's LIF can hold, and names the channels that are not.

What IM-Loss reads: ``v_seq`` and ``v_mean`` are the normalised potential m, the one compared with
V_th, whose mean at V_th is what makes spikes carry most information (``snn.im_loss``). In training
each step's batch mean of m over a channel is beta_c, so mean(m) = mean_c beta_c: IM-Loss trains
the BN biases beta (which set the firing probability here) and reaches no weight. The raw potential
is not what fires: MPBN's spikes are unchanged by a positive per-channel scaling of h, so its mean
says nothing about them. (At evaluation m = a h + b is computed for ``v_seq`` only when
``store_v_seq`` asks, never to fire.)

Precision (``snn.neuron``'s rule): the raw potential is carried, normalised and compared with the
threshold in fp32 (or x's wider type) whatever the compute dtype; spike_seq and v_seq are returned in
x's dtype. The steps run as a per-step loop with autograd, not in the fused kernels.
"""

from __future__ import annotations

import math

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

    def _affine(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(gamma, beta, running mean, sqrt(running var + eps)) per channel, in ``dtype``."""
        bn = self.bn
        gamma = bn.weight.detach().to(dtype)
        beta = bn.bias.detach().to(dtype)
        mean = bn.running_mean.to(dtype)  # type: ignore[union-attr]
        std = torch.sqrt(bn.running_var.to(dtype) + bn.eps)  # type: ignore[union-attr, operator]
        return gamma, beta, mean, std

    def folded_thresholds(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Per channel, the raw-potential threshold V' equal to BN(h) >= V_th in eval mode (computed in
        ``dtype``, float64 by default: an export's numbers).

        Raises:
            ValueError: a channel whose BN scale gamma is not positive (it cannot fire above a threshold).
        """
        gamma, beta, mean, std = self._affine(dtype)
        bad = (gamma <= 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"MPBN channels {bad[:5]} have gamma <= 0: their firing cannot be folded into a threshold")
        return (self.params.v_threshold - beta) * std / gamma + mean

    def fold(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The eval-mode decision on the raw potential for every gamma (module docstring), per channel
        (sign, threshold): a channel fires when sign * h >= threshold (strict: >). sign is -1 where
        gamma < 0 (it fires below V'), else 1; a channel with gamma = 0 has threshold -inf (it always
        fires) or +inf (never). No host sync: a layer whose gamma crossed 0 evaluates exactly too, and
        the common case costs one multiply and one compare per potential (a BN costs more)."""
        gamma, beta, mean, std = self._affine(dtype)
        v_th = self.params.v_threshold
        folded = (v_th - beta) * std / gamma.where(gamma != 0, 1.0) + mean
        sign = torch.where(gamma < 0, -1.0, 1.0).to(dtype)
        constant = torch.where(fires(beta, v_th, self.params.strict), -math.inf, math.inf).to(dtype)
        return sign, torch.where(gamma != 0, sign * folded, constant)

    def forward(self, x_seq: Tensor) -> Tensor:
        dtype, acc = x_seq.dtype, torch.promote_types(x_seq.dtype, torch.float32)
        decay = self.leak()
        decay = decay.to(acc) if isinstance(decay, Tensor) else decay
        k = self.k.to(acc)
        strict, v_th = self.params.strict, self.params.v_threshold
        folded = None if self.training else self._eval_constants(acc, x_seq.ndim - 1)
        spikes: list[Tensor] = []
        normalised: list[Tensor] = []
        h: Tensor | None = None
        o: Tensor | None = None
        for t in range(x_seq.shape[0]):
            x = x_seq[t].to(acc)
            x = (1.0 - decay) * x if self.params.decay_input else x
            if h is None or o is None:
                h = x
            else:
                r = o.detach() if self.params.detach_reset else o
                h = decay * (h * (1.0 - r)) + x
            if folded is None:
                m = self.bn(h)
                o = spike(m, k, v_th, strict, self.params.surrogate)
            else:  # the raw potential against the fold: the BN's spikes without the BN
                sign, threshold, a, b = folded
                o = fires(sign * h, threshold, strict).to(acc)
                m = torch.addcmul(b, a, h) if self.store_v_seq else h  # m = a h + b, only to be stored
            spikes.append(o.to(dtype))
            if self.store_v_seq:
                normalised.append(m)
        spike_seq = torch.stack(spikes)
        if self.store_v_seq:
            self.v_seq = torch.stack([m.to(dtype) for m in normalised])
            self.v_mean = torch.stack([m.mean() for m in normalised]).mean()  # of the fp32 (or wider) m
            self.spike_seq = spike_seq
        if self.store_x_mean:
            self.x_mean = x_seq.mean(dtype=torch.float32)
        return spike_seq

    def _eval_constants(self, dtype: torch.dtype, ndim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(sign, threshold, a, b) per channel, shaped to broadcast over one step [B, C, ...] of ``ndim``
        dims: the fold, and the BN's eval affine m = a h + b for the stored potential."""
        shape = (1, -1, *(1,) * (ndim - 2))
        sign, threshold = self.fold(dtype)
        gamma, beta, mean, std = self._affine(dtype)
        a = gamma / std
        return sign.view(shape), threshold.view(shape), a.view(shape), (beta - a * mean).view(shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", membrane BN"
