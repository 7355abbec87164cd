"""Rendering a report as markdown, CSV, LaTeX, JSON or HTML text."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from imloss_cli.registry import Registry

from .build import _CONFIG_COLUMN, _ENTROPY_METRIC, FORMATS, Report, ReportError
from .text import _is_accuracy, _number_text, _value_text


def render(report: Report, fmt: str, registry: Registry | None = None) -> str:
    """Render a report as text.

    Args:
        report: from :func:`build_report`.
        fmt: "markdown" (title, "> warning:" lines, both tables), "csv" (the main table, numeric
            columns, no warnings), "latex" (booktabs ``tabular`` environments, the best mean in
            bold, warnings as comments), "json" (title, metric, select, rows, layers, warnings)
            or "html" (one self-contained page, :func:`.html.html_page`).
        registry: the registry the report was built from; the HTML page draws its figures from
            it (without it the page has the tables only).

    Returns:
        The rendered text.

    Raises:
        ReportError: unknown format.
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "csv":
        return _machine_table(report).to_csv(index=False)
    if fmt == "json":
        layers = report.layer_table.reset_index()
        payload = {
            "title": report.title,
            "metric": report.metric,
            "select": report.select,
            "rows": json.loads(_machine_table(report).to_json(orient="records", double_precision=15)),
            "layers": json.loads(layers.to_json(orient="records", double_precision=15)),
            "warnings": list(report.warnings),
        }
        return json.dumps(payload, indent=2, ensure_ascii=False)
    table, layers = _display_table(report), _display_layers(report)
    caption = _layer_caption(report)
    if fmt == "markdown":
        lines = [f"### {report.title}", "", _subtitle(report)]
        lines += [f"> warning: {w}" for w in report.warnings]
        lines += ["", _markdown(table), "", caption, "", _markdown(layers)]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        lines = [f"% {report.title}", f"% {_subtitle(report)}"]
        lines += [f"% warning: {w}" for w in report.warnings]
        best = report.best_row
        bold = None if best is None else (best, len(_varying(report)))  # the metric's column
        lines += [_latex(table, bold), "", f"% {caption}", _latex(layers)]
        return "\n".join(lines) + "\n"
    from .html import html_page

    return html_page(report, registry)


def _subtitle(report: Report) -> str:
    which = "best epoch" if report.select == "best" else "last epoch"
    unit = " in %" if _is_accuracy(report.metric) else ""
    return (
        f"{report.metric}{unit} at each run's {which}: mean ± sample std over seeds (n); "
        f"mean_entropy in bits at the same epoch"
    )


def _layer_caption(report: Report) -> str:
    which = f"best-{report.metric} epoch" if report.select == "best" else "last epoch"
    return f"Per-layer entropy (bits) at each run's {which}, mean over seeds"


def _varying(report: Report) -> list[str]:
    columns = list(report.table.columns)
    return columns[: columns.index(report.metric)]


def _machine_table(report: Report) -> pd.DataFrame:
    m = report.metric
    columns = [*_varying(report), f"{m}_mean", f"{m}_std", "n", _ENTROPY_METRIC, "config_hash"]
    return report.table[[c for c in columns if c in report.table.columns]]


def _display_table(report: Report) -> pd.DataFrame:
    varying, m = _varying(report), report.metric
    shown = pd.DataFrame({c: report.table[c].map(_value_text) for c in varying})
    header = f"{m} (%)" if _is_accuracy(m) else m
    shown[header] = report.table[m]
    shown["n"] = report.table["n"].astype(str)
    if _ENTROPY_METRIC in report.table.columns and m != _ENTROPY_METRIC:
        shown[_ENTROPY_METRIC] = report.table[_ENTROPY_METRIC].map(_number_text)
    return shown


def _display_layers(report: Report) -> pd.DataFrame:
    shown = report.layer_table.apply(lambda column: column.map(_number_text))
    return shown.reset_index().rename(columns={"index": "layer"})


def _markdown(frame: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    left = {"layer", _CONFIG_COLUMN}
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
    spec = "".join("l" if c in ("layer", _CONFIG_COLUMN) else "r" for c in frame.columns)
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
