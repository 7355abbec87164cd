"""Per-layer spike statistics, accumulated on the device over an evaluation pass.

For hidden layer l, with p_j the firing probability of neuron j over batch and time:
    firing_rate   = mean_j p_j
    entropy       = mean_j H(p_j)          (bits; the per-neuron Bernoulli entropy)
    rate_entropy  = H(mean_j p_j)          (bits; entropy of the layer's mean rate)
    membrane_mean, membrane_std            (of the pre-spike potential over T, B and neurons)
    spikes_per_image = sum_{t, j} o_j[t]   (over T and neurons, mean over images)
    sops_per_image   = sum_j c_j * f_j / images   (synaptic operations of these spikes, ``snn.ops``)
with H(p) = -p log2 p - (1-p) log2 (1-p), exactly 0 at p in {0, 1}, c_j neuron j's spikes summed
over the pass and f_j the weights one of its spikes drives in every layer that reads it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from imloss_cli.snn.neuron import LIF
from imloss_cli.snn.ops import OpsPlan, count_derived

STAT_NAMES = (
    "firing_rate",
    "entropy",
    "rate_entropy",
    "membrane_mean",
    "membrane_std",
    "spikes_per_image",
    "sops_per_image",
)


def bernoulli_entropy(p: Tensor) -> Tensor:
    """H(p) in bits, elementwise; xlogy makes 0 * log 0 = 0, so p in {0, 1} gives exactly 0."""
    nats = -(torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p))
    return nats / math.log(2.0) + 0.0  # + 0.0 turns the -0.0 of p in {0, 1} into 0.0


@dataclass(frozen=True)
class LayerStats:
    index: int
    name: str
    firing_rate: float
    entropy: float
    rate_entropy: float
    membrane_mean: float
    membrane_std: float
    spikes_per_image: float
    sops_per_image: float  # NaN when counted without an OpsPlan

    def as_dict(self) -> dict[str, float]:
        return {s: getattr(self, s) for s in STAT_NAMES}


class LayerStatsAccumulator:
    """Sums over batches of what each hidden layer stored; read back once with ``compute``.

    Per layer it keeps a per-neuron spike count and the sums of U and U^2 (float64, so that the
    variance of a long pass does not cancel), all on the layers' device. With an ``OpsPlan`` the
    spike counts also give the layer's synaptic operations; the counts of a max-pool of spikes
    (the plan's derived maps) are summed by hooks while inside ``watch``.
    """

    def __init__(self, layers: list[tuple[str, LIF]], plan: OpsPlan | None = None) -> None:
        self.layers = layers
        self.plan = plan
        self.spike_counts: list[Tensor | None] = [None] * len(layers)
        self.moments: list[Tensor | None] = [None] * len(layers)  # [sum U, sum U^2, count]
        self.derived_counts: dict[str, Tensor | None] = {m.module: None for m in plan.derived()} if plan else {}
        self.samples = 0  # T * B summed over batches
        self.images = 0  # B summed over batches

    def watch(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        """Around the evaluation loop: count the plan's derived maps as the forward passes make them."""
        if self.plan is None:
            return contextlib.nullcontext()
        return count_derived(model, self.plan, self.derived_counts)

    def update(self) -> None:
        """Add the spike_seq / v_seq the layers stored during the last forward pass."""
        for i, (name, layer) in enumerate(self.layers):
            if layer.spike_seq is None or layer.v_seq is None:
                raise RuntimeError(f"layer {name} stored nothing: set store_v_seq before the forward pass")
            spikes = layer.spike_seq.detach()
            v = layer.v_seq.detach().double()
            counts = spikes.sum(dim=(0, 1), dtype=torch.float64)  # [C, H, W] or [F]
            moments = torch.stack(
                [v.sum(), v.square().sum(), torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device)]
            )
            self.spike_counts[i] = counts if self.spike_counts[i] is None else self.spike_counts[i] + counts
            self.moments[i] = moments if self.moments[i] is None else self.moments[i] + moments
        first = self.layers[0][1].spike_seq if self.layers else None
        if first is not None:
            self.samples += first.shape[0] * first.shape[1]
            self.images += first.shape[1]

    def raw_tensors(self) -> list[Tensor]:
        """The accumulated sums, for an all-reduce across ranks before ``compute``."""
        sums = [t for pair in zip(self.spike_counts, self.moments) for t in pair if t is not None]
        return sums + [t for t in self.derived_counts.values() if t is not None]

    def compute(self, samples: int | None = None, images: int | None = None) -> list[LayerStats]:
        """Finish the statistics with a single device-to-host copy.

        Args:
            samples: total T*B observations (pass the global count after a cross-rank reduce).
            images: total images B, likewise.
        """
        n = samples if samples is not None else self.samples
        n_images = images if images is not None else self.images
        if n == 0 or any(c is None for c in self.spike_counts):
            return []
        rows = []
        for (name, _), counts, moments in zip(self.layers, self.spike_counts, self.moments):
            p = counts / n
            mean_p = p.mean()
            mean_u = moments[0] / moments[2]
            var_u = (moments[1] / moments[2] - mean_u.square()).clamp_min(0.0)
            spikes = counts.sum() / n_images
            sops = self._sops(name, counts) / n_images
            rows.append(
                torch.stack(
                    [mean_p, bernoulli_entropy(p).mean(), bernoulli_entropy(mean_p), mean_u, var_u.sqrt(), spikes, sops]
                )
            )
        values = torch.stack(rows).cpu().tolist()
        return [LayerStats(i, name, *vals) for i, ((name, _), vals) in enumerate(zip(self.layers, values))]

    def _sops(self, name: str, counts: Tensor) -> Tensor:
        """sum_j c_j * f_j over the layer's own map and every max-pool of it (0 when nothing reads it)."""
        if self.plan is None:
            return torch.full((), math.nan, dtype=torch.float64, device=counts.device)
        total = torch.zeros((), dtype=torch.float64, device=counts.device)
        for m in self.plan.maps:
            if m.owner != name:
                continue
            c = counts if m.module == name else self.derived_counts[m.module]
            if c is not None:
                total = total + (c * m.fanout.to(c.device)).sum()
        return total
