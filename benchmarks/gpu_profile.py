"""Where a ResNet-19 training step spends its GPU time: imloss (compiled/eager LIF) vs the ReLU floor."""
import sys, time, torch
from torch.profiler import profile, ProfilerActivity
from imloss_cli.bench import BenchOptions, build_variant
from imloss_cli.recipe import Recipe
from imloss_cli.snn.models import NetSpec, create_model
from imloss_cli.snn.im_loss import im_loss

torch.manual_seed(0)
spec = NetSpec.from_recipe(Recipe(), 10, 3, 32, timesteps=4)
base = create_model("resnet19", spec).cuda().to(memory_format=torch.channels_last)
x = torch.randn(128, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,), device="cuda")
for variant in sys.argv[1:]:
    model, layers = build_variant(base, variant, compiled=variant == "imloss")
    for m in layers: m.store_v_seq = True
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out, y) + 2 * im_loss([m.v_seq.float().mean() if getattr(m, "v_mean", None) is None else m.v_mean for m in layers], 0.5)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    for _ in range(4): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): step()
    torch.cuda.synchronize(); print(variant, "s/step", (time.perf_counter() - t) / 10, flush=True)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        for _ in range(3): step()
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60), flush=True)
