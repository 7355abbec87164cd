"""Training: the loop of Algorithm 1 and one run from recipe to registry.

Modules, in the order a run passes through them:
    run          :func:`train_run` / :func:`resume_run`: seed, registry row, status lifecycle
                 (QUEUED -> RUNNING -> FINISHED | FAILED | KILLED), the ``--nproc`` launcher.
    loop         :class:`Trainer`: data, model, optimizer; each epoch sets K(i) of the ESG, trains
                 on CE + lambda * IM-Loss (:func:`loop.loss_step`), evaluates, checkpoints, and
                 yields an :class:`EpochRecord` (plain data for the registry).
    checkpoint   atomic checkpoint files, RNG state, keep-last pruning.
    distributed  torchrun's environment, the process group, the collectives the loop needs.
    environment  code version, git state and the machine, recorded with every run.

Importing this package imports torch; the CLI imports it only for commands that train.
"""
