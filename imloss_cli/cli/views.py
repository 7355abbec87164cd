"""Terminal rendering with rich: progress per epoch, one line per epoch. No training logic here."""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from imloss_cli.registry import FAILED, FINISHED, KILLED, LOST, SKIPPED

if TYPE_CHECKING:  # rendering needs no torch: `imloss runs` and `report` start fast
    from imloss_cli.ablate import AblationResult, Trial, TrialOutcome, WorkOptions
    from imloss_cli.export.to_nir import Agreement
    from imloss_cli.paper import PaperPlan, PaperResult
    from imloss_cli.report import RunDetails
    from imloss_cli.snn.catalog import ModelRow
    from imloss_cli.train.loop import EpochRecord
    from imloss_cli.train.sink import Callbacks, RunStart


# (metric, how it is printed) in line order; the ANN twin logs no im, K or entropy.
_EPOCH_FIELDS = (
    ("loss", "loss {:.4f}"),
    ("ce", "ce {:.4f}"),
    ("im", "im {:.4f}"),
    ("train_acc", "train {:.4f}"),
    ("test_acc", "test {:.4f}"),
    ("k", "K {:.2f}"),
    ("mean_entropy", "H {:.3f} bit"),
    ("energy_uj", "E {:.4g} µJ"),
    ("epoch_seconds", "{:.1f}s"),
)


def epoch_line(record: EpochRecord, epochs: int) -> str:
    m = record.metrics
    fields = [text.format(m[name]) for name, text in _EPOCH_FIELDS if name in m]
    return f"epoch {record.epoch:>3}/{epochs}  " + "  ".join(fields)


class TrainDisplay:
    """A progress bar for the running epoch and a printed line for each finished one."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet  # torchrun ranks other than 0 say nothing
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}[/] {task.fields[phase]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.epochs = 0
        self.epoch = 1
        self.task: int | None = None

    def __enter__(self) -> TrainDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(et, ev, tb)

    def stop(self) -> None:
        """Take the progress bar off the screen now (before an error message is printed)."""
        self.progress.stop()

    def callbacks(self) -> Callbacks:
        from imloss_cli.train.sink import Callbacks

        if self.quiet:
            return Callbacks()
        return Callbacks(
            on_start=self.start, on_step=self.step, on_eval_batch=self.eval_batch, on_epoch=self.epoch_done
        )

    def start(self, run: RunStart) -> None:
        self.epochs = run.epochs
        self.console.print(
            f"run [bold]{run.run_id}[/]  seed {run.seed}  device {run.device}  "
            f"{run.epochs} epochs x {run.steps_per_epoch} steps",
            soft_wrap=True,
        )
        self.epoch = run.first_epoch
        if run.first_epoch > 1:
            self.console.print(f"resuming at epoch {run.first_epoch}")
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            "train", total=run.steps_per_epoch, epoch=f"{self.epoch}/{run.epochs}", phase="train"
        )

    def step(self, step: int, steps: int) -> None:
        if self.task is not None:
            self.progress.update(
                self.task, completed=step, total=steps, epoch=f"{self.epoch}/{self.epochs}", phase="train"
            )

    def eval_batch(self, done: int, total: int) -> None:
        """The test (and validation) pass after each epoch's training: batches scored."""
        if self.task is not None:
            self.progress.update(
                self.task, completed=done, total=total, epoch=f"{self.epoch}/{self.epochs}", phase="evaluate"
            )

    def epoch_done(self, record: EpochRecord) -> None:
        self.console.print(epoch_line(record, self.epochs), soft_wrap=True, highlight=False)
        self.epoch = record.epoch + 1
        if self.task is not None:
            self.progress.reset(self.task)


def frame_table(frame: pd.DataFrame, title: str | None = None, floats: str = "{:.4f}") -> Table:
    """A rich table of a DataFrame (index included when it is named); every cell is plain text, never markup."""
    table = Table(title=None if title is None else Text(title), title_justify="left", header_style="bold")
    index_name = frame.index.name if frame.index.name is not None else None
    if index_name is not None:
        table.add_column(Text(str(index_name)), justify="right")
    for col in frame.columns:
        table.add_column(Text(str(col)), justify="right" if pd.api.types.is_numeric_dtype(frame[col]) else "left")
    for idx, row in frame.iterrows():
        cells = [Text(_cell(v, floats)) for v in row.tolist()]
        table.add_row(*([Text(str(idx))] if index_name is not None else []), *cells)
    return table


def model_table(rows: list[ModelRow]) -> Table:
    """``imloss models``: one row per architecture."""
    table = Table(title="architectures (10 classes; FLOPs of one forward time step per image)", title_justify="left")
    for column in ("arch", "input", "parameters", "GFLOPs/step", "spiking layers", "source"):
        table.add_column(column, justify="left" if column in ("arch", "input", "source") else "right")
    for r in rows:
        table.add_row(r.arch, r.input, f"{r.parameters:,}", f"{r.gflops:.3f}", str(r.spiking_layers), r.source)
    return table


def _cell(value: object, floats: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return floats.format(value)
    return str(value)


class WorkerView:
    """What every worker's view shows (an ablation's, a study's): each trial's epochs, a takeover,
    a ``--jobs`` process that failed."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.display = TrainDisplay(console)

    def __enter__(self) -> Self:
        self.display.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.display.__exit__(et, ev, tb)

    def stop(self) -> None:
        """Take the progress bar off the screen now (before an error message is printed)."""
        self.display.stop()

    def taken_over(self, error: Exception) -> None:
        """A trial this worker trained was taken over by another worker (this one had been paused)."""
        self.console.print(str(error), style="yellow", markup=False, highlight=False, soft_wrap=True)

    def job_failed(self, log: Path, code: int) -> None:
        """A ``--jobs`` worker ended in an error of its own; its trials are left to the others."""
        self.console.print(
            f"a worker process exited with code {code}; its output is in {log}", style="yellow", markup=False,
            highlight=False, soft_wrap=True,
        )  # fmt: skip


class AblationView(WorkerView):
    """Progress of an ablation: a header per trial, its epochs, its outcome at once, a summary."""

    def work_options(self, **options: Any) -> WorkOptions:
        """The worker's options with this view's progress hooks."""
        from imloss_cli.ablate import WorkOptions

        return WorkOptions(
            on_trial=self.trial,
            on_outcome=self.outcome,
            on_wait=self.waiting,
            on_taken_over=self.taken_over,
            on_job_failed=self.job_failed,
            **options,
        )

    def trial(self, number: int, total: int, trial: Trial, run_id: str) -> Callbacks:
        self.console.print(f"[bold]trial {number}/{total}[/]  {escape(trial.label)}  run {run_id}", highlight=False)
        return self.display.callbacks()

    def outcome(self, outcome: TrialOutcome) -> None:
        label = escape(outcome.trial.label)
        where = f" on {escape(outcome.elsewhere)}" if outcome.elsewhere else ""
        if outcome.status in (FAILED, KILLED, LOST):
            self.console.print(
                f"[bold red]{outcome.status}[/]{where}  {label}  run {outcome.run_id}: {escape(str(outcome.error))}",
                highlight=False,
            )
        elif outcome.status == SKIPPED:
            self.console.print(f"[dim]skipped (finished before)[/]  {label}  run {outcome.run_id}", highlight=False)
        elif outcome.status == FINISHED:
            acc = f"  test accuracy {outcome.test_acc:.4f}" if outcome.test_acc is not None else ""
            self.console.print(f"[green]finished[/]{where}  {label}{acc}", highlight=False)

    def waiting(self, running: list[TrialOutcome]) -> None:
        """Nothing left to claim: the trials this worker waits for, and who holds them."""
        self.console.print(
            f"waiting for {len(running)} trial{'s' if len(running) != 1 else ''} running elsewhere:", highlight=False
        )
        for o in running:
            self.console.print(
                f"  {o.trial.label}  run {o.run_id}  running on {o.elsewhere}", highlight=False, markup=False
            )

    def missing(self, row: str, message: str) -> None:
        """A paper row left out: its data is not on this machine."""
        self.console.print(f"[yellow]no data[/]  {row}: {message}", highlight=False, soft_wrap=True)

    def paper_plan(self, plan: PaperPlan, missing: dict[str, str]) -> None:
        """``imloss paper --dry-run``: per table the planned trials, rows without data marked."""
        for table, trials in plan.tables.items():
            self.console.print(f"{table} table: {len(trials)} trials (dry run: nothing recorded)", highlight=False)
            for t in trials:
                mark = "  (no data here)" if plan.row(t) in missing else ""
                self.console.print(f"  {t.label}{mark}", highlight=False, markup=False)
        if missing:
            self.console.print(f"{len(missing)} row(s) would be left out for want of data: {', '.join(missing)}")

    def paper_summary(self, result: PaperResult, tables: dict[str, str]) -> None:
        """Per table: the group's outcome and report."""
        for table, group in result.groups.items():
            self.console.print(f"\n[bold]{table} table[/]", highlight=False)
            self.summary(group, tables.get(table, ""))
        if result.missing:
            self.console.print(f"{len(result.missing)} row(s) left out for want of data: {', '.join(result.missing)}")

    def summary(self, result: AblationResult, table: str) -> None:
        """The outcome counts and ``table`` (the group's report), or the planned trials of a dry run."""
        if result.group_id is None:  # dry run
            rows = pd.DataFrame([o.trial.values for o in result.outcomes])
            rows.index = pd.RangeIndex(1, len(rows) + 1, name="trial")
            self.console.print(frame_table(rows, title=f"{len(rows)} trials (dry run: nothing recorded)", floats="{}"))
            return
        counts = pd.Series([o.status for o in result.outcomes]).value_counts().to_dict()
        self.console.print(
            f"group {result.group_id}: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()), highlight=False
        )
        self.console.print(table, markup=False, highlight=False)


# Per image: sops and macs are operation counts, energy_uj their estimate at the default constants.
_SHOWN_EPOCH_COLUMNS = (
    "loss", "ce", "im", "train_acc", "test_acc", "k", "lr", "mean_entropy", "sops", "macs", "energy_uj", "epoch_seconds",
    "attempt",
)  # fmt: skip


def render_details(console: Console, details: RunDetails) -> None:
    """``imloss show``: header, recipe, environment, epochs, layers."""
    from imloss_cli.recipe import EnergyConfig, to_toml, validate_recorded

    run = details.run
    # Everything below but the headings is the row's text: printed as text, never as rich markup.
    console.print(
        f"[bold]run {run.id}[/]  {escape(run.name)}  {run.display_status}  kind {escape(run.kind)}  seed {run.seed}  "
        f"attempt {run.attempt}  group {run.group_id or '-'}",
        highlight=False,
    )
    console.print(
        f"code {run.code_version}  commit {run.git_commit or '-'}{'  (dirty)' if run.git_dirty else ''}",
        highlight=False,
        markup=False,
    )
    console.print(
        f"started {run.started_at}  ended {run.ended_at}  checkpoints {run.checkpoint_dir or '-'}",
        highlight=False,
        markup=False,
    )
    if run.error_message:
        console.print(f"{run.error_type}: {run.error_message}", style="red", highlight=False, markup=False)
    if run.reproduces:
        console.print(
            f"reproduces run {run.reproduces} (imloss reproduce: its recorded recipe and seed)", highlight=False
        )
    for other in details.reproduced_by:
        console.print(f"reproduced by run {other} (imloss reproduce)", highlight=False)
    for a in (a for a in run.attempts if isinstance(a, dict)):
        took_over = f"; took over from {a['took_over']}, whose heartbeat had stopped" if "took_over" in a else ""
        console.print(
            f"attempt {a.get('attempt')}: {a.get('started_at')} on {a.get('host')} (pid {a.get('pid')}), "
            f"{a.get('how')}{took_over}",
            highlight=False,
            markup=False,
        )
    console.print("\n[bold]recipe[/]")
    console.print(to_toml(validate_recorded(run.recipe)), markup=False, highlight=False)
    console.print("[bold]environment[/]")
    for key, value in run.environment.items():
        console.print(f"  {key}: {value}", highlight=False, markup=False)
    if len(details.epochs):
        cols = [c for c in _SHOWN_EPOCH_COLUMNS if c in details.epochs]
        console.print(frame_table(details.epochs[cols], title="epochs"))
        for note in details.subsets:
            console.print(note, style="yellow", highlight=False, markup=False)
        if "energy_uj" in details.epochs:
            e = EnergyConfig()
            console.print(
                f"per image: sops synaptic operations, macs multiply-accumulates, energy_uj = macs × {e.e_mac_pj:g} pJ "
                f"+ sops × {e.e_ac_pj:g} pJ in µJ (imloss report --e-mac/--e-ac recomputes it)",
                highlight=False,
            )
    if len(details.layers):
        console.print(frame_table(details.layers, title="layers (last epoch)"))


def agreement_lines(a: Agreement) -> list[str]:
    """``imloss export --check``: how the NIR file, run back, agrees with imloss."""
    return [
        f"check on {a.images} images ({a.inputs}):",
        f"  spikes identical in {a.layers_equal} of {a.layers} spiking layers ({a.spikes_differing} spike values differ)",
        f"  logits: largest |difference| {a.max_logit_difference:.3g}; the same class for {a.same_predictions} of {a.images}",
    ]


def differences_table(differences: dict[str, float], title: str) -> Table:
    """``imloss reproduce``: per metric, the largest |difference| over the epochs."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("metric")
    table.add_column("largest |difference|", justify="right")
    for name, value in differences.items():
        table.add_row(name, f"{value:.3g}")
    return table
