"""Comparison reports: one row per configuration, seeds pooled, from the runs of a registry.

A *configuration* is a ``config_hash``: the resolved recipe without seed, names and placement
(``recipe.NON_SEMANTIC_FIELDS``). For every FINISHED run one epoch is selected ("best": where
the metric is best; "last": the last logged epoch); the table gives, per configuration, the mean
and sample standard deviation over seeds of the metric at that epoch, the number of seeds, and
the mean hidden-layer entropy at the same epoch, and, where the runs counted them, synaptic
operations and energy per image (recomputed with the report's energy constants). The layer tables
break entropy, firing rate and SOPs down by layer, again at each run's selected epoch.

Everything here returns data or strings; printing (and sending warnings to stderr) is the CLI's
job.

Modules:
    build     :class:`Report` and :func:`build_report`: select -> choose epochs -> enrich -> tables.
    selection which runs (group, recipe, all) and their configurations (seeds pooled by config hash).
    epochs    which epoch of each run (best, last, best-val) and what is read there.
    errors    :class:`ReportError`.
    formats   :func:`render`: markdown, CSV, LaTeX (booktabs), JSON, HTML; :func:`render_study`: a study's front.
    study     a study's section (``imloss tune``): trials, Pareto front, importances; ``study_views`` renders it.
    html      the HTML page: one self-contained file, figures embedded, sortable tables.
    plots     :func:`figures` and :func:`write_plots` (matplotlib is loaded only there).
    text      how values and numbers are written.
    listings  what ``imloss runs`` and ``imloss show`` list (:func:`runs_overview`, :func:`run_details`).
Nothing here imports torch.
"""

from .build import FORMATS, Report, build_report, energy_constants
from .epochs import SELECTIONS
from .errors import ReportError
from .formats import render, render_study
from .listings import RunDetails, run_details, runs_overview
from .plots import PLOTS, figures, write_plots

__all__ = [
    "FORMATS",
    "PLOTS",
    "SELECTIONS",
    "Report",
    "ReportError",
    "RunDetails",
    "build_report",
    "energy_constants",
    "figures",
    "render",
    "render_study",
    "run_details",
    "runs_overview",
    "write_plots",
]
