"""The naive LIF: one autograd node per time step, as in the authors' code.

Slow and memory-hungry on purpose: it is the reference the fused LIF is checked against (tests and
the benchmark's correctness gate) and the "naive" variant of the benchmark.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imloss_cli.snn.params import LIFParams
from imloss_cli.snn.surrogate import spike


def lif_naive(x_seq: Tensor, k: Tensor | float, p: LIFParams) -> tuple[Tensor, Tensor]:
    """Per-step Python loop of the LIF dynamics (see neuron.py). Returns (spike_seq, v_seq).

    ``p.decay`` may be a tensor with a gradient (PLIF): autograd then gives dL/d(decay) through the
    loop. In x's dtype throughout: the fp32 reference the kernels are checked against.
    """
    spikes, potentials = [], []
    h: Tensor | None = None
    o: Tensor | None = None
    for t in range(x_seq.shape[0]):
        x = (1.0 - p.decay) * x_seq[t] if p.decay_input else x_seq[t]
        if h is None or o is None:
            h = x  # the state starts at 0
        else:
            r = o.detach() if p.detach_reset else o
            kept = h - p.v_threshold * r if p.soft_reset else h * (1.0 - r)
            h = p.decay * kept + x
        o = spike(h, k, p.v_threshold, p.strict, p.surrogate)
        spikes.append(o)
        potentials.append(h)
    return torch.stack(spikes), torch.stack(potentials)
