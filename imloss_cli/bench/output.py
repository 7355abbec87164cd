"""The benchmark's result as a plain-text table (gate, rows, summary lines, notes) or as JSON."""

from __future__ import annotations

import dataclasses
import json

from imloss_cli.bench.gate import GATE_TOL
from imloss_cli.bench.options import BenchOptions, BenchResult, VariantResult
from imloss_cli.bench.run import reference_row, row_name, split_row_name
from imloss_cli.bench.variants import memory_variant


def _fmt(v: float | None, spec: str) -> str:
    """``format(v, spec)``, or a right-aligned "-" of the same width for a missing value."""
    return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))


def format_table(result: BenchResult) -> str:
    """The result as plain text: gate, one row per variant per T, notes, summary lines."""
    o = result.options
    lines = [
        (
            f"imloss bench: {o.arch} {o.image_size}x{o.image_size}, batch {o.batch}, {o.device} "
            f"({result.device_name}, {result.threads} threads), {o.dtype}, torch {result.torch_version}"
        ),
        f"correctness gate vs lif_naive ({o.device}, fp32; max abs error; tolerance {GATE_TOL:g}, spikes identical):",
        f"  {'check':30} {'T':>2} {'spike diffs':>11} {'v_seq err':>10} {'grad err':>10}  ok",
    ]
    for c in result.gate:
        lines.append(
            f"  {c.name:30} {c.timesteps:>2} {c.spike_mismatches:>11} {c.v_err:>10.2e} {c.grad_err:>10.2e}  "
            f"{'yes' if c.passed else 'NO'}"
        )
    if result.rows:
        lines.append(
            f"{'variant':26} {'T':>2} {'s/step':>9} {'spread':>7} {'images/s':>9} {'imloss/this':>11} {'range':>11} "
            f"{'peak MB':>9} {'step MB':>8} {'warm-up s':>9} {'enc':>5}"
            + ("  MFU" if result.rows[0].mfu is not None else "")
        )
        for r in result.rows:
            spread = (r.s_max - r.s_min) / r.s_per_step * 100
            lines.append(
                f"{r.variant:26} {r.timesteps:>2} {r.s_per_step:>9.4f} {spread:>6.0f}% {r.images_per_s:>9.1f} "
                f"{r.imloss_over_this:>11.2f} {_ratio_range(r):>11} {_fmt(r.peak_mb, '9.0f')} {_fmt(r.step_mb, '8.0f')} {r.warmup_s:>9.1f} "
                f"{'once' if r.static_encoder else 'T*B':>5}" + (f"  {r.mfu:.1%}" if r.mfu is not None else "")
            )
    if result.flops_per_image_step is not None:
        line = f"model FLOPs: {result.flops_per_image_step / 1e9:.4g} GFLOP per image per time step (training step of relu, FlopCounterMode)"
        if o.device == "cuda":
            line += f"; MFU against {o.peak_tflops:g} TFLOP/s"
        lines.append(line)
    lines += _summary(result)
    for e in result.epochs:
        lines.append(
            f"epoch {e.epoch}: {e.train_images:,} + {e.test_images:,} test images in {e.epoch_s:.2f} s "
            f"(train {e.train_s:.2f} s), {e.images_per_s:,.0f} images/s end to end; LIF {e.lif_kernels}, "
            f"data {'on the device' if e.device_resident else 'host loaders'}, CUDA graphs {'on' if e.cuda_graphs else 'off'}"
        )
    lines += [f"note: {n}" for n in result.notes]
    if not result.gate_passed:
        lines.append("CORRECTNESS GATE FAILED: no timing was done")
    return "\n".join(lines)


def _ratio_range(r: VariantResult) -> str:
    return f"{r.ratio_low:.2f}-{r.ratio_high:.2f}"


def _summary(result: BenchResult) -> list[str]:
    o = result.options
    ref_name = reference_row(o)
    out = []
    for T in o.timesteps:
        rows = {r.variant: r for r in result.rows if r.timesteps == T}
        if ref_name not in rows:
            continue
        ref = rows[ref_name]
        parts = []
        # every backend and layout of SpikingJelly's LIF; memopt is compared in the memory line
        sj = [r for n, r in rows.items() if split_row_name(n, o)[0].partition("[")[0] == "spikingjelly"]
        if sj:
            best = min(sj, key=lambda r: r.s_per_step)
            parts.append(
                f"{best.imloss_over_this:.2f}x (repeats {_ratio_range(best)}) the time of {best.variant} (fastest SJ; "
                f"images/s {ref.images_per_s / best.images_per_s:.2f}x)"
            )
            if best.step_mb and ref.step_mb:
                parts.append(f"{ref.step_mb / best.step_mb:.2f}x its step memory")
        for floor, kind in (("relu", "floor"), ("relu-tb", "floor"), ("conv-only", "bound")):
            floors = [r for n, r in rows.items() if split_row_name(n, o)[0] == floor]
            if floors:  # the floor is the fastest layout of it
                best = min(floors, key=lambda r: r.s_per_step)
                parts.append(
                    f"{best.imloss_over_this:.2f}x (repeats {_ratio_range(best)}) the time of the {best.variant} {kind}"
                )
        if parts:
            out.append(f"summary T={T}: {ref_name} takes " + ", ".join(parts))
        out += _memory_summary(o, T, rows)
    return out + _growth_summary(result)


def _memory_summary(o: BenchOptions, T: int, rows: dict[str, VariantResult]) -> list[str]:
    """imloss in each further memory mode against the first, and against SpikingJelly's memopt."""
    ref_name = reference_row(o)
    ref, memopt = rows[ref_name], rows.get("spikingjelly-memopt")
    out = []
    for mode in o.memory_modes[1:]:
        r = rows.get(row_name(memory_variant("imloss", mode), o.memory_formats[0], o))
        if r is None:
            continue
        parts = [
            f"{1 / r.imloss_over_this:.2f}x (repeats {1 / r.ratio_high:.2f}-{1 / r.ratio_low:.2f}) the step time of {ref_name}"
        ]
        if r.step_mb and ref.step_mb:
            parts.append(f"{r.step_mb / ref.step_mb:.2f}x its step memory")
        if memopt is not None:
            parts.append(f"{r.s_per_step / memopt.s_per_step:.2f}x the step time of spikingjelly-memopt")
            if r.step_mb and memopt.step_mb:
                parts.append(f"{r.step_mb / memopt.step_mb:.2f}x its step memory")
        out.append(f"summary T={T}: {r.variant} takes " + ", ".join(parts))
    return out


def _growth_summary(result: BenchResult) -> list[str]:
    """Step memory added per time step, from the first T to the last, for every row that measured it."""
    ts = result.options.timesteps
    if len(ts) < 2 or ts[-1] == ts[0]:
        return []
    first = {r.variant: r.step_mb for r in result.rows if r.timesteps == ts[0] and r.step_mb is not None}
    last = {r.variant: r.step_mb for r in result.rows if r.timesteps == ts[-1] and r.step_mb is not None}
    growth = [f"{name} {(last[name] - mb) / (ts[-1] - ts[0]):.1f}" for name, mb in first.items() if name in last]
    if not growth:
        return []
    return [f"step memory per time step, T={ts[0]} to {ts[-1]} (MB): " + ", ".join(growth)]


def to_json(result: BenchResult) -> str:
    """The result as JSON (the same fields as the dataclasses, plus gate_passed)."""
    data = dataclasses.asdict(result)
    data["gate_passed"] = result.gate_passed
    return json.dumps(data, indent=2)
