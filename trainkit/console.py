"""What a person sees: the config tree at start, a live progress bar per epoch (one plain line
per epoch when stdout is not a terminal), and a summary table at the end."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
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
    if summary["final"] is None:  # stopped inside the first epoch
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
    console.print(summary["stop_reason"], highlight=False, soft_wrap=True)
    print_diagnosis(summary["diagnosis"])
    line = (
        f"{summary['epochs_run']} epochs in {summary['wall_time_s']:.1f}s, "
        f"{summary['train_samples_per_s']:,.0f} train samples/s on {summary['device']}; "
        f"TensorBoard: tensorboard --logdir {summary['run_dir']}"
    )
    console.print(line, highlight=False, soft_wrap=True)
    log.info("test loss %.4f acc %.4f; %s", test["loss"], test["acc"], line)
