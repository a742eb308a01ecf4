"""Pictures for people who do not run TensorBoard, and figures that TensorBoard shows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves_png(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and val on the same axes."""
    epochs = [m["epoch"] for m in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        loss_ax.plot(epochs, [m[f"{split}_loss"] for m in history], style, label=split)
        acc_ax.plot(epochs, [m[f"{split}_acc"] for m in history], style, label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_figure(matrix: torch.Tensor, names: list[str]) -> plt.Figure:  # [true, pred]
    """Rows: true class; columns: predicted; cells: counts, shaded by share of the row.

    Sized for TensorBoard, which fits the image to a card ~500 px wide: 6.4 x 6 inches at
    100 dpi with 12-point counts (10 classes) read at ~12 px there; more classes, smaller type."""
    counts = matrix.cpu().numpy()
    share = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(names)
    size = max(6, min(10, 12 * 10 / max(n, 1)))  # points: 12 for 10 classes, 6 at least
    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n if n <= 20 else 0):  # beyond 20 classes the numbers would overlap
        for j in range(n):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=size + 2,
                    color=color, fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=size + 1)
    ax.set_yticks(range(n), names, fontsize=size + 1)
    ax.set_xlabel("predicted", fontsize=size + 2)
    ax.set_ylabel("true", fontsize=size + 2)
    ax.set_title("confusion matrix (test)", fontsize=size + 3)
    fig.tight_layout()
    return fig


def sweep_comparison_png(report: Any, path: Path) -> None:
    """A sweep side by side (sweep.Report): val accuracy and val loss per epoch of every
    finished job, one colour per configuration (its seeds share it); for a sweep over lr, the
    final val loss against lr on a log axis."""
    jobs = [job for job in report.ranked if job.ok]
    lr_swept = "lr" in report.keys
    fig, axes = plt.subplots(1, 3 if lr_swept else 2, figsize=(16 if lr_swept else 11, 4.5))
    acc_ax, loss_ax = axes[0], axes[1]
    config_keys = [k for k in report.keys if k != "seed"]
    colors: dict[str, str] = {}
    for job in sorted(jobs, key=lambda j: j.num):
        history = job.history()
        label = ",".join(f"{k}={job.overrides.get(k, '')}" for k in config_keys) or "all jobs"
        new = label not in colors
        color = colors.setdefault(label, f"C{len(colors) % 10}")
        epochs = [row["epoch"] for row in history]
        for ax, metric in ((acc_ax, "val_acc"), (loss_ax, "val_loss")):
            ax.plot(epochs, [row[metric] for row in history], "-o", ms=3, color=color,
                    alpha=0.8, label=label if new else None)
    acc_ax.set(xlabel="epoch", ylabel="val accuracy", title="val accuracy")
    loss_ax.set(xlabel="epoch", ylabel="val loss", title="val loss")
    for ax in (acc_ax, loss_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(colors) <= 20:  # beyond that a legend hides the curves
        acc_ax.legend(fontsize=7)
    if lr_swept:
        lr_vs_loss(report, axes[2])
    failed = len(report.ranked) - len(jobs)
    note = f", {failed} failed (not drawn)" if failed else ""
    seeds = " (seeds share a colour)" if "seed" in report.keys else ""
    where = "/".join(report.sweep_dir.parts[-2:])
    fig.suptitle(f"sweep {where}: {len(jobs)} jobs{note}{seeds}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def number(text: object) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def lr_vs_loss(report: Any, ax: plt.Axes) -> None:
    """Final val loss against lr, one line per setting of the other swept keys through the mean
    over seeds (each seed a dot); a failed job is an x at the top edge, where its loss went."""
    series: dict[str, dict[float, list[float]]] = {}
    for job in report.ranked:
        others = ",".join(
            f"{k}={job.overrides.get(k, '')}" for k in report.keys if k not in ("lr", "seed")
        )
        loss = job.final("val_loss") if job.ok else math.inf
        lr = number(job.overrides.get("lr"))
        if not math.isfinite(lr):  # a damaged overrides.yaml: nothing to place on the axis
            continue
        series.setdefault(others or "val loss", {}).setdefault(lr, []).append(loss)
    finite = [
        x for by_lr in series.values() for xs in by_lr.values() for x in xs if math.isfinite(x)
    ]
    top = max(finite, default=1.0) * 1.1
    for label, by_lr in series.items():
        means = {
            lr: sum(good) / len(good)
            for lr, losses in sorted(by_lr.items())
            if (good := [x for x in losses if math.isfinite(x)])
        }
        (line,) = ax.plot(list(means), list(means.values()), "-", label=label)
        for lr, losses in by_lr.items():
            good = [x for x in losses if math.isfinite(x)]
            ax.plot([lr] * len(good), good, "o", ms=4, color=line.get_color(), alpha=0.7)
            if len(good) < len(losses):
                ax.plot([lr], [top], "x", ms=9, color=line.get_color())
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log)", ylabel="final val loss",
           title="final val loss vs lr (x: failed)")
    ax.legend(fontsize=7)
