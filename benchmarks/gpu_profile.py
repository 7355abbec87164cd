"""Where a ResNet-19 training step spends its GPU time: the variants named on the command line.

Example (on a GPU machine): python benchmarks/gpu_profile.py imloss relu
"""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from imloss_cli.bench import build_variant
from imloss_cli.recipe import Recipe
from imloss_cli.snn.im_loss import im_loss
from imloss_cli.snn.models import NetSpec, create_model

DEFAULTS = Recipe()


def profile_variant(base: torch.nn.Module, variant: str, x: torch.Tensor, y: torch.Tensor) -> None:
    model, neurons = build_variant(base, variant, kernels="triton" if variant == "imloss" else "eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=DEFAULTS.optim.momentum)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            im = im_loss([n.v_mean for n in neurons], DEFAULTS.neuron.v_threshold)
            loss = torch.nn.functional.cross_entropy(out.float(), y) + DEFAULTS.loss.im_weight * im
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(4):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    print(variant, "s/step", (time.perf_counter() - t) / 10, flush=True)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    spec = NetSpec.from_recipe(DEFAULTS, 10, 3, 32, timesteps=4)
    base = create_model("resnet19", spec).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(128, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device="cuda")
    for name in sys.argv[1:]:
        profile_variant(base, name, x, y)
