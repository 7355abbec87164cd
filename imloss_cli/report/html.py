"""The report as one self-contained HTML page: tables, embedded plots, the runs behind them.

Everything is in the file: the figures are SVG data URIs, the style sheet and the few lines of
script that sort a table when its header is clicked are inline, and nothing is fetched from a
network. Without script the tables read the same, only unsorted.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

import pandas as pd

from imloss_cli.registry import Registry

from .build import Report
from .formats import EFFICIENCY_CAPTION, delta_cells, efficiency_differences, in_interval_text, verdict_cells
from .plots import figures
from .study_views import display_tables, notes
from .text import _count_text, _header, _is_accuracy, _number_text, _p_text, _scale

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #e4e4e4; text-align: right; }
th { background: #f4f4f4; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.label, th.label { text-align: left; } td.best { font-weight: bold; }
.warning { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; } dt { font-weight: bold; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
"""

# Click a header: sort the rows of its table by that column (numbers as numbers), again to reverse.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const up = th.getAttribute("aria-sort") !== "ascending";
  th.closest("tr").querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", up ? "ascending" : "descending");
  const key = row => { const c = row.cells[column]; return c.dataset.sort ?? c.textContent.trim(); };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    const order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
    return up ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}));
"""

_CAPTIONS = {
    "accuracy": "Test accuracy per epoch: mean over seeds, band the 95% Student-t interval of the mean (none for one seed).",
    "layer_entropy": "Per-layer entropy at each run's selected epoch, mean over seeds.",
    "entropy_over_epochs": "Entropy of every hidden layer over the epochs, one heat map per configuration.",
    "firing_rates": "Per-layer firing rate at each run's selected epoch, mean over seeds.",
    "layer_sops": "Synaptic operations per image of every hidden spiking layer at each run's selected epoch, "
    "mean over seeds.",
    "k_schedule": "The surrogate's sharpness K per epoch (ESG ramps it from K_min to K_max).",
    "pareto_front": "The study's trials at their best-validation epochs: the Pareto front in red, joined by the "
    "line that bounds what it dominates; infeasible trials as grey crosses; the baseline as a star.",
}


def html_page(report: Report, registry: Registry | None) -> str:
    """The whole page: what is compared, the comparison, the layers, the figures and the runs.

    Args:
        report: from :func:`build_report`.
        registry: the registry it was built from (the figures read the per-epoch curves);
            None: a page without figures.
    """
    drawn = figures(report, registry) if registry is not None else {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>imloss report: {_e(report.title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(report.title)}</h1>",
        _context(report),
        *[f'<p class="warning">warning: {_e(w)}</p>' for w in report.warnings],
        "<h2>Comparison</h2>",
        _comparison(report),
        *[f'<p class="note">{_e(n)}</p>' for n in report.notes],
        *_efficiency(report),
        *_study(report),
        "<h2>Layers</h2>",
        f"<p>Entropy (bits) at each run's selected epoch ({_e(report.selection_rule)}), mean over seeds.</p>",
        _layers(report.layer_table),
        "<p>Firing rate at the same epoch, mean over seeds.</p>",
        _layers(report.rate_table),
        *(
            []
            if report.sops_table.empty
            else [
                "<p>Synaptic operations per image (millions) at the same epoch, mean over seeds.</p>",
                _layers(report.sops_table, _count_text),
            ]
        ),
        *(["<h2>Figures</h2>"] if drawn else []),
        *[_figure(name, fig) for name, fig in drawn.items()],
        "<h2>Runs</h2>",
        _runs(report),
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _context(report: Report) -> str:
    axes = [c for c in report.table.columns[: list(report.table.columns).index(report.metric)] if c != "config"]
    versions = sorted(report.runs["code_version"].unique())
    items = {
        "metric": f"{report.metric} (mean over seeds and its 95% interval, Student's t; n seeds)",
        "baseline": "none: one configuration" if report.baseline is None else report.baseline.label,
        "selection": report.selection_rule,
        "axes": ", ".join(axes) if axes else "none: one configuration",
        "configurations": str(len(report.table)),
        "finished runs": str(len(report.runs)),
        "code versions": ", ".join(versions),
    }
    if report.efficiency or report.metric in ("sops", "energy_uj"):
        items["energy"] = report.energy_rule
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items.items()) + "</dl>"


def _table(
    header: list[str], rows: list[list[tuple[str, str | None]]], labels: int = 1, best: int | None = None
) -> str:
    """A sortable table; each cell is (text, sort key or None); the first ``labels`` columns align left."""
    head = "".join(
        f'<th class="label">{_e(h)}</th>' if i < labels else f"<th>{_e(h)}</th>" for i, h in enumerate(header)
    )
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, (text, key) in enumerate(row):
            classes = " ".join(
                c for c in ("label" if i < labels else "", "best" if r == best and i == labels else "") if c
            )
            attrs = (f' class="{classes}"' if classes else "") + (f' data-sort="{_e(key)}"' if key is not None else "")
            cells.append(f"<td{attrs}>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _key(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else repr(float(value))


def _comparison(report: Report) -> str:
    t, m = report.table, report.metric
    labels = list(t.columns[: list(t.columns).index(m)])
    means = t[f"{m}_mean"]
    compared = report.baseline is not None
    header = [*labels, _header(m), "n"]
    header += [f"Δ {m}" + (" (pp)" if _is_accuracy(m) else ""), "test", "p (Holm)", "verdict"] if compared else []
    header += ["mean_entropy (bits)"] if "mean_entropy" in t.columns else []
    header += [_header(c) for c in report.efficiency]
    paper = "paper_top1" in t.columns
    header += ["paper row", "paper", "delta (pp)", "paper in 95% interval"] if paper else []
    deltas, verdicts = (delta_cells(report, m), verdict_cells(report, m)) if compared else ([], [])
    rows = []
    for i in range(len(t)):
        row = [(str(t[c].iloc[i]), None) for c in labels]
        row.append((t[m].iloc[i], _key(means.iloc[i])))
        row.append((str(t["n"].iloc[i]), str(t["n"].iloc[i])))
        if compared:
            row.append((deltas[i], _key(t[f"delta_{m}"].iloc[i])))
            row.append(("–" if i == report.baseline.row else t[f"test_{m}"].iloc[i], None))
            row.append((_p_text(t[f"p_adj_{m}"].iloc[i]), _key(t[f"p_adj_{m}"].iloc[i])))
            row.append((verdicts[i], None))
        if "mean_entropy" in t.columns:
            row.append((_number_text(t["mean_entropy"].iloc[i]), _key(t["mean_entropy"].iloc[i])))
        row += [(t[c].iloc[i], _key(t[f"{c}_mean"].iloc[i])) for c in report.efficiency]
        if paper:
            top1, delta = t["paper_top1"].iloc[i], t["delta_pp"].iloc[i]
            label, deviation = t["paper_row"].iloc[i], t["paper_deviation"].iloc[i]
            mark = " (not the paper's setting)" if isinstance(deviation, str) and deviation else ""
            row += [("–" if pd.isna(label) else str(label), None)]
            row += [("–" if pd.isna(top1) else f"{top1:.2f}", _key(top1))]
            row += [("–" if pd.isna(delta) else f"{delta:+.2f}{mark}", _key(delta))]
            row += [(in_interval_text(t["paper_in_ci"].iloc[i]), None)]
        rows.append(row)
    return _table(header, rows, labels=len(labels), best=report.best_row)


def _study(report: Report) -> list[str]:
    """A study's front, importances and trials (``study_views``), each a sortable table."""
    if report.study is None:
        return []
    parts = ["<h2>Study</h2>", *[f"<p>{_e(n)}</p>" for n in notes(report.study)]]
    for caption, frame in display_tables(report.study):
        rows = [[(str(v), None) for v in row] for row in frame.itertuples(index=False)]
        parts += [f"<p>{_e(caption)}</p>", _table([str(c) for c in frame.columns], rows)]
    return parts


def _efficiency(report: Report) -> list[str]:
    """The differences to the baseline in operations and energy, as a caption and a table (or nothing)."""
    frame = efficiency_differences(report)
    if frame is None:
        return []
    rows = [[(str(v), None) for v in row] for row in frame.itertuples(index=False)]
    return [f"<p>{_e(EFFICIENCY_CAPTION)}.</p>", _table(list(frame.columns), rows)]


def _layers(table: pd.DataFrame, text: Callable[[float], str] = _number_text) -> str:
    header = ["layer", *[str(c) for c in table.columns]]
    rows = [
        [(str(layer), str(i)), *[(text(v), _key(v)) for v in table.loc[layer].tolist()]]
        for i, layer in enumerate(table.index)
    ]  # the layer column sorts by network order
    return _table(header, rows)


def _runs(report: Report) -> str:
    header = [
        "run",
        "configuration",
        "seed",
        "status",
        "selected epoch",
        _header(report.metric),
        "duration (s)",
        "host",
    ]
    scale = _scale(report.metric)[0]  # the unit of the comparison table (accuracies in %)
    rows = []
    for r in report.runs.itertuples(index=False):
        value = getattr(r, report.metric) * scale
        epoch = "" if pd.isna(r.epoch) else str(r.epoch)
        rows.append(
            [(r.run_id, None), (r.config, None), (str(r.seed), str(r.seed)), ("FINISHED", None), (epoch, epoch or None),
             (_number_text(value), _key(value)), (_number_text(r.duration_s), _key(r.duration_s)), (r.host, None)]
        )  # fmt: skip
    for r in report.left_out.itertuples(index=False):
        rows.append([(r.run_id, None), ("", None), (str(r.seed), str(r.seed)), (r.status, None), ("", None),
                     ("", None), ("", None), (r.host, None)])  # fmt: skip
    return _table(header, rows, labels=2)


def _figure(name: str, fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    caption = _CAPTIONS[name]
    return f'<figure id="{name}"><img alt="{_e(caption)}" src="data:image/svg+xml;base64,{data}"><figcaption>{_e(caption)}</figcaption></figure>'
