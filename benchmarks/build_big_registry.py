"""Build a large imloss registry and time the report queries against it.

Example:
    python benchmarks/build_big_registry.py --runs 1000 --epochs 100 --layers 20 --path /tmp/big.db

Runs and the schema are created through :class:`Registry`; the millions of statistic rows go in
through the DBAPI ``executemany`` of the SQL that SQLAlchemy compiles for the registry tables,
in a few large transactions, because going through ``log_epoch`` (one transaction per epoch)
would take far longer than the queries being measured.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imloss_cli.registry import NewRun, Registry
from imloss_cli.registry.schema import EpochMetric, LayerStat

STATS = ("firing_rate", "entropy", "rate_entropy", "membrane_mean", "membrane_std")
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "im_loss", "ce_loss", "lr", "epoch_seconds")
RUNS_PER_TRANSACTION = 50


def layer_names(count: int) -> list[str]:
    """ResNet-like spiking layer names: stem.lif, layer1.0.lif1, layer1.0.lif2, ..."""
    names = ["stem.lif"]
    block = 0
    while len(names) < count:
        stage, index = divmod(block, 2)
        names += [f"layer{stage + 1}.{index}.lif1", f"layer{stage + 1}.{index}.lif2"]
        block += 1
    return names[:count]


def metric_rows(run_id: str, epochs: int, rng: random.Random) -> Iterator[tuple[object, ...]]:
    for epoch in range(epochs):
        progress = (epoch + 1) / epochs
        values = {
            "train_loss": 2.3 * (1 - 0.8 * progress) + rng.gauss(0, 0.02),
            "train_acc": 0.1 + 0.85 * progress + rng.gauss(0, 0.01),
            "test_loss": 2.3 * (1 - 0.7 * progress) + rng.gauss(0, 0.03),
            "test_acc": 0.1 + 0.8 * progress + rng.gauss(0, 0.01),
            "im_loss": 0.5 * (1 - progress) + rng.random() * 0.01,
            "ce_loss": 2.0 * (1 - 0.8 * progress),
            "lr": 0.1 * (1 - progress),
            "epoch_seconds": 30 + rng.random(),
        }
        for name in sorted(METRICS):  # primary-key order makes the b-tree inserts appends
            yield run_id, epoch, name, values[name], 1  # attempt 1


def layer_rows(run_id: str, epochs: int, layers: list[str], rng: random.Random) -> Iterator[tuple[object, ...]]:
    ordered_stats = sorted(STATS)
    for epoch in range(epochs):
        for index, layer in enumerate(layers):
            rate = min(1.0, max(0.0, 0.15 + 0.1 * rng.random()))
            values = {
                "firing_rate": rate,
                "entropy": rng.random(),
                "rate_entropy": rng.random(),
                "membrane_mean": rng.gauss(0.2, 0.1),
                "membrane_std": rng.random() * 0.5,
            }
            for stat in ordered_stats:
                yield run_id, epoch, index, stat, layer, values[stat], 1


def build(path: Path, runs: int, epochs: int, layers: int, seed: int) -> list[str]:
    """Create the registry at ``path`` (replacing any file there) and return its run ids."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    rng = random.Random(seed)
    names = layer_names(layers)
    with Registry(str(path)) as registry:
        group = registry.claim_group("bench", "bench", {"model": "resnet19"}, {"loss.im_weight": [0, 1, 2]}, ["bench"])
        new = [
            NewRun(name=f"bench-{i}", recipe={"seed": i}, config_hash=f"h{i}", fingerprint=f"f{i}", seed=i,
                   code_version="bench", kind="ablate")
            for i in range(runs)
        ]  # fmt: skip
        run_ids = registry.queue_runs(group, new)
        for run_id in run_ids:
            registry.finish_run(run_id, "FINISHED", attempt=registry.claim_run(run_id))
    engine = create_engine(f"sqlite:///{path}")
    metric_sql = str(insert(EpochMetric).compile(dialect=engine.dialect))
    layer_sql = str(insert(LayerStat).compile(dialect=engine.dialect))
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, runs, RUNS_PER_TRANSACTION):
            for run_id in run_ids[start : start + RUNS_PER_TRANSACTION]:
                cursor.executemany(metric_sql, list(metric_rows(run_id, epochs, rng)))
                cursor.executemany(layer_sql, list(layer_rows(run_id, epochs, names, rng)))
            raw.commit()
    finally:
        raw.close()
        engine.dispose()
    return run_ids


def median_time(action: Callable[[], pd.DataFrame], repeats: int = 3) -> tuple[float, pd.DataFrame]:
    times: list[float] = []
    result = pd.DataFrame()
    for _ in range(repeats):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--path", type=Path, default=Path("/tmp/big.db"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="time the queries on an existing registry at --path")
    args = parser.parse_args()

    if args.reuse:
        with Registry(str(args.path)) as registry:
            run_ids = [run.id for run in registry.list_runs()]
    else:
        start = time.perf_counter()
        run_ids = build(args.path, args.runs, args.epochs, args.layers, args.seed)
        print(f"build: {time.perf_counter() - start:.1f} s, {args.path.stat().st_size / 2**20:.0f} MiB")

    with Registry(str(args.path)) as registry:
        last_s, last = median_time(lambda: registry.layer_stats(run_ids, last_epoch_only=True))
        metrics_s, metrics = median_time(lambda: registry.epoch_metrics(run_ids))
    print(f"layer_stats(last_epoch_only=True): {last_s:.3f} s ({len(last):,} rows)")
    print(f"epoch_metrics:                     {metrics_s:.3f} s ({len(metrics):,} rows)")
    print(f"together:                          {last_s + metrics_s:.3f} s")


if __name__ == "__main__":
    main()
