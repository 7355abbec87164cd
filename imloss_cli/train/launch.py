"""``imloss train --nproc N``: one run trained by N processes on this machine, through torchrun.

This process holds the run (claim, heartbeat, end) while torchrun's processes train it; each of
them runs :func:`~imloss_cli.train.lifecycle.train_rank`, and rank 0 writes into the held run with
this claim's attempt token.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from imloss_cli import data as data_mod
from imloss_cli.files import child_path, write_atomically
from imloss_cli.recipe import Recipe, to_toml
from imloss_cli.registry import Registry
from imloss_cli.train.distributed import rank_batch_size
from imloss_cli.train.errors import WorkerFailedError
from imloss_cli.train.lifecycle import HEARTBEAT_S, ClaimedRun, claimed_run, new_run, resolve_seed
from imloss_cli.train.placement import resolve_device


def launch_distributed(
    registry: Registry, recipe: Recipe, nproc: int, *, argv: list[str], heartbeat_s: float = HEARTBEAT_S
) -> str:
    """Hold a new run while torchrun's ``nproc`` processes train it; returns the run id.

    This process records the run, claims it (it beats and ends it), writes the resolved recipe
    beside its checkpoints and starts ``torchrun --standalone --nproc-per-node N -m imloss_cli
    train ... --run-id ID --attempt A``. If any process fails, torchrun stops the others and the
    run ends FAILED.

    Raises:
        WorkerFailedError: torchrun ended with an error (the run is FAILED).
        KeyboardInterrupt: the run was recorded as KILLED after torchrun stopped.
    """
    rank_batch_size(recipe.data.batch_size, nproc)  # before any row or process
    recipe = resolve_seed(recipe)
    # A data problem fails here, before any row or process (and an event cache is built once, not per rank).
    data_mod.build_datasets(recipe.data, timesteps=recipe.model.timesteps)
    run_id = registry.queue_run(new_run(recipe, argv=argv, kind="train"))
    run_dir = child_path(
        Path(recipe.train.output_dir), run_id, "run id"
    )  # checkpoints off or on: recipe.toml goes here
    with claimed_run(
        registry, run_id, how=f"fresh: torchrun, {nproc} processes", heartbeat_s=heartbeat_s,
        device=resolve_device(recipe.train.device), checkpoint_dir=run_dir, argv=argv,
    ) as run:  # fmt: skip
        recipe_file = run_dir / "recipe.toml"
        write_atomically(recipe_file, to_toml(recipe))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "imloss_cli", "train", str(recipe_file), "--run-id", run_id, "--attempt", str(run.attempt),
        ]  # fmt: skip
        # The registry URL (it may hold a password) goes in torchrun's environment, which its processes inherit.
        env = {**os.environ, **registry.child_environment()}
        code = _wait_for(subprocess.Popen(command, env=env), run)
        if code != 0:
            raise WorkerFailedError(f"a training process failed (torchrun exit code {code}); its output is above")
    return run_id


def _wait_for(proc: subprocess.Popen[bytes], run: ClaimedRun) -> int:
    """torchrun's exit code; on an interrupt or a takeover it is stopped first (it stops its workers)."""
    try:
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(timeout=1.0)
            run.check()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
