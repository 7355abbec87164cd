"""Scoring a network on held-out data: the one loop behind the test and validation passes.

Sums stay on the device until the pass ends (no per-batch host sync); under torchrun every rank
scores its shard and the caller reduces the sums.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from imloss_cli.train.sink import StepCallback


@torch.no_grad()
def score(
    model: torch.nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    total: int,
    device: torch.device,
    to_device: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    autocast: Callable[[], contextlib.AbstractContextManager[None]],
    after_batch: Callable[[], None] | None = None,
    on_batch: StepCallback | None = None,
) -> Tensor:
    """Summed cross-entropy, correct predictions and images over at most ``total`` batches.

    Args:
        model: the network, already in eval mode.
        batches: ``(x, y)`` batches on the host or the device.
        total: how many batches to score (``train.max_eval_batches`` caps the pass below its length).
        device: where the sums live.
        to_device: moves a batch to the model's device and layout.
        autocast: the precision context of the forward pass.
        after_batch: called after each forward pass (layer statistics read the spikes it left).
        on_batch: progress, as ``(done, total)``.

    Returns:
        A float64 tensor ``[loss_sum, correct, images]`` on the model's device.
    """
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for done, (x, y) in enumerate(batches, start=1):
        if done > total:
            break
        x, y = to_device(x, y)
        with autocast():
            logits = model(x)
        if after_batch is not None:
            after_batch()
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        sums += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double(), sums.new_tensor(len(y))])
        if on_batch is not None:
            on_batch(done, total)
    return sums
