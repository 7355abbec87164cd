"""Studies: search recipe fields for accuracy against energy with Optuna, every trial a registry run.

Modules:
    space    what a study searches and for what (:class:`StudySpec`), checked against the recipe (pure).
    front    a study's numbers from the registry (each trial's best-validation epoch) and its Pareto front.
    storage  Optuna's record beside the registry (a journal file, or a schema of the PostgreSQL database).
    worker   :class:`StudyWorker`: tell, train (through ``train.lifecycle``), ask, wait.
    study    :func:`plan_study` and :func:`run_study`: the study as a group, its workers
             (``--jobs N``: ``ablate.jobs.run_workers``).

``space``, ``front`` and ``storage`` import neither torch nor (until a study is opened) Optuna, so
reports read studies with them; ``worker`` and ``study`` train, and are imported by the command.
"""
