"""The optimizer and learning-rate schedule of a recipe (``[optim]``)."""

from __future__ import annotations

import torch

from imloss_cli.recipe import OptimConfig
from imloss_cli.snn.neuron import spiking_layers


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, epochs: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD, Adam or AdamW over ``model``'s parameters, and its per-epoch schedule (cosine to 0, or constant).

    With ``no_decay_norm_bias``, parameters of one dimension (BatchNorm weights, biases) get no
    weight decay; the learnable w of each LIF layer (``model.neuron = "plif"`` or
    ``"lif-learned-leak"``) gets none unless ``plif_weight_decay`` (Fang et al. train it without).
    """
    leak_weights = {id(m.w) for _, m in spiking_layers(model) if m.w is not None}
    decay, no_decay = [], []
    for p in model.parameters():
        exempt = (cfg.no_decay_norm_bias and p.ndim <= 1) or (id(p) in leak_weights and not cfg.plif_weight_decay)
        (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    optimizer: torch.optim.Optimizer
    if cfg.name == "sgd":
        optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    elif cfg.name == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if cfg.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return optimizer, scheduler
