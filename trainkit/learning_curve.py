"""`trainkit learning-curve [sizes=a,b,c] [keep=steps|epochs] [steps=N] [overrides]`: the same
run at growing training-set sizes, then final train and val loss against size
(learning_curve.png, .csv) and a verdict.

Sizes are counts (> 1) or fractions (<= 1) of the training split, as data.train_size takes them
(default: 5%, 10%, 25%, 50%, 100%). Each run is a normal trainkit run in its own folder
(train_size=<size>/), so its curves are in TensorBoard too.

Every size trains for the same number of optimizer steps (keep=steps, the default): `steps=N`,
or the steps the largest size takes in the configured epochs; a size gets the whole number of
epochs nearest to that (at least one). With fixed epochs instead, 1,000 samples would get 16
steps and 16,000 get 250, and a curve that still falls would say as much about training length
as about data. keep=epochs keeps trainer.epochs for every size (cheaper: the small sizes train
less), and says so. Small sizes train more epochs, each with a validation pass: on 5% of the
data, 20 epochs score the validation set 20 times.

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

from trainkit import console, data
from trainkit.errors import UserError
from trainkit.experiment import run
from trainkit.loop import steps_per_epoch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_SIZES = ["0.05", "0.1", "0.25", "0.5", "1.0"]
STILL_FALLING = 0.05  # relative fall of val loss between the last two sizes


def learning_curve(
    cfg: DictConfig, out_dir: Path, sizes: list[str] | None = None,
    keep: list[str] | None = None, steps: list[str] | None = None,
) -> dict:
    values, held, budget = parse_sizes(sizes), parse_keep(keep, steps), parse_steps(steps)
    plan, basis = epochs_plan(cfg, train_counts(cfg, values), held, budget)
    console.console.print(f"learning curve: {basis}", highlight=False, soft_wrap=True)
    points = []
    for size, epochs in zip(values, plan, strict=True):
        job = copy.deepcopy(cfg)
        job.data.train_size = size
        job.trainer.epochs = epochs
        summary = run(job, out_dir / f"train_size={size:g}")
        final = summary.final
        points.append({
            "train_size": summary.dataset["train"],
            "epochs": summary.epochs_run,
            "steps": final["step"],
            "train_loss": final["train_loss"],
            "val_loss": final["val_loss"],
            "train_acc": final["train_acc"],
            "val_acc": final["val_acc"],
        })
    points.sort(key=lambda p: p["train_size"])
    verdict = f"{judge(points)}; {basis}"
    write_outputs(points, verdict, out_dir, f"the same {held.replace('steps', 'optimizer steps')}")
    console.console.print(f"[bold]learning curve:[/] {verdict}", soft_wrap=True)
    console.console.print(f"plot: {out_dir / 'learning_curve.png'}", highlight=False)
    return {"points": points, "verdict": verdict}


def parse_sizes(sizes: list[str] | None) -> list[float]:
    try:
        values = [float(s) for s in sizes or DEFAULT_SIZES]
    except ValueError:
        raise UserError(f"sizes={','.join(sizes)}: give counts or fractions, e.g. "
                        "sizes=1000,4000,0.5") from None
    if any(v <= 0 for v in values):
        raise UserError("sizes must be > 0: counts (> 1) or fractions (<= 1)")
    return values


def train_counts(cfg: DictConfig, sizes: list[float]) -> list[int]:
    """How many training samples each size gives, as the run will carve them (data.plan)."""
    _, arrays = data.read(cfg.data, keep=True)  # kept: the first run takes them
    _, train_y, _, test_y = data.select(cfg.data, arrays)
    counts = []
    for size in sizes:
        job = copy.deepcopy(cfg.data)
        job.train_size = size
        counts.append(len(data.plan(job, train_y, test_y).train_idx))
    return counts


def parse_keep(keep: list[str] | None, steps: list[str] | None) -> str:
    held = (keep or ["steps"])[0]
    if held not in ("steps", "epochs"):
        raise UserError(f"keep={held}: choose steps (the same optimizer steps for every size) "
                        "or epochs")
    if held == "epochs" and steps:
        raise UserError("steps= sets the budget of keep=steps; keep=epochs trains "
                        "trainer.epochs at every size")
    return held


def epochs_plan(
    cfg: DictConfig, counts: list[int], keep: str, budget: int | None
) -> tuple[list[int], str]:
    """Epochs for each size, and the sentence that says what was held equal."""
    per_epoch = [steps_per_epoch(n, cfg.trainer) for n in counts]
    epochs = cfg.trainer.epochs
    if keep == "epochs":
        spread = f"{min(per_epoch) * epochs:,} to {max(per_epoch) * epochs:,} steps"
        return [epochs] * len(counts), (
            f"every size trained {epochs} epochs ({spread}): the small sizes trained less, so "
            "the curve mixes data with training length")
    budget = budget or max(per_epoch) * epochs
    plan = [max(1, round(budget / n)) for n in per_epoch]
    return plan, f"every size trained about {budget:,} optimizer steps (epochs: " + ", ".join(
        f"{e} for {n:,}" for e, n in zip(plan, counts, strict=True)) + ")"


def parse_steps(steps: list[str] | None) -> int | None:
    if not steps:
        return None
    try:
        value = int(steps[0])
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"steps={steps[0]}: give a whole number of optimizer steps >= 1")
    return value


def judge(points: list[dict]) -> str:
    if len(points) < 2:
        return "one size only: give sizes=a,b,c to see a trend"
    before, last = points[-2]["val_loss"], points[-1]["val_loss"]
    fall = (before - last) / before
    if fall > STILL_FALLING:
        sizes = f"{points[-2]['train_size']:,} to {points[-1]['train_size']:,} samples"
        return f"more data would help: val loss still fell {fall:.0%} from {sizes}"
    return (f"val loss has flattened ({fall:+.0%} over the last size): more data will not help "
            "much; a bigger model, longer training or less regularization will")


def write_outputs(points: list[dict], verdict: str, out_dir: Path, held: str) -> None:
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
    ax.set(xscale="log", xlabel="training-set size", ylabel="loss",
           title=f"learning curve: {held} for every size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, verdict[:160], fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out_dir / "learning_curve.png", dpi=100)
    plt.close(fig)
