"""Results that leave the registry: a trained network as NIR, runs into MLflow and TensorBoard.

Modules (imported where they are used: the package itself loads no torch):
    problems     what NIR cannot express (``export_problems``), the package's ``ExportError``.
    nir_graph    an imloss network as a NIR graph (each LIF with its decay, threshold and reset).
    nir_run      a NIR file run back in torch (nirtorch's executor with imloss's LIF), for the check.
    to_nir       ``imloss export RUN --nir FILE``: the run's checkpoint, written and optionally checked.
    tracking     ``imloss export --mlflow URI`` and ``--tensorboard DIR``.

nir, nirtorch, mlflow and tensorboard are optional (``pip install -e ".[export,mlflow,tensorboard]"``):
a missing one is named with its extra when its export is asked for.
"""

from imloss_cli.export.problems import ExportError, export_problems

__all__ = ["ExportError", "export_problems"]
