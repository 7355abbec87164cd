"""The training-step benchmark: its correctness gate, a tiny run, module surgery, SpikingJelly's dynamics."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from imloss_cli import bench
from imloss_cli.bench import (
    BenchError,
    BenchOptions,
    build_variant,
    correctness_gate,
    run_benchmark,
    to_json,
)
from imloss_cli.cli.app import app
from imloss_cli.cli.bench import main as bench_main
from imloss_cli.recipe import Recipe
from imloss_cli.snn.models import NetSpec, create_model
from imloss_cli.snn.reference import lif_naive

try:
    import spikingjelly.activation_based.neuron as sj_neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate

    SJ_SKIP = ""
except ImportError as e:  # an optional extra: pip install -e .[bench]
    SJ_SKIP = f"spikingjelly not importable: {e}"

# No torch.compile here: a cold inductor compile takes longer than this file may (see the compiled test).
TINY = {"arch": "convnet3", "batch": 2, "steps": 1, "repeats": 1, "warmup": 1, "memory": False, "compiled": False}


def _tiny_model(T: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("convnet3", NetSpec.from_recipe(Recipe(), 10, 3, 8, timesteps=T)).train()


@pytest.mark.parametrize("T", [1, 2, 4])
def test_gate_passes_for_the_eager_kernels(T: int) -> None:
    (check,) = correctness_gate((T,), "cpu", compiled=False)
    assert check.passed, check
    assert check.spike_mismatches == 0 and check.v_err < 1e-5 and check.grad_err < 1e-5


@pytest.mark.skipif(
    not os.environ.get("IMLOSS_TEST_COMPILE"),
    reason="a cold torch.compile of both loops takes 20-45 s on two CPU cores (test_neuron checks the "
    "compiled kernels already); set IMLOSS_TEST_COMPILE=1 to run it",
)
def test_gate_passes_for_the_compiled_kernels() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    eager, compiled = correctness_gate((2,), "cpu", compiled=True)
    assert compiled.name == "imloss (compiled kernels)"
    assert eager.passed and compiled.passed, compiled


def test_gate_fails_when_the_fused_lif_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong reference (here: a different decay) must trip the gate and stop the run before timing."""

    def off_by_decay(x_seq, k, params):  # type: ignore[no-untyped-def]
        return lif_naive(x_seq, k, replace(params, decay=params.decay * 0.5))

    monkeypatch.setattr(bench.gate, "lif_naive", off_by_decay)
    result = run_benchmark(BenchOptions(timesteps=(2,), compare=("relu",), **TINY))
    assert not result.gate_passed and result.rows == ()
    assert (
        bench_main(
            [
                "--arch",
                "convnet3",
                "--timesteps",
                "2",
                "--compare",
                "relu",
                "--batch",
                "2",
                "--steps",
                "1",
                "--repeats",
                "1",
                "--no-memory",
                "--no-compile",
            ]
        )
        == 1
    )


def test_tiny_run_times_every_variant_and_serialises() -> None:
    compare = ("imloss-eager", "naive", "relu", "relu-tb", "conv-only")
    result = run_benchmark(BenchOptions(timesteps=(2,), compare=compare, **TINY))
    assert result.gate_passed
    assert [r.variant for r in result.rows] == ["imloss", *compare]
    for r in result.rows:
        assert r.s_per_step > 0 and r.images_per_s > 0 and r.warmup_s > 0
    assert (result.rows[0].imloss_over_this, result.rows[0].ratio_low, result.rows[0].ratio_high) == (1.0, 1.0, 1.0)
    assert [r.static_encoder for r in result.rows] == [True, True, True, True, False, True]
    data = json.loads(to_json(result))
    assert data["gate_passed"] and len(data["rows"]) == 6
    table = bench.format_table(result)
    assert "imloss/this" in table and "the time of the conv-only bound" in table


def test_conv_only_keeps_every_convolution_and_nothing_nonlinear() -> None:
    base = _tiny_model()
    model, neurons = build_variant(base, "conv-only")
    kinds = {type(m).__name__ for m in model.modules()}
    assert not kinds & {"BatchNorm2d", "BatchNorm1d", "LIF"} and len(neurons) == 3
    # The same weights as the base, less the norms' affine parameters.
    norm_params = sum(p.numel() for m in base.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters()) - norm_params
    # Convolutions, linear layers and means only: the network is affine in its input.
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        f0 = model(torch.zeros_like(x))
        torch.testing.assert_close(model(2 * x) - f0, 2 * (model(x) - f0), rtol=1e-4, atol=1e-5)


def test_each_listed_memory_format_gets_its_own_rows_in_that_layout() -> None:
    formats = ("channels_last", "contiguous")
    o = BenchOptions(timesteps=(2,), compare=("relu", "relu-tb"), memory_formats=formats, **TINY)
    result = run_benchmark(o)
    names = ["imloss", "relu", "relu-tb", "imloss@contiguous", "relu@contiguous", "relu-tb@contiguous"]
    assert [r.variant for r in result.rows] == names
    assert [r.memory_format for r in result.rows] == [f for f in formats for _ in range(3)]
    assert [r.static_encoder for r in result.rows] == [True, True, False, True, True, False]
    runners, inputs, _ = bench.run._setup(bench.options.resolve_options(o), 2, names)
    for name in names:
        cl = "@" not in name
        conv = runners[name].model.encoder.layers[0]
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cl
        assert inputs[name].is_contiguous(memory_format=torch.channels_last) == cl
        assert torch.equal(inputs[name], inputs["imloss"])  # same values, another layout
    relu_rows = [r for r in result.rows if r.variant in ("relu", "relu@contiguous")]
    fastest = min(relu_rows, key=lambda r: r.s_per_step)
    summary = (
        f"{fastest.imloss_over_this:.2f}x (repeats {fastest.ratio_low:.2f}-{fastest.ratio_high:.2f}) "
        f"the time of the {fastest.variant} floor"
    )
    assert summary in bench.format_table(result)


def test_ratios_pair_each_repeat_and_cancel_a_slow_repeat() -> None:
    # Repeat 3 ran with the machine twice as slow for both variants: its ratio is still 0.8.
    assert bench.run.paired_ratios([1.0, 1.0, 2.0], [1.25, 1.25, 2.5]) == pytest.approx((0.8, 0.8, 0.8))
    median, low, high = bench.run.paired_ratios([1.0, 2.0, 1.0], [2.0, 2.0, 4.0])  # 0.5, 1.0, 0.25
    assert (median, low, high) == (0.5, 0.25, 1.0)
    with pytest.raises(ValueError, match="one time per repeat"):
        bench.run.paired_ratios([1.0], [1.0, 2.0])


def _bench_cli(entry: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of ``python -m imloss_cli.bench ARGS`` or ``imloss bench ARGS``: one parser."""
    if entry == "python -m imloss_cli.bench":
        return bench_main(args), capsys.readouterr().err
    result = CliRunner().invoke(app, ["bench", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("entry", ["python -m imloss_cli.bench", "imloss bench"])
@pytest.mark.parametrize(
    ("formats", "got"),
    [
        ("nhwc", "nhwc"),
        ("channels_last,channels_last", "channels_last,channels_last"),
        ("channels_last,nhwc", "channels_last,nhwc"),
        ("", "none"),
    ],
)
def test_bad_memory_format_list_is_a_usage_error_before_running(
    entry: str, formats: str, got: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _bench_cli(
        entry, ["--arch", "convnet3", "--compare", "relu", "--no-memory", "--memory-format", formats], capsys
    )
    assert code == 2
    assert f"memory formats must be distinct values from channels_last, contiguous, got {got}" in err


@pytest.mark.parametrize("entry", ["python -m imloss_cli.bench", "imloss bench"])
def test_unknown_variant_is_a_usage_error(entry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _bench_cli(entry, ["--arch", "convnet3", "--compare", "tensorflow", "--no-memory"], capsys)
    assert code == 2
    assert "unknown variant 'tensorflow'" in err


VARIANTS = ["imloss", "imloss-eager", "naive", "relu", "relu-tb"] + ([] if SJ_SKIP else ["spikingjelly"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_surgery_keeps_the_parameters_and_the_output_shape(variant: str) -> None:
    base = _tiny_model()
    model, neurons = build_variant(base, variant, kernels="eager")
    base_state, state = base.state_dict(), model.state_dict()
    assert state.keys() == base_state.keys()
    assert all(torch.equal(state[k], base_state[k]) for k in state)
    assert len(neurons) == 3  # convnet3's hidden spiking layers: stem, conv, fc
    logits = model(torch.randn(5, 3, 8, 8))
    assert logits.shape == (5, 10)
    assert all(n.v_mean is not None and n.v_mean.requires_grad for n in neurons)


@pytest.mark.skipif(bool(SJ_SKIP), reason=SJ_SKIP or "")
@pytest.mark.parametrize("T", [1, 2, 4])
def test_spikingjelly_lifnode_has_our_dynamics(T: int) -> None:
    """LIFNode(decay_input=False, v_reset=0, tau=1/(1-decay)) spikes exactly as lif_naive; with
    Sigmoid(alpha=2K), which is ESG's surrogate, the input gradients agree too."""
    spec, k = NetSpec.from_recipe(Recipe(), 10, 3, 32, timesteps=T), 2.0
    x = torch.rand(T, 4, 8, 6, 6, generator=torch.Generator().manual_seed(T)) * 1.2
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + T))
    x_ref = x.clone().requires_grad_(True)
    s_ref, v_ref = lif_naive(x_ref, k, spec.lif().params)
    (s_ref * w).sum().backward()

    node = sj_neuron.LIFNode(
        tau=1.0 / (1.0 - spec.decay),
        decay_input=False,
        v_threshold=spec.v_threshold,
        v_reset=0.0,
        surrogate_function=sj_surrogate.Sigmoid(alpha=2 * k),
        detach_reset=spec.detach_reset,
        step_mode="m",
        store_v_seq=True,
    )
    x_sj = x.clone().requires_grad_(True)
    s = node(x_sj)
    (s * w).sum().backward()
    assert torch.equal(s, s_ref)
    if T > 1:
        assert 0 < s.sum() < s.numel()
    torch.testing.assert_close(node.v_seq, (v_ref * (1 - s_ref)).detach())  # SJ stores the post-reset potential
    torch.testing.assert_close(x_sj.grad, x_ref.grad, rtol=1e-5, atol=1e-5)

    lif = spec.lif()
    lif.k.fill_(k)
    wrapped = bench.SpikingJellyLIF(lif)  # what the benchmark runs: the same settings, fp32 initial state
    assert torch.equal(wrapped(x), s_ref)


@pytest.mark.skipif(bool(SJ_SKIP), reason=SJ_SKIP or "")
@pytest.mark.parametrize("tau", [1.5, 2.0, 4.0])
def test_spikingjelly_parametric_lif_node_is_our_plif(tau: float) -> None:
    """model.neuron = "plif" is Fang et al.'s neuron as SpikingJelly 2.0 defines it: ParametricLIFNode(
    init_tau=tau, decay_input=True, v_reset=0) starts from the same w, spikes identically over T = 4,
    and with Sigmoid(alpha=2K) (ESG's surrogate) gives the same gradients to the input and to w."""
    T, k = 4, 2.0
    recipe = Recipe().with_overrides({"model.neuron": "plif", "neuron.plif_tau": tau})
    lif = NetSpec.from_recipe(recipe, 10, 3, 32, timesteps=T).lif()
    lif.k.fill_(k)
    node = sj_neuron.ParametricLIFNode(
        init_tau=tau, decay_input=True, v_threshold=lif.params.v_threshold, v_reset=0.0,
        surrogate_function=sj_surrogate.Sigmoid(alpha=2 * k), detach_reset=False, step_mode="m",
    )  # fmt: skip
    torch.testing.assert_close(lif.w.detach(), node.w.detach())  # the same initial w: -log(tau - 1)
    with torch.no_grad():  # a trained w, not the initial one
        lif.w.fill_(float(node.w) + 0.3)
        node.w.copy_(lif.w)
    x = torch.rand(T, 4, 8, 6, 6, generator=torch.Generator().manual_seed(7)) * 1.2 * tau
    up = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))
    x_ours, x_sj = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    s = lif(x_ours)
    (s * up).sum().backward()
    s_sj = node(x_sj)
    (s_sj * up).sum().backward()
    assert torch.equal(s, s_sj) and 0 < s.sum() < s.numel()
    torch.testing.assert_close(x_ours.grad, x_sj.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lif.w.grad, node.w.grad, rtol=1e-5, atol=1e-5)


def test_the_imloss_plif_variant_is_fang_et_als_plif_at_the_recipes_tau() -> None:
    model, neurons = build_variant(_tiny_model(), "imloss-plif", kernels="eager")
    assert len(neurons) == 3
    for n in neurons:
        assert n.params.decay_input and float(n.w.detach()) == pytest.approx(-math.log(Recipe().neuron.plif_tau - 1))
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(n.w.grad is not None and n.w.grad != 0 for n in neurons)


@pytest.mark.skipif(bool(SJ_SKIP), reason=SJ_SKIP or "")
def test_gate_covers_spikingjelly() -> None:
    (imloss, sj) = correctness_gate((2,), "cpu", compiled=False, spikingjelly_backends=(None,))
    assert imloss.passed and sj.passed and sj.name == "spikingjelly[default]"


def test_an_epoch_of_generated_cifar_images_runs_through_the_trainer_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--arch", "convnet3", "--timesteps", "1", "--batch", "8", "--compare", "relu", "--steps", "1",
            "--repeats", "1", "--warmup", "0", "--no-memory", "--no-compile", "--epoch-images", "40", "--json"]  # fmt: skip
    assert bench_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    epochs = out["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert (e["train_images"], e["test_images"]) == (40, 8)
        assert e["epoch_s"] >= e["train_s"] > 0
        assert e["images_per_s"] == pytest.approx(40 / e["epoch_s"])
        assert (e["lif_kernels"], e["device_resident"], e["cuda_graphs"]) == (
            "eager",
            False,
            False,
        )  # CPU: host loaders


def test_cuda_graphs_for_the_timed_epoch_need_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BenchError, match=r"timing an epoch: train\.cuda_graphs needs"):
        run_benchmark(BenchOptions(**TINY, compare=(), timesteps=(1,), epoch_images=16, cuda_graphs=True))


@pytest.mark.slow  # a memory probe process per row and T
@pytest.mark.skipif(bool(SJ_SKIP), reason=SJ_SKIP or "")
def test_memory_modes_and_spikingjelly_memopt_get_rows_with_their_memory_and_a_growth_line() -> None:
    o = BenchOptions(
        timesteps=(2, 4), compare=("spikingjelly-memopt",), memory_modes=("default", "low"), **{**TINY, "memory": True}
    )
    result = run_benchmark(o)
    assert [r.variant for r in result.rows] == ["imloss", "imloss-low", "spikingjelly-memopt"] * 2
    assert all(r.step_mb is not None and r.step_mb > 0 for r in result.rows)  # each measured in its own process
    runners, _, _ = bench.run._setup(bench.options.resolve_options(o), 2, ["imloss-low", "spikingjelly-memopt"])
    assert type(runners["imloss-low"].model).__name__ == "LowMemoryNet"
    wrapped = {type(m).__name__ for m in runners["spikingjelly-memopt"].model.modules()}
    assert "CheckpointWrapper" in wrapped
    table = bench.format_table(result)
    low = {r.timesteps: r for r in result.rows if r.variant == "imloss-low"}
    assert f"summary T=4: imloss-low takes {1 / low[4].imloss_over_this:.2f}x" in table
    assert "the step time of spikingjelly-memopt" in table
    assert "step memory per time step, T=2 to 4 (MB): imloss " in table


@pytest.mark.parametrize("entry", ["python -m imloss_cli.bench", "imloss bench"])
def test_an_unknown_memory_mode_is_a_usage_error(entry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _bench_cli(entry, ["--arch", "convnet3", "--no-memory", "--memory-mode", "default,tiny"], capsys)
    assert code == 2
    assert "memory modes must be distinct values from default, low, got default,tiny" in err
