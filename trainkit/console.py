"""What a person sees: the config tree at start, a live progress bar per epoch (one plain line
per epoch when stdout is not a terminal), and a summary table at the end."""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from trainkit.callbacks import Callback
from trainkit.loop import FitState

console = Console()
log = logging.getLogger("trainkit")  # Hydra routes it to the run's log file


def print_config(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            tree.add(f"[bold]{key}").add(Syntax(OmegaConf.to_yaml(value).rstrip(), "yaml"))
        else:
            tree.add(f"[bold]{key}[/]: {value}")
    console.print(tree)


def print_diagnosis(diagnosis: dict) -> None:
    e = diagnosis["evidence"]
    evidence = (
        f"train acc {e['train_acc']:.3f}, val acc {e['val_acc']:.3f} (gap {e['acc_gap']:+.3f}); "
        f"best val loss {e['best_val_loss']:.4f} at epoch {e['best_epoch']}, "
        f"now {e['val_loss_rise_since_best']:+.1%} from it"
    )
    console.print(f"[bold]verdict: {diagnosis['verdict']}[/] ({evidence})", soft_wrap=True)
    console.print("  worth trying: " + "; ".join(diagnosis["advice"]), highlight=False,
                  soft_wrap=True)  # fmt: skip
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


class ProgressPrinter(Callback):
    """A progress bar with the running loss while an epoch trains, then the epoch's line."""

    def __init__(self) -> None:
        self.live = console.is_terminal
        self.progress: Progress | None = None

    def on_epoch_start(self, state: FitState) -> None:
        if not self.live:
            return
        self.progress = Progress(
            TextColumn(f"epoch {state.epoch}/{state.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("train", total=state.steps_per_epoch, loss=float("nan"))
        self.progress.start()

    def on_step_end(self, state: FitState) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=state.running_loss)

    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        line = epoch_line(metrics, state.epochs)
        console.print(line, highlight=False, soft_wrap=True)
        log.info(line)


def print_summary(summary: dict) -> None:
    failed = summary.get("status") == "failed"  # then the error line gives the reason
    if summary["final"] is None:  # stopped inside the first epoch
        if not failed:
            console.print(summary["stop_reason"], highlight=False, soft_wrap=True)
        return
    verdict = summary["diagnosis"]["verdict"]
    table = Table(title="summary", title_justify="left", caption=f"verdict: {verdict}",
                  caption_justify="left")  # fmt: skip
    table.add_column("split")
    table.add_column("loss", justify="right")
    table.add_column("accuracy", justify="right")
    final, best, test = summary["final"], summary["best"], summary["test"]
    table.add_row("train (last epoch)", f"{final['train_loss']:.4f}", f"{final['train_acc']:.4f}")
    table.add_row("val (last epoch)", f"{final['val_loss']:.4f}", f"{final['val_acc']:.4f}")
    table.add_row(
        f"val (best, epoch {best['epoch']})", f"{best['val_loss']:.4f}", f"{best['val_acc']:.4f}"
    )
    table.add_row("test", f"{test['loss']:.4f}", f"{test['acc']:.4f}", style="bold")
    console.print(table)
    if not failed:
        console.print(summary["stop_reason"], highlight=False, soft_wrap=True)
    print_diagnosis(summary["diagnosis"])
    line = (
        f"{summary['epochs_run']} epochs in {summary['wall_time_s']:.1f}s, "
        f"{summary['train_samples_per_s']:,.0f} train samples/s on {summary['device']}; "
        f"TensorBoard: tensorboard --logdir {summary['run_dir']}"
    )
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
        ]  # fmt: skip
        if failures:
            cells.append(escape(row["status"]))
        table.add_row(*cells, style=None if ok else "red")
    out = console if console.is_terminal else Console(width=120)  # logs: room for the columns
    out.print(table)
    for row in failures:  # the first clause; the whole reason is in summary.csv
        overrides = ",".join(f"{k}={row[k]}" for k in report.keys)
        reason = (row["reason"] or "no summary.json: it was stopped").split(";")[0]
        text = escape(f"{row['status']}: {overrides}: {reason}")  # a job's files are data
        out.print(f"[red]{text}[/]", highlight=False)
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
        )  # fmt: skip
    out.print(table)


def _num(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3g}"  # a diverged job's 8.1e+17


def _mean_std(row: dict, name: str) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"
