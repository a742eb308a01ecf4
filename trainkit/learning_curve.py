"""`trainkit learning-curve [sizes=a,b,c] [overrides]`: the same run at growing training-set
sizes, then final train and val loss against size (learning_curve.png, .csv) and a verdict.

Sizes are counts (> 1) or fractions (<= 1) of the training split, as data.train_size takes them
(default: 5%, 10%, 25%, 50%, 100%). Each run is a normal trainkit run in its own folder
(train_size=<size>/), so its curves are in TensorBoard too.

Verdict, from the last two sizes: if val loss still fell by more than 5% from the previous size,
more data would help (the model is data-limited, high variance); otherwise it has flattened, and
more data will not help much: a bigger model, longer training or less regularization will.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import matplotlib
from omegaconf import DictConfig

from trainkit import console
from trainkit.errors import UserError
from trainkit.experiment import run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_SIZES = ["0.05", "0.1", "0.25", "0.5", "1.0"]
STILL_FALLING = 0.05  # relative fall of val loss between the last two sizes


def learning_curve(cfg: DictConfig, out_dir: Path, sizes: list[str] | None = None) -> dict:
    try:
        values = [float(s) for s in sizes or DEFAULT_SIZES]
    except ValueError:
        raise UserError(f"sizes={','.join(sizes)}: give counts or fractions, e.g. "
                        "sizes=1000,4000,0.5") from None  # fmt: skip
    if any(v <= 0 for v in values):
        raise UserError("sizes must be > 0: counts (> 1) or fractions (<= 1)")
    points = []
    for size in values:
        job = copy.deepcopy(cfg)
        job.data.train_size = size
        summary = run(job, out_dir / f"train_size={size:g}")
        final = summary["final"]
        points.append({
            "train_size": summary["dataset"]["train"],
            "train_loss": final["train_loss"],
            "val_loss": final["val_loss"],
            "train_acc": final["train_acc"],
            "val_acc": final["val_acc"],
        })  # fmt: skip
    points.sort(key=lambda p: p["train_size"])
    verdict = judge(points)
    write_outputs(points, verdict, out_dir)
    console.console.print(f"[bold]learning curve:[/] {verdict}", soft_wrap=True)
    console.console.print(f"plot: {out_dir / 'learning_curve.png'}", highlight=False)
    return {"points": points, "verdict": verdict}


def judge(points: list[dict]) -> str:
    if len(points) < 2:
        return "one size only: give sizes=a,b,c to see a trend"
    before, last = points[-2]["val_loss"], points[-1]["val_loss"]
    fall = (before - last) / before
    if fall > STILL_FALLING:
        sizes = f"{points[-2]['train_size']:,} to {points[-1]['train_size']:,} samples"
        return f"more data would help: val loss still fell {fall:.0%} from {sizes}"
    return (f"val loss has flattened ({fall:+.0%} over the last size): more data will not help "
            "much; a bigger model, longer training or less regularization will")  # fmt: skip


def write_outputs(points: list[dict], verdict: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "learning_curve.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(points[0]))
        writer.writeheader()
        writer.writerows(points)
    sizes = [p["train_size"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        sizes, [p["train_loss"] for p in points], "-o", label="train loss (last epoch, train mode)"
    )
    ax.plot(sizes, [p["val_loss"] for p in points], "-s", label="val loss (last epoch)")
    ax.set(xscale="log", xlabel="training-set size", ylabel="loss", title="learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, verdict[:110], fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out_dir / "learning_curve.png", dpi=100)
    plt.close(fig)
