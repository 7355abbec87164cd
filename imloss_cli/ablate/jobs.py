"""Workers in parallel processes on one machine: ``imloss ablate --jobs N`` and ``imloss tune --jobs N``.

Each job is one more worker of the group, ``imloss ablate --group GROUP --no-wait`` (or ``imloss tune
--group STUDY ... --no-wait``): it claims trials through the registry exactly like a worker started
by hand on another machine, so parallel
trials are sequential ones run elsewhere. GPUs are handed out round-robin through
CUDA_VISIBLE_DEVICES; on CPU the cores are split between the processes (unless OMP_NUM_THREADS is
set), which changes floating-point summation order but not the method.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from imloss_cli.files import open_to_append


def _environment(slot: int, jobs: int, registry_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **registry_env}
    gpus = torch.cuda.device_count()
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def run_workers(
    command: str,
    group_id: str,
    jobs: int,
    *,
    registry_env: dict[str, str],
    options: list[str],
    log_dir: Path,
    poll_s: float,
    on_poll: Callable[[], None],
) -> list[int]:
    """Start ``jobs`` worker processes on the group and wait for them.

    Args:
        command: the workers' imloss command, "ablate" or "tune".
        group_id: the group every worker joins.
        jobs: processes at once.
        registry_env: what names the group's registry in a worker's environment (``Registry.child_environment``):
            its URL may hold a password, so it is never put on the worker's command line.
        options: further options of each worker (``--heartbeat``, ``--fail-fast``; a study's ``--trials``, ``--seed``).
        log_dir: worker k writes its output to ``log_dir/worker-k.log``.
        poll_s: seconds between calls of ``on_poll``.
        on_poll: called while the workers run (to report finished trials).

    Returns:
        The workers' exit codes.

    Raises:
        KeyboardInterrupt: after every worker was sent SIGTERM.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "imloss_cli", command, "--group", group_id, "--no-wait"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for slot in range(jobs):
            with open_to_append(log_dir / f"worker-{slot}.log") as log:
                procs.append(
                    subprocess.Popen(
                        [*argv, *options],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=_environment(slot, jobs, registry_env),
                    )
                )
        while any(p.poll() is None for p in procs):
            time.sleep(poll_s)
            on_poll()
    except KeyboardInterrupt:
        _terminate(procs)
        raise
    on_poll()
    return [p.wait() for p in procs]


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
