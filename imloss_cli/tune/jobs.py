"""More workers of a study on this machine: ``imloss tune --jobs N``.

Each job is ``imloss tune --group GROUP --trials N --seed S --no-wait``: it shares the study
through the registry exactly like a worker started by hand on another machine. The registry's URL
(with its password) reaches the workers through ``IMLOSS_REGISTRY`` in their environment, never on
their command line, where ``ps`` and the runs' recorded argv would show it. As for ``ablate --jobs``,
GPUs are handed out round-robin and the CPU cores split between the processes.
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

REGISTRY_ENV = "IMLOSS_REGISTRY"  # the --registry option's environment variable


def worker_environment(slot: int, jobs: int, registry_url: str) -> dict[str, str]:
    """The environment of worker ``slot`` of ``jobs``: the registry, its GPU, its share of the cores."""
    env = dict(os.environ, **{REGISTRY_ENV: registry_url})
    gpus = torch.cuda.device_count()
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def run_workers(
    group_id: str,
    jobs: int,
    *,
    trials: int,
    seed: int,
    registry_url: str,
    options: list[str],
    log_dir: Path,
    poll_s: float,
    on_poll: Callable[[], None],
) -> list[int]:
    """Start ``jobs`` workers of the study (with the study's sampler ``seed``) and wait for them.

    Args:
        options: further ``imloss tune`` options of each worker (``--heartbeat``).
        log_dir: worker k writes its output to ``log_dir/worker-k.log``.
        on_poll: called every ``poll_s`` seconds while they run (to report finished trials).

    Returns:
        The workers' exit codes.

    Raises:
        KeyboardInterrupt: after every worker was sent SIGTERM.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "imloss_cli", "tune", "--group", group_id, "--trials", str(trials), "--no-wait"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for slot in range(jobs):
            with open(log_dir / f"worker-{slot}.log", "ab") as log:
                argv = [*command, "--seed", str(seed), *options]
                env = worker_environment(slot, jobs, registry_url)
                procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))
        while any(p.poll() is None for p in procs):
            time.sleep(poll_s)
            on_poll()
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    on_poll()
    return [p.wait() for p in procs]
