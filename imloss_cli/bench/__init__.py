"""Training-step benchmark: imloss's fused LIF against SpikingJelly, the naive loop and a ReLU floor.

Every variant is the same network (``create_model(arch, spec)`` with a fixed seed, deep-copied) with
its spiking layers swapped by module surgery, trained on the same batch: forward, CE + lambda *
IM-Loss (membrane form), backward, SGD step, zero_grad, with the default recipe's neuron, lambda and
momentum. A correctness gate (fused LIF == ``lif_naive``: identical spikes, v_seq and input
gradients within 1e-5 in fp32) runs first.

Modules: ``variants`` (module surgery: every neuron kind), ``gate`` (the correctness gate), ``run``
(warm-up, interleaved timing, memory, FLOPs), ``output`` (table and JSON). Its command line is
``imloss_cli.cli.bench``, run as ``imloss bench`` or ``python -m imloss_cli.bench``. Needs torch,
pydantic, typer and rich, no registry: a bare GPU machine runs it with pydantic's wheels carried.

Example:
    python -m imloss_cli.bench --arch resnet19 --timesteps 2,4 --batch 8 --compare spikingjelly,naive,relu
"""

from imloss_cli.bench.gate import GATE_TOL, GateCheck, correctness_gate
from imloss_cli.bench.options import BenchOptions, BenchResult, VariantResult
from imloss_cli.bench.output import format_table, to_json
from imloss_cli.bench.run import memory_probe, run_benchmark
from imloss_cli.bench.variants import KNOWN, BenchError, SpikingJellyLIF, build_variant

__all__ = [
    "GATE_TOL",
    "KNOWN",
    "BenchError",
    "BenchOptions",
    "BenchResult",
    "GateCheck",
    "SpikingJellyLIF",
    "VariantResult",
    "build_variant",
    "correctness_gate",
    "format_table",
    "memory_probe",
    "run_benchmark",
    "to_json",
]
