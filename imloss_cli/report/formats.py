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
from .escape import csv_cells, latex_comment, markdown_cell, markdown_text, one_line
from .selection import CONFIG_COLUMN
from .study_views import display_tables, machine_trials, notes
from .study_views import payload as study_payload
from .text import _count_text, _delta_text, _header, _is_accuracy, _number_text, _p_text, _scale, _value_text


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
        return csv_cells(table).to_csv(index=False)
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
            "baseline": None if report.baseline is None else report.baseline.label,
            "notes": list(report.notes),
            "warnings": list(report.warnings),
        }
        if report.study is not None:
            payload["study"] = study_payload(report.study)
        return json.dumps(payload, indent=2, ensure_ascii=False)
    table, layers = _display_table(report), _display_layers(report.layer_table)
    efficiency = efficiency_differences(report)
    caption = _layer_caption(report)
    sops = [] if report.sops_table.empty else [(_sops_caption(report), _display_layers(report.sops_table, _count_text))]
    if fmt == "markdown":
        lines = [f"### {markdown_text(report.title)}", "", markdown_text(_subtitle(report))]
        lines += [f"> warning: {markdown_text(w)}" for w in report.warnings]
        lines += ["", _markdown(table)]
        for note in report.notes:  # a paragraph each
            lines += ["", markdown_text(note)]
        if efficiency is not None:
            lines += ["", EFFICIENCY_CAPTION, "", _markdown(efficiency)]
        lines += ["", caption, "", _markdown(layers)]
        for text, frame in sops:
            lines += ["", text, "", _markdown(frame)]
        for text, frame in _study_tables(report):
            lines += ["", text, "", _markdown(frame)]
        lines += (
            ["", *(f"> note: {markdown_text(n)}" for n in _study_notes(report))] if report.study is not None else []
        )
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        lines = [f"% {latex_comment(report.title)}", f"% {latex_comment(_subtitle(report))}"]
        lines += [f"% warning: {latex_comment(w)}" for w in report.warnings]
        best = report.best_row
        bold = None if best is None else (best, len(_varying(report)))  # the metric's column
        lines += [_latex(table, bold), *[f"% {latex_comment(n)}" for n in report.notes]]
        if efficiency is not None:
            lines += ["", f"% {EFFICIENCY_CAPTION}", _latex(efficiency)]
        lines += ["", f"% {caption}", _latex(layers)]
        for text, frame in sops:
            lines += ["", f"% {text}", _latex(frame)]
        for text, frame in _study_tables(report):
            lines += ["", f"% {text}", _latex(frame)]
        lines += [f"% note: {latex_comment(n)}" for n in _study_notes(report)]
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
        f"{report.metric}{f' in {unit}' if unit else ''} at each run's {which}: mean over seeds [95% interval, "
        f"Student's t] (n seeds); Δ: the difference to the baseline ({_baseline_text(report)}) with its 95% interval; "
        f"p adjusted for the comparisons (Holm); mean_entropy in bits at the same epoch; "
        f"selection: {report.selection_rule}"
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


EFFICIENCY_CAPTION = "Differences to the baseline in operations and energy per image (95% interval, p adjusted by Holm)"


def _baseline_text(report: Report) -> str:
    if report.baseline is None:
        return "none: one configuration"
    return f"{report.baseline.label}, {report.baseline.reason}"


def _machine_table(report: Report) -> pd.DataFrame:
    """The numbers of the table (CSV, JSON). An accuracy is in percent, as in every other format and as
    the paper's column, and its columns say so (``test_acc_mean_pct``, ``delta_test_acc_pp``); counts and
    energy as stored. Per compared column c: mean, std, ``c_ci_low``/``c_ci_high``, the per-seed
    ``c_values`` (with ``seeds``), and against the baseline ``delta_c`` (with its interval), ``p_c``,
    ``p_adj_c`` (Holm), ``test_c`` and ``significant_c``."""
    m = report.metric
    stats = ("mean", "std", "ci_low", "ci_high", "values")
    compared = [f"{c}_{s}" for c in report.compared for s in stats]
    tests = [f"{k}{c}{s}" for c in report.compared
             for k, s in (("delta_", ""), ("delta_", "_ci_low"), ("delta_", "_ci_high"), ("p_", ""), ("p_adj_", ""),
                          ("test_", ""), ("significant_", ""))]  # fmt: skip
    paper = ["paper_row", "paper_top1", "delta_pp", "paper_in_ci", "paper_deviation"]
    first = [f"{m}_mean", f"{m}_std", "n", ENTROPY_METRIC]  # the columns of imloss before intervals came
    first += ["scored_images", "scored_images_total"]  # how many images the metric is of (a capped evaluation)
    rest = [c for c in compared if c not in first]
    columns = [*_varying(report), *first, *rest, "seeds", *tests, *paper, "config_hash"]
    table = report.table[[c for c in columns if c in report.table.columns]].copy()
    if _is_accuracy(m):  # percent, and the names say so
        renamed = {}
        for column in [f"{m}_{s}" for s in stats] + [f"delta_{m}", f"delta_{m}_ci_low", f"delta_{m}_ci_high"]:
            table[column] = table[column].map(lambda v: [x * 100.0 for x in v] if isinstance(v, list) else v * 100.0)
            renamed[column] = f"{column}_pp" if column.startswith("delta_") else f"{column}_pct"
        table = table.rename(columns=renamed)
    return table


def _display_table(report: Report) -> pd.DataFrame:
    """The comparison as text cells: mean [95% interval], n, the difference to the baseline, the test, the
    adjusted p and a plain-words verdict, then entropy, operations, energy and the paper's figure."""
    varying, m, t = _varying(report), report.metric, report.table
    shown = pd.DataFrame({c: t[c].map(_value_text) for c in varying})
    shown[_header(m)] = t[m]
    shown["n"] = t["n"].astype(str)
    if report.baseline is not None:
        unit = "pp" if _is_accuracy(m) else _scale(m)[2]
        shown[f"Δ {m}" + (f" ({unit})" if unit else "")] = delta_cells(report, m)
        base = report.baseline.row
        shown["test"] = ["–" if r == base else v for r, v in enumerate(t[f"test_{m}"])]
        shown["p (Holm)"] = t[f"p_adj_{m}"].map(_p_text)
        shown["verdict"] = verdict_cells(report, m)
    if ENTROPY_METRIC in t.columns and m != ENTROPY_METRIC:
        shown[ENTROPY_METRIC] = t[ENTROPY_METRIC].map(_number_text)
    for c in report.efficiency:
        shown[_header(c)] = t[c]
    if "paper_top1" in t.columns:
        shown["paper row"] = t["paper_row"].map(lambda v: "–" if pd.isna(v) else v)
        shown["paper"] = t["paper_top1"].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
        # A configuration that is not the paper's setting (fewer epochs, another field): marked, and
        # named in the report's warnings.
        shown["delta (pp)"] = [
            "–" if pd.isna(d) else f"{d:+.2f}" + (" (not the paper's setting)" if isinstance(dev, str) and dev else "")
            for d, dev in zip(t["delta_pp"], t["paper_deviation"])
        ]
        shown["paper in 95% interval"] = t["paper_in_ci"].map(in_interval_text)
    return shown


def efficiency_differences(report: Report) -> pd.DataFrame | None:
    """Per configuration but the baseline, the differences in operations and energy (None: nothing to show)."""
    if report.baseline is None or not report.efficiency:
        return None
    rows = [r for r in range(len(report.table)) if r != report.baseline.row]
    shown = pd.DataFrame({"config": report.table["config"].iloc[rows].tolist()})
    for c in report.efficiency:
        shown[f"Δ {_header(c)}"] = [delta_cells(report, c)[r] for r in rows]
        shown[f"test ({c})"] = report.table[f"test_{c}"].iloc[rows].tolist()
        shown[f"p (Holm, {c})"] = [_p_text(p) for p in report.table[f"p_adj_{c}"].iloc[rows]]
        shown[f"verdict ({c})"] = [verdict_cells(report, c)[r] for r in rows]
    return shown


def delta_cells(report: Report, c: str) -> list[str]:
    t = report.table
    return [
        "baseline" if report.baseline is not None and r == report.baseline.row else _delta_text(d, lo, hi, c)
        for r, (d, lo, hi) in enumerate(zip(t[f"delta_{c}"], t[f"delta_{c}_ci_low"], t[f"delta_{c}_ci_high"]))
    ]


def verdict_cells(report: Report, c: str) -> list[str]:
    """In plain words: "significant" when the adjusted p is below 0.05, else why it is not."""
    t = report.table
    out = []
    for r, (p, significant) in enumerate(zip(t[f"p_adj_{c}"], t[f"significant_{c}"])):
        if report.baseline is not None and r == report.baseline.row:
            out.append("baseline")
        elif pd.isna(p):
            out.append("no test")
        else:
            out.append("significant" if significant else "not significant")
    return out


def in_interval_text(inside: Any) -> str:
    if inside is None or (isinstance(inside, float) and pd.isna(inside)):
        return "–"
    return "yes" if inside else "no"


def _display_layers(layer_table: pd.DataFrame, text: Callable[[float], str] = _number_text) -> pd.DataFrame:
    shown = layer_table.apply(lambda column: column.map(text))
    return shown.reset_index().rename(columns={"index": "layer"})


def _markdown(frame: pd.DataFrame) -> str:
    left = {"layer", CONFIG_COLUMN}
    cell = markdown_cell
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
    "Δ": r"$\Delta$",
    "–": "--",
}


def _latex_escape(value: Any) -> str:
    """A cell: every character LaTeX would read as a command or a group escaped, on one line."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in one_line(value))


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
