"""Queued runs trained in parallel processes on one machine: ``imloss ablate --jobs N``.

Each queued run is trained by its own ``imloss resume RUN`` process (a QUEUED run resumes from
nothing), so parallel trials are exactly sequential ones run elsewhere. GPUs are handed out
round-robin through CUDA_VISIBLE_DEVICES; on CPU the cores are split between the processes
(unless OMP_NUM_THREADS is set), which changes floating-point summation order but not the method.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Job:
    run_id: str
    log: Path


def _environment(slot: int, jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    gpus = torch.cuda.device_count()
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def run_jobs(
    jobs: Sequence[Job],
    parallel: int,
    registry_url: str,
    on_done: Callable[[Job, int], bool],
) -> None:
    """Run ``imloss resume`` for every job, at most ``parallel`` at once.

    Args:
        jobs: queued runs, in the order to start them; each process's output goes to its log.
        parallel: processes at once.
        registry_url: the registry the runs live in.
        on_done: called with (job, exit code) as each process ends; returning False stops
            starting new ones (--fail-fast) and terminates the running ones.

    Raises:
        KeyboardInterrupt: after every running process was sent SIGTERM (each records KILLED).
    """
    pending = list(jobs)
    running: dict[subprocess.Popen[bytes], Job] = {}
    started = 0
    keep_going = True
    try:
        while running or (pending and keep_going):
            while keep_going and pending and len(running) < parallel:
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "ab") as log:
                    command = [sys.executable, "-m", "imloss_cli", "resume", job.run_id, "--registry", registry_url]
                    proc = subprocess.Popen(
                        command, stdout=log, stderr=subprocess.STDOUT, env=_environment(started, parallel)
                    )
                running[proc] = job
                started += 1
            time.sleep(0.1)
            for proc in [p for p in running if p.poll() is not None]:
                job = running.pop(proc)
                if not on_done(job, proc.returncode) and keep_going:
                    keep_going = False
                    _terminate(running)
    except KeyboardInterrupt:
        _terminate(running)
        raise


def _terminate(running: dict[subprocess.Popen[bytes], Job]) -> None:
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
