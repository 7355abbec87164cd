"""Terminal rendering with rich: progress per epoch, one line per epoch. No training logic here."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from imloss_cli.engine import EpochRecord
from imloss_cli.runner import RunStart


def epoch_line(record: EpochRecord, epochs: int) -> str:
    m = record.metrics
    return (
        f"epoch {record.epoch:>3}/{epochs}  loss {m['loss']:.4f}  ce {m['ce']:.4f}  im {m['im']:.4f}  "
        f"train {m['train_acc']:.4f}  test {m['test_acc']:.4f}  K {m['k']:.2f}  "
        f"H {m['mean_entropy']:.3f} bit  {m['epoch_seconds']:.1f}s"
    )


class TrainDisplay:
    """A progress bar for the running epoch and a printed line for each finished one."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
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

    def start(self, run: RunStart) -> None:
        self.epochs = run.epochs
        self.console.print(
            f"run [bold]{run.run_id}[/]  seed {run.seed}  device {run.device}  "
            f"{run.epochs} epochs x {run.steps_per_epoch} steps",
            soft_wrap=True,
        )
        self.task = self.progress.add_task("train", total=run.steps_per_epoch, epoch=f"1/{run.epochs}")

    def step(self, step: int, steps: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=step, total=steps, epoch=f"{self.epoch}/{self.epochs}")

    def epoch_done(self, record: EpochRecord) -> None:
        self.console.print(epoch_line(record, self.epochs), soft_wrap=True, highlight=False)
        self.epoch = record.epoch + 1
        if self.task is not None:
            self.progress.reset(self.task)
