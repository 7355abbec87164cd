"""The training step as a CUDA graph (``train.cuda_graphs``): captured once, replayed every batch.

What is captured: the forward pass, CE + lambda * IM-Loss and the backward pass, with static input
buffers the batch is copied into. One replay enqueues the step's few hundred kernels with one
launch, so the host no longer spends most of a step enqueueing them. The optimizer step runs right
after the replay, outside the graph: torch's SGD takes a tensor learning rate (what a scheduler
would have to change inside a graph) through ``alpha=-lr``, a host read that cannot be captured,
and its foreach step is four multi-tensor launches. The gradients are the graph's own tensors:
each replay overwrites them, so nothing zeroes them between steps.

Static shapes: every replay sees the captured batch size, so the trainer drops the last partial
training batch of each epoch. Evaluation runs eagerly between epochs and leaves the graph as it
was (no torch.compile of the step, hence no recompiles when evaluation interleaves).

Capture needs a warm-up on a side stream (lazy initialisation, cuDNN's algorithm choice, the LIF
kernels' compilation); the warm-up steps run forward and backward only and the model's parameters
and buffers (BatchNorm statistics) are restored after them, so training starts from where it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

WARMUP_STEPS = 3  # what torch's documentation uses before capturing a whole network

StepFn = Callable[[Tensor, Tensor], tuple[Tensor, ...]]


class GraphedStep:
    """``step(x, y)`` (forward, loss, backward; returns detached tensors) captured as one CUDA graph.

    Args:
        step: the step; it must not read anything back to the host.
        model: the trained network, whose state the warm-up leaves unchanged.
        x: an example batch (shape, dtype and layout of every later one).
        y: its labels.
    """

    def __init__(self, step: StepFn, model: nn.Module, x: Tensor, y: Tensor) -> None:
        if x.device.type != "cuda":
            raise ValueError("CUDA graphs need CUDA tensors")
        self.x, self.y = x.clone(), y.clone()  # clone keeps x's layout (channels_last)
        saved = copy.deepcopy(model.state_dict())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                model.zero_grad(set_to_none=True)
                step(self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        model.load_state_dict(saved)  # copies in place: the graph will read these very tensors
        model.zero_grad(set_to_none=True)  # backward inside the capture allocates the static grads
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(self.x, self.y)

    def matches(self, x: Tensor, y: Tensor) -> bool:
        """Whether a batch can be replayed (the captured shape and layout)."""
        return x.shape == self.x.shape and x.stride() == self.x.stride() and y.shape == self.y.shape

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """Copy the batch in, replay; the outputs are the graph's static tensors (valid until the next call)."""
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.outputs
