"""Time `imloss report` end to end on an ablation-sized registry.

Example:
    python benchmarks/report_speed.py --path /tmp/report_speed.db            # build, then time
    python benchmarks/report_speed.py --path /tmp/report_speed.db --reuse    # time only

The registry looks like a real ablation: one group of 50 configurations (loss.im_weight x 10
surrogate settings) x 20 seeds = 1,000 FINISHED runs with real recipes and config hashes, each
with 100 epochs of the 12 metrics the engine logs and 5 statistics of 20 spiking layers
(11.2 million rows). Runs and the group go in through :class:`Registry`; the statistic rows
through the DBAPI (``executemany`` on SQLite, ``COPY`` on PostgreSQL) in a few large
transactions, as in build_big_registry.py.

Then it times, median of --repeats wall-clock runs each:
    * the command as a user runs it, in a fresh interpreter:
      ``python -m imloss_cli report --registry URL --format markdown``;
    * ``build_report`` + ``render`` in this process (the registry already open);
    * importing ``imloss_cli.cli`` in a fresh interpreter (the CLI's fixed start-up cost).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from build_big_registry import layer_names  # this script's folder is on sys.path

from imloss_cli.recipe import Recipe, config_hash, load_recipe, run_fingerprint
from imloss_cli.registry import Claim, NewRun, Registry
from imloss_cli.registry.schema import EpochMetric, LayerStat
from imloss_cli.report import build_report, render

IM_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
SURROGATES: tuple[dict[str, Any], ...] = (
    *(
        {"surrogate.schedule": "esg", "surrogate.k_min": lo, "surrogate.k_max": hi}
        for lo, hi in ((1.0, 5.0), (1.0, 10.0), (1.0, 20.0), (2.0, 10.0), (0.5, 10.0))
    ),
    *({"surrogate.schedule": "fixed", "surrogate.k_fixed": k} for k in (1.0, 2.0, 3.0, 5.0, 10.0)),
)
METRICS = (
    "ce",
    "epoch_seconds",
    "im",
    "k",
    "loss",
    "lr",
    "mean_entropy",
    "mean_firing_rate",
    "test_acc",
    "test_loss",
    "train_acc",
    "train_seconds",
)  # sorted: primary-key order
STATS = ("entropy", "firing_rate", "membrane_mean", "membrane_std", "rate_entropy")  # sorted
CODE_VERSION = "0.1.0"


def base_recipe(epochs: int) -> Recipe:
    return load_recipe(None).with_overrides(
        {
            "name": "cifar10-resnet19",
            "model.arch": "resnet19",
            "data.dataset": "cifar10",
            "data.augment": "crop_flip",
            "data.batch_size": 128,
            "train.epochs": epochs,
        }
    )


def trials(base: Recipe, seeds: int) -> list[tuple[int, Recipe]]:
    """(configuration number, recipe) for every configuration x seed, in ablation order."""
    out = []
    number = 0
    for weight in IM_WEIGHTS:
        for surrogate in SURROGATES:
            for seed in range(seeds):
                out.append((number, base.with_overrides({"loss.im_weight": weight, **surrogate, "train.seed": seed})))
            number += 1
    return out


def k_at(recipe: Recipe, epoch: int) -> float:
    s = recipe.surrogate
    if s.schedule == "fixed":
        return s.k_fixed
    return s.k_min + (s.k_max - s.k_min) * epoch / max(recipe.train.epochs - 1, 1)


def epoch_rows(
    run_id: str, recipe: Recipe, number: int, layers: list[str], rng: random.Random
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """One run's epoch_metrics and layer_stats rows, in primary-key order."""
    epochs = recipe.train.epochs
    final = 0.86 + 0.004 * (number % 10) + 0.01 * math.log1p(recipe.loss.im_weight)
    metric_rows: list[tuple[Any, ...]] = []
    stat_rows: list[tuple[Any, ...]] = []
    for epoch in range(epochs):
        progress = 1 - math.exp(-(epoch + 1) / (0.15 * epochs))
        entropies = [
            min(1.0, max(0.0, 0.35 + 0.1 * recipe.loss.im_weight**0.5 - 0.01 * i + 0.2 * progress + rng.gauss(0, 0.02)))
            for i in range(len(layers))
        ]
        rates = [0.1 + 0.05 * rng.random() for _ in layers]
        acc = final * progress + rng.gauss(0, 0.006)
        train_seconds = 41.0 + rng.random()
        values = {
            "ce": 2.3 * (1 - 0.85 * progress),
            "epoch_seconds": train_seconds + 6.2,
            "im": 0.05 * (1 - progress) + 0.001 * rng.random(),
            "k": k_at(recipe, epoch),
            "loss": 2.3 * (1 - 0.85 * progress) + 0.01,
            "lr": 0.05 * (1 + math.cos(math.pi * epoch / epochs)),
            "mean_entropy": sum(entropies) / len(entropies),
            "mean_firing_rate": sum(rates) / len(rates),
            "test_acc": acc,
            "test_loss": 2.3 * (1 - 0.8 * progress) + rng.gauss(0, 0.02),
            "train_acc": min(1.0, acc + 0.05),
            "train_seconds": train_seconds,
        }
        metric_rows.extend((run_id, epoch, name, values[name], 1) for name in METRICS)  # attempt 1
        for index, layer in enumerate(layers):
            stats = {
                "entropy": entropies[index],
                "firing_rate": rates[index],
                "membrane_mean": rng.gauss(0.2, 0.05),
                "membrane_std": 0.3 * rng.random(),
                "rate_entropy": rng.random(),
            }
            stat_rows.extend((run_id, epoch, index, stat, layer, stats[stat], 1) for stat in STATS)
    return metric_rows, stat_rows


def build(url: str, *, configs_seeds: int, epochs: int, layers: int, seed: int) -> int:
    """Fill the empty registry at ``url``; return the number of runs."""
    rng = random.Random(seed)
    base = base_recipe(epochs)
    names = layer_names(layers)
    plan = trials(base, configs_seeds)
    axes = {
        "loss.im_weight": list(IM_WEIGHTS),
        "surrogate": [dict(s) for s in SURROGATES],
        "train.seed": list(range(configs_seeds)),
    }
    with Registry(url) as registry:
        group = registry.claim_group(
            "report-speed",
            "cifar10-resnet19: im_weight x surrogate x seed",
            {"config_hash": config_hash(base), "recipe": base.model_dump(mode="json")},
            axes,
            ["imloss", "ablate", "recipes/cifar10_resnet19.toml", "--jobs", "4"],
        )
        runs = []
        for number, recipe in plan:
            seed_value = recipe.train.seed or 0
            new = NewRun(
                name=recipe.name, recipe=recipe.model_dump(mode="json"), config_hash=config_hash(recipe),
                fingerprint=run_fingerprint(recipe, seed_value, CODE_VERSION), seed=seed_value,
                code_version=CODE_VERSION, kind="ablate", argv=["imloss", "ablate"],
            )  # fmt: skip
            run_id = registry.queue_run(new, group_id=group)
            claim = Claim(environment={"python": sys.version.split()[0]},
                          git_commit="0123456789abcdef0123456789abcdef01234567", git_dirty=False)  # fmt: skip
            registry.finish_run(run_id, "FINISHED", attempt=registry.claim_run(run_id, claim))
            runs.append((run_id, number, recipe))
    runs.sort(key=lambda item: item[0])  # primary-key order: the b-tree inserts are appends

    def rows() -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        for run_id, number, recipe in runs:
            yield epoch_rows(run_id, recipe, number, names, rng)

    _bulk_insert(url, rows())
    return len(runs)


def _bulk_insert(url: str, rows: Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]) -> None:
    engine = create_engine(url)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            metric_copy = "COPY epoch_metrics (run_id, epoch, name, value, attempt) FROM STDIN"
            layer_copy = "COPY layer_stats (run_id, epoch, layer_index, stat, layer, value, attempt) FROM STDIN"
            for count, (metric_rows, stat_rows) in enumerate(rows, start=1):
                for sql, batch in ((metric_copy, metric_rows), (layer_copy, stat_rows)):
                    with cursor.copy(sql) as copy:
                        for row in batch:
                            copy.write_row(row)
                if count % 50 == 0:
                    raw.commit()
        else:
            metric_sql = str(insert(EpochMetric).compile(dialect=engine.dialect))
            layer_sql = str(insert(LayerStat).compile(dialect=engine.dialect))
            for count, (metric_rows, stat_rows) in enumerate(rows, start=1):
                cursor.executemany(metric_sql, metric_rows)  # rows in table column order
                cursor.executemany(layer_sql, stat_rows)
                if count % 50 == 0:
                    raw.commit()
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


def median_seconds(action: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def run_cli(url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imloss_cli", "report", "--registry", url, "--format", "markdown"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"imloss report failed ({done.returncode}):\n{done.stderr}")


def cli_import_seconds() -> tuple[float, bool]:
    """Seconds to import imloss_cli.cli in a fresh interpreter, and whether torch came along."""
    code = (
        "import sys, time; t = time.perf_counter(); import imloss_cli.cli; "
        "print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    return float(out[0]), out[1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--path",
        type=Path,
        default=Path("/tmp/report_speed.db"),
        help="SQLite file of the registry (replaced unless --reuse)",
    )
    parser.add_argument("--url", help="registry URL instead of --path, e.g. an empty postgresql+psycopg://user@host/db")
    parser.add_argument("--reuse", action="store_true", help="time the existing registry")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per configuration (50)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    url = args.url or f"sqlite:///{args.path.resolve()}"

    if not args.reuse:
        if args.url is None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{args.path}{suffix}").unlink(missing_ok=True)
        start = time.perf_counter()
        runs = build(url, configs_seeds=args.seeds, epochs=args.epochs, layers=args.layers, seed=args.seed)
        size = f", {args.path.stat().st_size / 2**20:.0f} MiB" if args.url is None else ""
        print(f"build: {runs} runs in {time.perf_counter() - start:.1f} s{size}")

    import_s, with_torch = cli_import_seconds()
    cli_s, cli_all = median_seconds(lambda: run_cli(url), args.repeats)
    with Registry(url) as registry:
        report = build_report(registry)
        rows = len(report.table)
        build_s, build_all = median_seconds(lambda: render(build_report(registry), "markdown"), args.repeats)
    print(f"report: {report.title}, {rows} rows, {len(report.runs)} runs")
    print(
        f"import imloss_cli.cli (fresh interpreter): {import_s:.2f} s, torch imported: {'yes' if with_torch else 'no'}"
    )
    print(
        f"imloss report --format markdown (subprocess): median {cli_s:.2f} s ({', '.join(f'{t:.2f}' for t in cli_all)})"
    )
    print(
        f"build_report + render (in process):          median {build_s:.2f} s "
        f"({', '.join(f'{t:.2f}' for t in build_all)})"
    )


if __name__ == "__main__":
    main()
