"""Rendering a report as markdown, CSV, LaTeX, JSON or HTML text."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pandas as pd

from imloss_cli.registry import Registry

from .build import FORMATS, Report
from .epochs import ENTROPY_METRIC, VAL_METRIC
from .errors import ReportError
from .selection import CONFIG_COLUMN
from .study_views import display_tables, machine_trials, notes
from .study_views import payload as study_payload
from .text import _count_text, _header, _is_accuracy, _number_text, _scale, _value_text


def render(report: Report, fmt: str, registry: Registry | None = None) -> str:
    """Render a report as text.

    Args:
        report: from :func:`build_report`.
        fmt: "markdown" (title, "> warning:" lines, the tables), "csv" (the main table, numeric
            columns, no warnings), "latex" (booktabs ``tabular`` environments, the best mean in
            bold, warnings as comments), "json" (title, metric, select, energy constants, rows,
            layers, sops_layers, warnings) or "html" (one self-contained page,
            :func:`.html.html_page`). The per-layer SOPs table comes where the runs counted them.
        registry: the registry the report was built from; the HTML page draws its figures from
            it (without it the page has the tables only).

    Returns:
        The rendered text.

    Raises:
        ReportError: unknown format.
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "csv":  # a study's CSV is its trials, the front marked: what a search is read for
        table = _machine_table(report) if report.study is None else machine_trials(report.study)
        return table.to_csv(index=False)
    if fmt == "json":
        layers = report.layer_table.reset_index()
        payload = {
            "title": report.title,
            "metric": report.metric,
            "select": report.select,
            "energy": report.energy.model_dump(),
            "rows": json.loads(_machine_table(report).to_json(orient="records", double_precision=15)),
            "layers": json.loads(layers.to_json(orient="records", double_precision=15)),
            "sops_layers": json.loads(report.sops_table.reset_index().to_json(orient="records", double_precision=15)),
            "warnings": list(report.warnings),
        }
        if report.study is not None:
            payload["study"] = study_payload(report.study)
        return json.dumps(payload, indent=2, ensure_ascii=False)
    table, layers = _display_table(report), _display_layers(report.layer_table)
    caption = _layer_caption(report)
    sops = [] if report.sops_table.empty else [(_sops_caption(report), _display_layers(report.sops_table, _count_text))]
    if fmt == "markdown":
        lines = [f"### {report.title}", "", _subtitle(report)]
        lines += [f"> warning: {w}" for w in report.warnings]
        lines += ["", _markdown(table), "", caption, "", _markdown(layers)]
        for text, frame in sops:
            lines += ["", text, "", _markdown(frame)]
        for text, frame in _study_tables(report):
            lines += ["", text, "", _markdown(frame)]
        lines += ["", *(f"> note: {n}" for n in _study_notes(report))] if report.study is not None else []
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        lines = [f"% {report.title}", f"% {_subtitle(report)}"]
        lines += [f"% warning: {w}" for w in report.warnings]
        best = report.best_row
        bold = None if best is None else (best, len(_varying(report)))  # the metric's column
        lines += [_latex(table, bold), "", f"% {caption}", _latex(layers)]
        for text, frame in sops:
            lines += ["", f"% {text}", _latex(frame)]
        for text, frame in _study_tables(report):
            lines += ["", f"% {text}", _latex(frame)]
        lines += [f"% note: {n}" for n in _study_notes(report)]
        return "\n".join(lines) + "\n"
    from .html import html_page

    return html_page(report, registry)


def render_study(report: Report) -> str:
    """A study's front and parameter importances as markdown, with its notes and warnings: what
    ``imloss tune`` prints when the study is complete ("" for a report that is no study's)."""
    if report.study is None:
        return ""
    tables = _study_tables(report)[:-1]  # every trial: the command printed each as it ended
    lines = [f"> warning: {w}" for w in report.warnings if "best_trials" in w]
    for text, frame in tables:
        lines += [text, "", _markdown(frame), ""]
    lines += [f"> note: {n}" for n in _study_notes(report)]
    return "\n".join(lines) + "\n"


def _study_tables(report: Report) -> list[tuple[str, pd.DataFrame]]:
    return [] if report.study is None else display_tables(report.study)


def _study_notes(report: Report) -> list[str]:
    return [] if report.study is None else notes(report.study)


def _subtitle(report: Report) -> str:
    which = {"best": "best epoch", "last": "last epoch", "best-val": "best-validation epoch"}[report.select]
    unit = _scale(report.metric)[2]
    text = (
        f"{report.metric}{f' in {unit}' if unit else ''} at each run's {which}: mean ± sample std over seeds (n); "
        f"mean_entropy in bits at the same epoch; selection: {report.selection_rule}"
    )
    if report.efficiency or report.metric in ("sops", "energy_uj"):
        text += f"; synaptic operations (sops) in millions per image; {report.energy_rule}"
    return text


def _layer_caption(report: Report) -> str:
    which = {"best": f"best-{report.metric} epoch", "last": "last epoch", "best-val": f"best-{VAL_METRIC} epoch"}[
        report.select
    ]
    return f"Per-layer entropy (bits) at each run's {which}, mean over seeds"


def _sops_caption(report: Report) -> str:
    which = {"best": f"best-{report.metric} epoch", "last": "last epoch", "best-val": f"best-{VAL_METRIC} epoch"}[
        report.select
    ]
    return f"Per-layer synaptic operations per image (millions) at each run's {which}, mean over seeds"


def _varying(report: Report) -> list[str]:
    columns = list(report.table.columns)
    return columns[: columns.index(report.metric)]


def _machine_table(report: Report) -> pd.DataFrame:
    """The numbers of the table (CSV, JSON). An accuracy is in percent, as in every other format and as
    the paper's column, and its columns say so (``test_acc_mean_pct``); counts and energy as stored."""
    m = report.metric
    counts = [f"{c}_{s}" for c in report.efficiency for s in ("mean", "std")]
    paper = ["paper_row", "paper_top1", "delta_pp", "paper_deviation"]
    columns = [*_varying(report), f"{m}_mean", f"{m}_std", "n", ENTROPY_METRIC, *counts, *paper]
    columns.append("config_hash")
    table = report.table[[c for c in columns if c in report.table.columns]].copy()
    if _is_accuracy(m):
        for stat in ("mean", "std"):
            table[f"{m}_{stat}"] = table[f"{m}_{stat}"] * 100.0
        table = table.rename(columns={f"{m}_mean": f"{m}_mean_pct", f"{m}_std": f"{m}_std_pct"})
    return table


def _display_table(report: Report) -> pd.DataFrame:
    varying, m = _varying(report), report.metric
    shown = pd.DataFrame({c: report.table[c].map(_value_text) for c in varying})
    shown[_header(m)] = report.table[m]
    shown["n"] = report.table["n"].astype(str)
    if ENTROPY_METRIC in report.table.columns and m != ENTROPY_METRIC:
        shown[ENTROPY_METRIC] = report.table[ENTROPY_METRIC].map(_number_text)
    for c in report.efficiency:
        shown[_header(c)] = report.table[c]
    if "paper_top1" in report.table.columns:
        shown["paper row"] = report.table["paper_row"].map(lambda v: "–" if pd.isna(v) else v)
        shown["paper"] = report.table["paper_top1"].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
        # A configuration that is not the paper's setting (fewer epochs, another field): marked, and
        # named in the report's warnings.
        shown["delta (pp)"] = [
            "–" if pd.isna(d) else f"{d:+.2f}" + (" (not the paper's setting)" if isinstance(dev, str) and dev else "")
            for d, dev in zip(report.table["delta_pp"], report.table["paper_deviation"])
        ]
    return shown


def _display_layers(layer_table: pd.DataFrame, text: Callable[[float], str] = _number_text) -> pd.DataFrame:
    shown = layer_table.apply(lambda column: column.map(text))
    return shown.reset_index().rename(columns={"index": "layer"})


def _markdown(frame: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    left = {"layer", CONFIG_COLUMN}
    lines = [
        "| " + " | ".join(cell(c) for c in frame.columns) + " |",
        "|" + "|".join(" :--- " if c in left else " ---: " for c in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
}


def _latex_escape(value: Any) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(value))


def _latex(frame: pd.DataFrame, bold: tuple[int, int] | None = None) -> str:
    """A booktabs table (``\\usepackage{booktabs}``), the cell at ``bold`` (row, column) in bold."""
    spec = "".join("l" if c in ("layer", CONFIG_COLUMN) else "r" for c in frame.columns)
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(c) for c in frame.columns) + r" \\",
        r"\midrule",
    ]
    for r, row in enumerate(frame.itertuples(index=False)):
        cells = [_latex_escape(v) for v in row]
        if bold is not None and r == bold[0]:
            cells[bold[1]] = rf"\textbf{{{cells[bold[1]]}}}"
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)
