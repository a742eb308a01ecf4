"""What a person sees: a short header (run folder, overrides, data, model, device), a live
progress bar per epoch (one plain line per epoch when stdout is not a terminal), a summary
table and one verdict at the end. The whole config tree is in .hydra/config.yaml, in
`trainkit --cfg job`, and printed first with trainer.verbose=true."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from trainkit.loop import Callback, FitState, Outcome
from trainkit.precision import latest as latest_precision

if TYPE_CHECKING:
    from trainkit.data import Data
    from trainkit.loop import Training
    from trainkit.summary import Summary

console = Console()
if not console.is_terminal:  # piped or logged: tables keep their columns, not cut at 80
    console.width = max(console.width, 200)  # (COLUMNS=80 is a default of many a tool)
log = logging.getLogger("trainkit")  # Hydra routes it to the run's log file
compact = False  # a sweep's job: a one-line result instead of the summary table (sweep.py
# prints the table that compares the jobs)


def print_config(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            tree.add(f"[bold]{key}").add(Syntax(OmegaConf.to_yaml(value).rstrip(), "yaml"))
        else:
            tree.add(f"[bold]{key}[/]: {value}")
    console.print(tree)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """1 epoch, 2 epochs."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {nouns or noun + 's'}"


def print_header(
    cfg: DictConfig, run_dir: Path, dataset: Data, training: Training, overrides: list[str],
    choices: dict[str, Any],
) -> None:
    """Five lines that say what this run is: where it writes, what was asked, on what data,
    which model and optimizer, on which device at which precision."""
    asked = " ".join(overrides) if overrides else "none (the default experiment)"
    shape = "x".join(str(s) for s in dataset.input_shape)
    parameters = sum(p.numel() for p in training.model.parameters())
    trainable = sum(p.numel() for p in training.model.parameters() if p.requires_grad)
    frozen = f" ({trainable:,} trainable)" if trainable < parameters else ""
    steps = training_steps(cfg, len(dataset.train))
    device = dataset.train.labels.device
    threads = f" ({plural(torch.get_num_threads(), 'thread')})" if device.type == "cpu" else ""
    precision = "fp32" if training.autocast is None else str(training.autocast).rpartition(".")[2]
    chosen = latest_precision()
    if chosen is not None and chosen.dtype is training.autocast:  # and why (precision.py)
        precision = chosen.describe()
    lines = [
        f"[bold]trainkit[/] run in {escape(shown_path(run_dir))}",
        f"  overrides: {escape(asked)}",
        f"  data: {escape(str(cfg.data.name))}, {len(dataset.train):,} train / "
        f"{len(dataset.val):,} val / {len(dataset.test):,} test images of {shape}, "
        f"{plural(dataset.num_classes, 'class', 'classes')}",
        f"  model: {escape(option(choices, 'model', cfg.model))}, {parameters:,} parameters"
        f"{frozen}; init {escape(option(choices, 'init', cfg.init))}; loss "
        f"{escape(option(choices, 'loss', cfg.loss))}; optimizer "
        f"{escape(option(choices, 'optimizer', cfg.optimizer))} lr {cfg.optimizer.lr:g}; "
        f"scheduler {escape(option(choices, 'scheduler', cfg.scheduler))}",
        f"  {plural(cfg.trainer.epochs, 'epoch')} of {plural(steps, 'step')} (batch "
        f"{cfg.trainer.batch_size}) on {device}{threads}, {precision}",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    log.info("run in %s; overrides: %s", run_dir, asked)


def shown_path(path: Path) -> str:
    """A path under the current folder as a relative one (outputs/...): shorter to read."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def option(choices: dict[str, Any], group: str, node: DictConfig) -> str:
    """The option chosen for a group (model=cnn), or the class a user's config names."""
    chosen = choices.get(group)
    if chosen:
        return str(chosen)
    target = str(node.get("_target_") or "")
    return target.rpartition(".")[2] or "default"


def training_steps(cfg: DictConfig, n_train: int) -> int:
    from trainkit.loop import steps_per_epoch

    return steps_per_epoch(n_train, cfg.trainer)


def print_diagnosis(diagnosis: dict) -> None:
    e = diagnosis["evidence"]
    evidence = (
        f"train acc {e['train_acc']:.3f}, val acc {e['val_acc']:.3f} (gap {e['acc_gap']:+.3f}); "
        f"best val loss {e['best_val_loss']:.4f} at epoch {e['best_epoch']}, "
        f"now {e['val_loss_rise_since_best']:+.1%} from it"
    )
    console.print(f"[bold]verdict: {diagnosis['verdict']}[/] ({evidence})", soft_wrap=True)
    if diagnosis["advice"]:  # none with diagnostics.advice=false
        console.print("  worth trying: " + "; ".join(diagnosis["advice"]), highlight=False,
                      soft_wrap=True)
    log.info("verdict: %s (%s)", diagnosis["verdict"], evidence)


def warn(message: str) -> None:
    console.print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)
    log.warning(message)


def epoch_line(metrics: dict, epochs: int) -> str:
    return (
        f"epoch {metrics['epoch']}/{epochs}  "
        f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f}  "
        f"val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.4f}  "
        f"lr {metrics['lr']:.3g}  {metrics['epoch_time_s']:.1f}s  "
        f"{metrics['samples_per_s']:,.0f} samples/s"
    )


class SamplesPerSecond(ProgressColumn):
    """Training speed from rich's own estimate of steps per second."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed * self.batch_size:,.0f} samples/s" if speed else "", style="dim")


class ProgressPrinter(Callback):
    """A progress bar while an epoch trains (ETA, samples/s, the epoch's mean loss so far,
    known from the first step on), then the epoch's line."""

    def __init__(self, batch_size: int) -> None:
        self.live = console.is_terminal
        self.batch_size = batch_size
        self.progress: Progress | None = None
        self.shown_loss = math.nan

    def on_epoch_start(self, state: FitState) -> None:
        if not self.live:
            return
        self.progress = Progress(
            TextColumn(f"epoch {state.epoch}/{state.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            SamplesPerSecond(self.batch_size),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.shown_loss = math.nan
        self.task = self.progress.add_task("train", total=state.steps_per_epoch, loss="…")
        self.progress.start()

    def on_step_end(self, state: FitState) -> None:
        if self.progress is None:
            return
        # running_loss changes at the loop's sync points only (trainer.log_every_n_steps, and
        # the epoch's first step): format it then, not at every step.
        if state.running_loss != self.shown_loss and not math.isnan(state.running_loss):
            self.shown_loss = state.running_loss
            self.progress.update(self.task, advance=1, loss=f"{state.running_loss:.4f}")
        else:
            self.progress.update(self.task, advance=1)

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        self.stop_bar()
        line = epoch_line(metrics, state.epochs)
        console.print(line, highlight=False, soft_wrap=True)
        log.info(line)


    def on_fit_end(self, state: FitState, outcome: Outcome) -> None:
        self.stop_bar()  # a fit stopped mid-epoch (a signal, a NaN): no bar left on screen

    def stop_bar(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def print_summary(summary: Summary) -> None:
    """The summary table, the verdict and where to look next; in a sweep (`compact`), one
    line: the sweep's own table compares the jobs when it ends."""
    failed = summary.status == "failed"  # then the error line gives the reason
    if summary.final is None:  # stopped inside the first epoch
        if not failed:
            console.print(summary.stop_reason, highlight=False, soft_wrap=True)
        return
    final, best, test = summary.final, summary.best, summary.test
    ending = (
        f"{summary.stop_reason} in {summary.wall_time_s:.1f}s, "
        f"{summary.train_samples_per_s:,.0f} train samples/s on {summary.device}"
    )
    if compact:
        verdict = summary.diagnosis["verdict"]
        line = (f"test acc {test['acc']:.4f} (loss {test['loss']:.4f}), best val acc "
                f"{best['val_acc']:.4f} at epoch {best['epoch']}; verdict: {verdict}; "
                f"{ending}")
        console.print(line, highlight=False, soft_wrap=True)
        log.info(line)
        return
    table = Table(title="summary", title_justify="left")
    table.add_column("split")
    table.add_column("loss", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_row("train (last epoch)", f"{final['train_loss']:.4f}", f"{final['train_acc']:.4f}")
    table.add_row("val (last epoch)", f"{final['val_loss']:.4f}", f"{final['val_acc']:.4f}")
    table.add_row(
        f"val (best, epoch {best['epoch']})", f"{best['val_loss']:.4f}", f"{best['val_acc']:.4f}"
    )
    table.add_row("test", f"{test['loss']:.4f}", f"{test['acc']:.4f}", style="bold")
    console.print(table)
    print_diagnosis(summary.diagnosis)
    line = f"{ending}; TensorBoard: tensorboard --logdir {shown_path(Path(summary.run_dir))}"
    console.print(line, highlight=False, soft_wrap=True)
    log.info("test loss %.4f acc %.4f; %s", test["loss"], test["acc"], line)


def sweep_tables(report: Any, jobs: list[dict], groups: list[dict]) -> None:
    """The ranked jobs of a sweep (sweep.py), then the mean ± std per configuration over seeds."""
    m = report.metric
    table = Table(title=f"sweep: {len(jobs)} jobs ranked by best {m}", title_justify="left")
    for name in ["#", *report.keys]:
        table.add_column(name)
    for name in (f"best {m}", "best ep", "final val_loss", "test acc", "epochs run", "time"):
        table.add_column(name, justify="right")
    failures = [row for row in jobs if row["status"] != "completed"]
    if failures:
        table.add_column("status")
    for row in jobs:
        ok = row["status"] == "completed"
        cells = [
            str(row["rank"]), *(escape(str(row[k])) for k in report.keys), _num(row[f"best_{m}"]),
            str(row["best_epoch"]), _num(row["final_val_loss"]), _num(row["test_acc"]),
            escape(str(row["epochs_run"])), f"{row['time_s']:.1f}s" if ok else "-",
        ]
        if failures:
            cells.append(escape(row["status"]))
        table.add_row(*cells, style=None if ok else "red")

    console.print(table)
    for row in failures:  # the first clause; the whole reason is in summary.csv
        overrides = ",".join(f"{k}={row[k]}" for k in report.keys)
        reason = (row["reason"] or "no summary.json: it was stopped").split(";")[0]
        text = escape(f"{row['status']}: {overrides}: {reason}")  # a job's files are data
        console.print(f"[red]{text}[/]", highlight=False)
    if not groups:
        return
    keys = [k for k in report.keys if k != "seed"]
    table = Table(title="mean ± std over seeds", title_justify="left")
    for name in [*keys, "n"]:
        table.add_column(name)
    for name in (f"best {m}", "final val_loss", "test acc"):
        table.add_column(name, justify="right")
    for row in groups:
        missing = [f"{row[k]} {k}" for k in ("failed", "unfinished") if row[k]]
        n = f"{row['n']}" + (f" ({', '.join(missing)})" if missing else "")
        table.add_row(
            *(row[k] for k in keys), n,
            *(_mean_std(row, name) for name in (f"best_{m}", "final_val_loss", "test_acc")),
        )
    console.print(table)


def _num(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3g}"  # a diverged job's 8.1e+17


def _mean_std(row: dict, name: str) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"
