"""`trainkit study <name> [overrides]`: the course material's claims about training, each run
as a small experiment and measured (`trainkit study list` names them; docs/studies.md has the
results).

A study is a set of ordinary trainkit runs (variants) that differ in one choice, so each one is
in TensorBoard as usual, plus a measurement that answers the claim: a one-line result, a figure
and result.json in outputs/studies/<name>/<date>/<time>/. Overrides on the command line apply
to every variant (before the variant's own settings): `data.train_size=0.1 epochs=2` makes a
quick version of any study.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import matplotlib
import matplotlib.ticker
import torch

from trainkit import checkpoint, console
from trainkit.config import compose_config
from trainkit.errors import UserError
from trainkit.experiment import run
from trainkit.init_report import measure_at_init, probe_batch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Run:
    """One variant's outcome: its summary.json, metrics.csv rows and run dir."""

    label: str
    run_dir: Path
    summary: dict
    history: list[dict]
    failed: str | None = None  # why it failed (e.g. the loss became NaN)

    def last(self, key: str) -> float:
        return self.history[-1][key] if self.history else math.nan

    def first(self, key: str) -> float:
        """After epoch 1; NaN for a variant that diverged before finishing one."""
        return self.history[0][key] if self.history else math.nan

    def lowest(self, key: str) -> float:
        return min((h[key] for h in self.history), default=math.nan)

    def weights(self) -> dict[str, torch.Tensor]:
        return checkpoint.load(self.run_dir / "checkpoints" / "last.pt")["model"]


@dataclass
class Finding:
    """What a study measured: the one-line result, the numbers behind it, and optional
    per-layer profiles to plot (label -> values per layer)."""

    result: str
    numbers: dict
    profiles: dict[str, list[float]] = field(default_factory=dict)
    profile_label: str = ""
    extra: Callable[[plt.Axes], None] | None = None  # draws one more panel of its own


@dataclass
class Study:
    claim: str
    base: list[str]  # overrides every variant shares
    variants: dict[str, list[str]]  # label -> its own overrides
    panels: list[str]  # metrics.csv columns plotted per epoch, one panel each
    measure: Callable[[dict[str, Run], list[str]], Finding]


def run_variants(study: Study, user: list[str], out_dir: Path) -> dict[str, Run]:
    runs = {}
    for label, own in study.variants.items():
        cfg = compose_config([*study.base, *user, *own])
        run_dir = out_dir / label
        console.console.rule(f"{label}: {' '.join(own)}")
        failed = None
        try:
            summary = run(cfg, run_dir)
        except UserError as e:  # a diverged variant is a result, not an error
            failed = str(e)
            summary = json.loads((run_dir / "summary.json").read_text())
        history = []
        if (run_dir / "metrics.csv").exists():  # not when the first epoch diverged
            with (run_dir / "metrics.csv").open() as f:
                history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        runs[label] = Run(label, run_dir, summary, history, failed)
    return runs


def gap(r: Run) -> float:
    """Train minus val accuracy, last epoch: how much the model fits the training set only."""
    return r.last("train_acc") - r.last("val_acc")


def at_init(user: list[str], variants: dict[str, list[str]], base: list[str]) -> dict[str, list]:
    """Per variant, init_report's per-layer measurements on one batch of real data at step 0."""
    rows = {}
    for label, own in variants.items():
        cfg = compose_config([*base, *user, *own])
        rows[label] = measure_at_init(cfg, cfg.init, *probe_batch(cfg))
    return rows


def listing(values: dict, spec: str = ".3f") -> str:
    """'a 0.912, b 0.874': labelled numbers for a result line."""
    return ", ".join(f"{k} {v:{spec}}" for k, v in values.items())


def accuracies(runs: dict[str, Run]) -> str:
    return ", ".join(f"{k} {fmt_acc(r)}" for k, r in runs.items())


def fmt_acc(r: Run) -> str:
    return "diverged" if r.failed else f"{r.last('val_acc'):.3f}"


# ------------------------------------------------------------------ the claims, one each

DEEP_RELU = ["model=mlp", "model.hidden=[256,256,256,256,256,256]", "model.activation=relu"]
SGD = ["optimizer=momentum", "lr=0.01", "scheduler=none"]


def symmetry(runs: dict[str, Run], user: list[str]) -> Finding:
    counts = {}
    for label, r in runs.items():
        w = r.weights()["net.fc1.weight"]  # [hidden, inputs]
        same = torch.cdist(w, w) <= 1e-6 * w.abs().max().clamp_min(1e-12)
        counts[label] = int((same.sum(dim=1) > 1).sum())  # units with an identical twin
    n = len(w)
    result = (f"hidden units with an identical twin after training: {counts['constant']}/{n} "
              f"with constant init vs {counts['he_normal']}/{n} with he_normal; val acc "
              f"{fmt_acc(runs['constant'])} vs {fmt_acc(runs['he_normal'])}")  # fmt: skip
    return Finding(result, {"identical_units": counts, "hidden": n})


def profiles_at_init(name: str, user: list[str], key: str) -> dict[str, list[float]]:
    """Per variant of study `name`, init_report's `key` (grad_std, act_std) per layer at step 0."""
    study = STUDIES[name]
    rows = at_init(user, study.variants, study.base)
    return {label: [row[key] for row in layer_rows] for label, layer_rows in rows.items()}


def first_to_last(profile: list[float]) -> float:
    """Gradient std reaching the first layer over that at the last: < 1 vanishing, > 1 growing."""
    return profile[0] / profile[-1]


def init_scale(runs: dict[str, Run], user: list[str]) -> Finding:
    profiles = profiles_at_init("init_scale", user, "grad_std")
    ratios = {label: first_to_last(p) for label, p in profiles.items()}
    result = (f"input-gradient std, first layer / last layer, at init (6 ReLU layers): "
              f"{listing(ratios, '.2g')}; val acc after training: {accuracies(runs)}")  # fmt: skip
    numbers = {"first_over_last_grad_std": ratios,
               "val_acc": {k: r.last("val_acc") for k, r in runs.items()}}  # fmt: skip
    return Finding(result, numbers, profiles, "input-gradient std at init")


def sigmoid_relu(runs: dict[str, Run], user: list[str]) -> Finding:
    profiles = profiles_at_init("sigmoid_vs_relu", user, "grad_std")
    ratios = {label: first_to_last(p) for label, p in profiles.items()}
    losses = {k: r.last("train_loss") for k, r in runs.items()}
    result = (f"first/last layer gradient std at init (8 layers): {listing(ratios, '.2g')}; "
              f"train loss after training: {listing(losses)}")  # fmt: skip
    numbers = {"first_over_last_grad_std": ratios, "train_loss": losses}
    return Finding(result, numbers, profiles, "input-gradient std at init")


def init_match(runs: dict[str, Run], user: list[str]) -> Finding:
    profiles = profiles_at_init("xavier_vs_he", user, "act_std")
    ratios = {label: p[-2] / p[0] for label, p in profiles.items()}  # last hidden / first
    result = (f"activation std, last hidden layer / first, at init (10 layers): "
              f"{listing(ratios, '.2g')}; val acc: {accuracies(runs)}")  # fmt: skip
    numbers = {"last_over_first_act_std": ratios,
               "val_acc": {k: r.last("val_acc") for k, r in runs.items()}}  # fmt: skip
    return Finding(result, numbers, profiles, "activation std at init")


def residual(runs: dict[str, Run], user: list[str]) -> Finding:
    res, plain = runs["residual"], runs["plain"]
    result = (f"after {len(res.history)} epochs, train loss {res.last('train_loss'):.3f} with "
              f"residual connections vs {plain.last('train_loss'):.3f} without; val acc "
              f"{fmt_acc(res)} vs {fmt_acc(plain)}")  # fmt: skip
    return Finding(result, {k: {"train_loss": r.last("train_loss"), "val_acc": r.last("val_acc")}
                            for k, r in runs.items()})  # fmt: skip


def learning_rate(runs: dict[str, Run], user: list[str]) -> Finding:
    from trainkit.lr_finder import lr_find

    cfg = compose_config([*STUDIES["learning_rate"].base, *user])
    found = lr_find(cfg, runs["lr=0.1"].run_dir.parent / "lr_find")
    suggested = found["suggested_lr"]
    tuned = run(compose_config([*STUDIES["learning_rate"].base, *user, f"lr={suggested:.3g}"]),
                runs["lr=0.1"].run_dir.parent / "lr=suggested")  # fmt: skip
    parts = [f"{k}: {fmt_acc(r)}" for k, r in runs.items()]
    result = (
        f"val acc after {len(runs['lr=0.1'].history)} epochs of SGD, "
        + ", ".join(parts)
        + f"; lr range test suggests lr={suggested:.2g} -> {tuned['final']['val_acc']:.3f}"
    )
    return Finding(result, {"val_acc": {k: r.last("val_acc") for k, r in runs.items()},
                            "failed": {k: r.failed is not None for k, r in runs.items()},
                            "suggested_lr": suggested,
                            "suggested_val_acc": tuned["final"]["val_acc"]})  # fmt: skip


def compare_losses(metric: str, what: str) -> Callable[[dict[str, Run], list[str]], Finding]:
    def finding(runs: dict[str, Run], user: list[str]) -> Finding:
        first = {k: r.first(metric) for k, r in runs.items()}
        last = {k: r.last(metric) for k, r in runs.items()}
        epochs = len(next(iter(runs.values())).history)
        result = f"{what} after epoch 1: {listing(first)}; after {epochs}: {listing(last)}"
        return Finding(result, {"epoch1": first, "last": last})

    return finding


def overfitting_gap(runs: dict[str, Run], user: list[str]) -> Finding:
    gaps = {k: gap(r) for k, r in runs.items()}
    result = (f"train-val accuracy gap at the last epoch: {listing(gaps, '+.3f')}; "
              f"val acc: {accuracies(runs)}")  # fmt: skip
    return Finding(result, {"gap": gaps, "val_acc": {k: r.last("val_acc") for k, r in runs.items()},
                            "best_val_loss": {k: r.lowest("val_loss")
                                              for k, r in runs.items()}})  # fmt: skip


def sparsity(runs: dict[str, Run], user: list[str]) -> Finding:
    stats = {}
    for label, r in runs.items():
        w = torch.cat([t.flatten() for k, t in r.weights().items() if k.endswith("weight")])
        stats[label] = {"zero": float((w == 0).float().mean()),
                        "below_1e-3": float((w.abs() < 1e-3).float().mean()),
                        "mean_abs": float(w.abs().mean())}  # fmt: skip
    result = ("weights exactly 0 / |w| < 1e-3 / mean |w|: " + "; ".join(
        f"{k} {s['zero']:.1%} / {s['below_1e-3']:.1%} / {s['mean_abs']:.4f}"
        for k, s in stats.items()))  # fmt: skip
    return Finding(result, stats)


def early_stopping(runs: dict[str, Run], user: list[str]) -> Finding:
    full, stopped = runs["no_early_stopping"], runs["early_stopping"]
    if full.failed or stopped.failed:
        return Finding(f"a run diverged ({full.failed or stopped.failed}): nothing to compare", {})
    best_epoch = int(min(full.history, key=lambda h: h["val_loss"])["epoch"])
    stop_epoch = len(stopped.history)
    restored = int(stopped.summary["best"]["epoch"]) if stopped.summary.get("best") else 0
    result = (f"the full run's val loss is lowest at epoch {best_epoch} of {len(full.history)}; "
              f"early stopping (patience {PATIENCE}) stopped at epoch {stop_epoch} and kept the "
              f"weights of epoch {restored}")  # fmt: skip
    return Finding(result, {"min_val_loss_epoch": best_epoch, "stopped_at": stop_epoch,
                            "epochs_full": len(full.history)})  # fmt: skip


def batch_norm(runs: dict[str, Run], user: list[str]) -> Finding:
    result = ("val acc after epoch 1 / last: " + "; ".join(
        f"{k} {r.first('val_acc'):.3f} / {fmt_acc(r)}" for k, r in runs.items()))  # fmt: skip
    return Finding(result, {k: {"epoch1_val_acc": r.first("val_acc"),
                                "last_val_acc": r.last("val_acc"), "failed": r.failed is not None}
                            for k, r in runs.items()})  # fmt: skip


def learning_curves(runs: dict[str, Run], user: list[str]) -> Finding:
    points: dict[str, dict[int, dict]] = {}
    for label, r in runs.items():
        model, _, size = label.partition("@")
        if not r.history:  # diverged in its first epoch: no point on the curve
            continue
        points.setdefault(model, {})[r.summary["dataset"]["train"]] = {
            "train_loss": r.last("train_loss"), "val_loss": r.last("val_loss"),
            "gap": r.last("val_loss") - r.last("train_loss")}  # fmt: skip
    parts = []
    for model, by_size in points.items():
        small, large = min(by_size), max(by_size)
        parts.append(f"{model}: val-train loss gap {by_size[small]['gap']:+.3f} at {small:,} "
                     f"samples, {by_size[large]['gap']:+.3f} at {large:,}; val loss "
                     f"{by_size[large]['val_loss']:.3f} at {large:,}")  # fmt: skip
    numbers = {model: {str(n): v for n, v in by_size.items()} for model, by_size in points.items()}

    def against_size(ax: plt.Axes) -> None:
        for (model, by_size), colour in zip(points.items(), ("tab:blue", "tab:red"), strict=False):
            sizes = sorted(by_size)
            for key, style in (("train_loss", "--o"), ("val_loss", "-s")):
                values = [by_size[n][key] for n in sizes]
                ax.plot(sizes, values, style, color=colour, ms=4, label=f"{model} {key}")
        ax.set(xscale="log", xlabel="training-set size", ylabel="loss (last epoch)",
               title="learning curves")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    return Finding("; ".join(parts), numbers, extra=against_size)


PATIENCE = 3
SIZES = [0.01, 0.04, 0.15, 0.6]  # of the training split: 550 to 33,000 samples
MLP = ["model=mlp", "model.hidden=[128]"]
SMALL_TRAIN = ["data.train_size=0.1"]  # 5,500 samples: small enough to overfit

STUDIES: dict[str, Study] = {
    "symmetry": Study(
        "Initializing all weights to the same constant makes hidden units learn identical "
        "features (symmetry is never broken).",
        [*MLP, "epochs=3"],
        {"constant": ["init=constant"], "he_normal": ["init=he_normal"]},
        ["train_loss", "val_acc"],
        symmetry,
    ),
    "init_scale": Study(
        "Too-small initial weights make gradients vanish; too-large make them explode.",
        [*DEEP_RELU, *SGD, "epochs=2"],
        {
            "small": ["init=normal", "init.scale=0.01"],
            "he_normal": ["init=he_normal"],
            "large": ["init=normal", "init.scale=0.5"],
        },
        ["train_loss", "val_acc"],
        init_scale,
    ),  # fmt: skip
    "sigmoid_vs_relu": Study(
        "Sigmoid activations in deep networks make gradients vanish; ReLU does not.",
        ["model=mlp", "model.hidden=[128,128,128,128,128,128,128,128]", *SGD, "epochs=3"],
        {
            "sigmoid": ["model.activation=sigmoid", "init=xavier_normal"],
            "relu": ["model.activation=relu", "init=he_normal"],
        },
        ["train_loss", "val_acc"],
        sigmoid_relu,
    ),  # fmt: skip
    "xavier_vs_he": Study(
        "Xavier/Glorot init suits sigmoid/tanh; He init suits ReLU.",
        ["model=mlp", "model.hidden=[256,256,256,256,256,256,256,256,256,256]", *SGD, "epochs=2"],
        {
            f"{act}+{init}": [f"model.activation={act}", f"init={init}_normal"]
            for act in ("tanh", "relu")
            for init in ("xavier", "he")
        },
        ["train_loss", "val_acc"],
        init_match,
    ),  # fmt: skip
    "residual": Study(
        "Residual connections let a deep network train where its plain twin struggles.",
        [
            "model=resnet",
            "model.widths=[8,16,32]",
            "model.blocks=6",
            "optimizer=momentum",
            "lr=0.05",
            "scheduler=none",
            "data.train_size=0.2",
            "epochs=3",
        ],
        {"residual": ["model.residual=true"], "plain": ["model.residual=false"]},
        ["train_loss", "val_acc"],
        residual,
    ),  # fmt: skip
    "learning_rate": Study(
        "A learning rate too low converges slowly, too high diverges; a range test finds a "
        "good one.",
        [*MLP, "optimizer=sgd", "scheduler=none", "epochs=3"],
        {"lr=0.001": ["lr=0.001"], "lr=0.1": ["lr=0.1"], "lr=10": ["lr=10"]},
        ["train_loss", "val_acc"],
        learning_rate,
    ),
    "momentum": Study(
        "Momentum speeds up convergence of gradient descent.",
        [*MLP, "lr=0.01", "scheduler=none", "epochs=3"],
        {"sgd": ["optimizer=sgd"], "momentum_0.9": ["optimizer=momentum"]},
        ["train_loss", "val_acc"],
        compare_losses("train_loss", "train loss"),
    ),
    "adaptive": Study(
        "Adaptive optimizers (Adam, RMSprop) converge faster than plain SGD at their usual "
        "settings.",
        [*MLP, "scheduler=none", "epochs=3"],
        {
            "sgd_lr0.01": ["optimizer=sgd", "lr=0.01"],
            "adam_lr1e-3": ["optimizer=adam", "lr=1e-3"],
            "rmsprop_lr1e-3": ["optimizer=rmsprop", "lr=1e-3"],
        },
        ["train_loss", "val_acc"],
        compare_losses("train_loss", "train loss"),
    ),  # fmt: skip
    "dropout": Study(
        "Dropout narrows the gap between training and validation accuracy.",
        ["model=mlp", "model.hidden=[512,512]", *SMALL_TRAIN, "epochs=30"],
        {"dropout_0": ["model.dropout=0"], "dropout_0.5": ["model.dropout=0.5"]},
        ["train_acc", "val_acc"],
        overfitting_gap,
    ),
    "l1_vs_l2": Study(
        "L1 regularization drives many weights to exactly zero; L2 shrinks them without zeroing.",
        [*MLP, "epochs=5"],
        {"none": [], "l1": ["regularization.l1=1e-4"], "l2": ["regularization.l2=1e-3"]},
        ["train_loss", "val_acc"],
        sparsity,
    ),
    "augmentation": Study(
        "Data augmentation reduces overfitting.",
        ["model=cnn", *SMALL_TRAIN, "epochs=15"],
        {"none": ["augment=none"], "standard": ["augment=standard"]},
        ["train_acc", "val_acc"],
        overfitting_gap,
    ),
    "early_stopping": Study(
        "Early stopping halts near the minimum of the validation loss.",
        ["model=mlp", "model.hidden=[512,512]", *SMALL_TRAIN, "scheduler=none", "epochs=30"],
        {
            "no_early_stopping": [],
            "early_stopping": [
                "regularization=early_stopping",
                f"regularization.early_stopping.patience={PATIENCE}",
            ],
        },
        ["val_loss", "train_loss"],
        early_stopping,
    ),  # fmt: skip
    "batch_norm": Study(
        "Batch normalization speeds up and stabilizes training.",
        ["model=cnn", "optimizer=sgd", "scheduler=none", "data.train_size=0.2", "epochs=3"],
        {
            f"{bn}_lr{lr}": [f"model.batch_norm={bn == 'bn'}", f"lr={lr}"]
            for bn in ("bn", "no_bn")
            for lr in (0.01, 0.5)
        },
        ["train_loss", "val_acc"],
        batch_norm,
    ),  # fmt: skip
    "learning_curves": Study(
        "Learning curves against training-set size tell underfitting from overfitting.",
        ["model=mlp", "epochs=10"],
        {
            f"{name}@{n}": [f"model.hidden={hidden}", f"data.train_size={n}"]
            for name, hidden in (("small_mlp_[8]", "[8]"), ("large_mlp_[1024,1024]", "[1024,1024]"))
            for n in SIZES
        },
        [],  # the figure plots against size instead (Finding.extra)
        learning_curves,
    ),  # fmt: skip
}


def figure(name: str, study: Study, runs: dict[str, Run], finding: Finding, path: Path) -> None:
    panels = len(study.panels) + (1 if finding.profiles else 0) + (1 if finding.extra else 0)
    fig, axes = plt.subplots(1, panels, figsize=(max(5 * panels, 9), 4), squeeze=False)
    for ax, metric in zip(axes[0], study.panels, strict=False):
        for label, r in runs.items():
            epochs = [h["epoch"] for h in r.history]
            ax.plot(epochs, [h[metric] for h in r.history], "-o", ms=3, label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if finding.profiles:
        ax = axes[0][len(study.panels)]
        for label, values in finding.profiles.items():
            ax.plot(range(1, len(values) + 1), values, "-o", ms=3, label=label)
        ax.set(xlabel="layer", ylabel=finding.profile_label, yscale="log",
               title=finding.profile_label)  # fmt: skip
        ax.grid(alpha=0.3)
    if finding.extra is not None:
        finding.extra(axes[0][-1])
    if study.panels:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{name}: {study.claim}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_study(name: str, user: list[str], out_dir: Path) -> dict:
    study = STUDIES[name]
    runs = run_variants(study, user, out_dir)
    finding = study.measure(runs, user)
    figure(name, study, runs, finding, out_dir / f"{name}.png")
    seed = compose_config([*study.base, *user]).trainer.seed
    result = {"study": name, "claim": study.claim, "result": finding.result,
              "numbers": finding.numbers, "seed": seed, "runs_per_variant": 1,
              "overrides": user, "variants": study.variants}  # fmt: skip
    (out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    console.console.print(f"[bold]{name}:[/] {finding.result}", soft_wrap=True, highlight=False)
    where = f"figure: {out_dir / f'{name}.png'}; TensorBoard: tensorboard --logdir {out_dir}"
    console.console.print(where, highlight=False, soft_wrap=True)
    return result


def run_studies(name: str, overrides: list[str]) -> None:
    """`trainkit study <name|all> [overrides]` (cli.py checks the overrides first)."""
    names = list(STUDIES) if name == "all" else [name]
    if unknown := [n for n in names if n not in STUDIES]:
        raise UserError(f"study {unknown[0]!r} unknown: choose one of {', '.join(STUDIES)}")
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    for study in names:
        run_study(study, overrides, Path("outputs") / "studies" / study / stamp)
