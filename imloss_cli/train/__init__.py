"""Training: the loop of Algorithm 1 and a run's life from recipe to registry.

Modules, in the order a run passes through them:
    lifecycle    :func:`train_run`, :func:`resume_run`, :func:`train_rank`: queue, claim, heartbeat,
                 fit, finish (QUEUED -> RUNNING -> FINISHED | FAILED | KILLED); :class:`ClaimedRun`.
    launch       ``--nproc N``: hold a run while torchrun's processes train it.
    sink         the seam between the loop and where results go: :class:`RunSink` (``ClaimedRun``
                 or :class:`LocalRun`), :class:`EpochRecord`, the front end's :class:`Callbacks`.
    loop         :class:`Trainer`: data, model, optimizer; each epoch sets K(i) of the ESG, trains on
                 CE + lambda * IM-Loss (``objective.loss_step``), evaluates (``scoring``), stores
                 its record and promotes its checkpoint through the sink.
    objective    Algorithm 1's loss and K(i); placement: device, precision, LIF kernels; optim;
                 graphs (the step as a CUDA graph).
    checkpoint   atomic checkpoint files, per-attempt files promoted under the fence, RNG state.
    distributed  torchrun's environment, the process group, the collectives the loop needs.
    environment  code version, git state and the machine, recorded with every run.
    reproduce    ``imloss reproduce``: train a recorded run again and compare every number.

Importing this package imports torch; the CLI imports it only for commands that train.
"""
