"""Pictures for people who do not run TensorBoard, and figures that TensorBoard shows."""

from __future__ import annotations

from pathlib import Path

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
    """Rows: true class; columns: predicted; cells: counts, shaded by share of the row."""
    counts = matrix.cpu().numpy()
    share = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * n, 1 + 0.6 * n))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    fig.tight_layout()
    return fig
