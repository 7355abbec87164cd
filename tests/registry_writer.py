"""Helper for tests/test_registry.py: one process writing one run to a shared registry.

Usage: python tests/registry_writer.py REGISTRY TAG [EPOCHS] [LAYERS]

REGISTRY is a path or any registry URL (SQLite or PostgreSQL). Prints "ready" once imports are
done, waits for a line on stdin (so a test can release several writers at the same instant),
then opens the registry (creating it if the others have not yet), creates a run named TAG, logs
EPOCHS epochs of LAYERS layers and finishes it. Values are deterministic (see
``expected_value``) so the test can check every row that landed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imloss_cli.registry import NewRun, Registry

STATS = ("firing_rate", "entropy", "rate_entropy", "membrane_mean", "membrane_std")
METRICS = ("train_loss", "test_acc", "im_loss")


def expected_value(tag_number: int, epoch: int, layer: int, item: int) -> float:
    """A distinct, exactly representable value for every (writer, epoch, layer, stat/metric)."""
    return tag_number * 1_000_000 + epoch * 1_000 + layer * 10 + item + 0.25


def main() -> None:
    location, tag = sys.argv[1], sys.argv[2]
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    layers = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    number = int(tag.rsplit("-", 1)[-1])
    print("ready", flush=True)
    sys.stdin.readline()
    registry = Registry(location)
    new = NewRun(name=tag, recipe={"tag": tag}, config_hash=f"hash-{tag}", fingerprint=f"fp-{tag}", seed=number,
                 code_version="test")  # fmt: skip
    run_id = registry.queue_run(new)
    registry.claim_run(run_id)
    for epoch in range(epochs):
        metrics = {name: expected_value(number, epoch, 999, i) for i, name in enumerate(METRICS)}
        stats = [
            (
                layer,
                f"layer{layer}.lif",
                {stat: expected_value(number, epoch, layer, i) for i, stat in enumerate(STATS)},
            )
            for layer in range(layers)
        ]
        registry.log_epoch(run_id, epoch, metrics, stats, attempt=1)
    registry.finish_run(run_id, "FINISHED", attempt=1)
    registry.close()
    print(run_id, flush=True)


if __name__ == "__main__":
    main()
