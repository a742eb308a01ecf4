"""One training run, top to bottom: data -> model -> loss -> optimizer -> schedule -> callbacks
-> fit -> test -> summary. `trainkit` (cli.py) calls `run` inside Hydra's run dir."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from trainkit import checkpoint, console, data, distributed, hparams, layout, runtime, transfer
from trainkit import resume as resume_run
from trainkit.augment import Augment, TestTimeViews
from trainkit.callbacks import Callback, Checkpointer, CSVLogger, EarlyStopping, TensorBoardLogger
from trainkit.config import TRANSFER_KEYS, shorten_aliases
from trainkit.diagnostics import Diagnostics
from trainkit.errors import Interrupted, UserError, first_line, instantiation_reason
from trainkit.init import build_fill, initialize
from trainkit.loop import (
    DIVERGED,
    INTERRUPTED,
    FitState,
    Outcome,
    Training,
    evaluate,
    fit,
    steps_per_epoch,
    weight_tensors,
)
from trainkit.losses import build_loss
from trainkit.precision import choose as choose_precision
from trainkit.precision import latest as latest_precision
from trainkit.schedule import build_scheduler
from trainkit.summary import Summary
from trainkit.summary import write as write_summary
from trainkit.verdict import diagnose, run_overrides


def build_model(cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model class's own arguments: the transfer keys are trainkit's (transfer.py)."""
    args = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in TRANSFER_KEYS])
    try:
        model = instantiate(args, input_shape=input_shape, num_classes=num_classes)
    except InstantiationException as e:  # Hydra wraps what the constructor raised
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise UserError(f"model cannot be built: {instantiation_reason(e)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model._target_={cfg._target_} gave a {type(model).__name__}, not a torch "
            "nn.Module: name a module class whose constructor takes input_shape and num_classes"
        )
    return model


def user_targets(cfg: DictConfig) -> set[tuple[str, str]]:
    """The classes this run's own config names: a checkpoint may name them too (checkpoint)."""
    return checkpoint.targets_in(OmegaConf.to_container(cfg, resolve=True))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for the weight tensors only (loop.weight_tensors); frozen ones left out.
    Without weight decay, one group: a fused optimizer then updates everything in one call."""
    if not weight_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decayed = weight_tensors(model)
    ids = {id(p) for p in decayed}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": decayed}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(cfg: DictConfig, model: nn.Module) -> Optimizer:
    # fused=None picks the fused kernel: one pass over all parameters instead of a loop of
    # small ops per tensor: faster training, on the CPU too.
    devices = {p.device.type for p in model.parameters()}
    auto = "fused" in cfg and cfg.fused is None and devices <= {"cpu", "cuda"}  # not "meta"
    fused = {"fused": True} if auto else {}
    try:
        groups = param_groups(model, cfg.get("weight_decay", 0.0))
        optimizer = instantiate(cfg)(params=groups, **fused)
    except (InstantiationException, ValueError, TypeError) as e:
        raise UserError(f"optimizer: {instantiation_reason(e)}") from None
    if not isinstance(optimizer, Optimizer):
        raise UserError(
            f"optimizer._target_={cfg._target_} gave a {type(optimizer).__name__}, not a "
            "torch.optim.Optimizer: name an optimizer class (with _partial_: true)"
        )
    return optimizer


def dry_build(cfg: DictConfig) -> None:
    """Build the model and optimizer on the meta device and run one forward pass of 2 images:
    any problem with their settings surfaces here, before a run starts, at little cost in
    memory (the model's size, uninitialized, for a moment) or time."""
    spec = data.spec(cfg.data)
    mean, _ = data.normalization(cfg.data)
    if len(mean) != spec.input_shape[0]:
        raise UserError(
            f"data.mean has {len(mean)} values but {cfg.data.name} images have "
            f"{spec.input_shape[0]} channel(s)"
        )
    n_classes = len(cfg.data.classes) if cfg.data.classes else len(spec.class_names)
    with torch.device("meta"):
        model = build_model(cfg.model, spec.input_shape, n_classes)
        with warnings.catch_warnings():  # loading into meta tensors is a no-op, and says so
            warnings.simplefilter("ignore")
            transfer.apply(model, cfg.model, user_targets(cfg))
    build_rest(cfg, model)  # the model's parameters are still meta tensors
    # The forward pass runs on uninitialized CPU memory (no initializers run, no weights load),
    # not on meta tensors: meta batch norm goes through torch's Python decompositions, whose
    # import is slow enough to weigh on every start-up.
    model.to_empty(device="cpu")
    try:
        with torch.no_grad():
            model(torch.zeros(2, *spec.input_shape))
    except RuntimeError as e:
        raise UserError(f"model cannot run on {cfg.data.name} images: {first_line(e)}") from None


def build_rest(cfg: DictConfig, model: nn.Module) -> None:
    """Optimizer and schedule for `model`, the initializer (resolved, not run) and the loss:
    what a dry build checks besides the model."""
    optimizer = build_optimizer(cfg.optimizer, model)
    build_scheduler(cfg.scheduler, optimizer, 10, cfg.trainer.epochs)
    build_fill(cfg.init)
    build_loss(cfg.loss)


def check_builds(cfg: DictConfig, model_changed: bool) -> None:
    """The pre-flight dry build when the model or data changed (a forward pass: slow for a
    ResNet on a busy CPU); otherwise only optimizer, schedule, initializer and loss, on a
    one-weight stand-in model. What the verdict's advice is checked with (verdict.Builds)."""
    if model_changed:
        dry_build(cfg)
    else:
        build_rest(cfg, nn.Linear(1, 1))


def summarize(
    outcome: Outcome, test: dict, run_dir: Path, dataset: data.Data, model: nn.Module,
    wall: float,
) -> Summary:
    """summary.json's contents, but for what the run learns after scoring (confusion matrix,
    diagnosis, alerts): final, best and test metrics, how and why the run ended, speed and
    provenance."""
    state, history = outcome.state, outcome.state.history
    summary = Summary(str(run_dir), outcome.status, outcome.reason, test=test, wall_time_s=wall)
    if not history:  # stopped in the first epoch
        return summary
    summary.final, summary.best, summary.epochs_run = history[-1], state.best, len(history)
    trained = sum(m["samples_per_s"] * m["train_time_s"] for m in history)
    summary.train_samples_per_s = trained / sum(m["train_time_s"] for m in history)
    summary.device = str(dataset.train.labels.device)
    summary.parameters = sum(p.numel() for p in model.parameters())
    summary.dataset = {"source": str(dataset.source), "train": len(dataset.train),
                       "val": len(dataset.val), "test": len(dataset.test)}
    summary.torch = torch.__version__
    summary.threads = torch.get_num_threads()  # per process
    summary.precision = chosen.as_dict() if (chosen := latest_precision()) else None
    summary.distributed = distributed.describe()
    return summary


def build(cfg: DictConfig) -> tuple[data.Data, Training]:
    """Process settings, data on the device, and the Training bundle: model (initialized, and
    loaded/frozen for transfer learning), loss, optimizer, schedule, normalization, augment."""
    device = runtime.setup(cfg.trainer)
    dataset = data.load(cfg.data, device, cfg.trainer.channels_last)
    channels_last = cfg.trainer.channels_last and len(dataset.input_shape) == 3
    normalize = data.Normalizer(dataset.mean, dataset.std, device, channels_last)

    model = build_model(cfg.model, dataset.input_shape, dataset.num_classes)
    initialize(model, cfg.init)
    if cfg.model.get("from_checkpoint") or cfg.model.get("freeze"):  # a user's model may lack them
        replaced, differing = transfer.apply(model, cfg.model, user_targets(cfg))
        if replaced:
            console.console.print(f"not loaded (new shape, initialized): {', '.join(replaced)}")
        for warning in differing:  # settings that change what the loaded weights compute
            console.warn(warning)
        console.console.print(transfer.parameter_table(model))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # layout.py: measured on the CPU. A resumed run's config from before the option trained
    # its weights row-major, and goes on so.
    if OmegaConf.select(cfg.trainer, "transposed_linear", default=False) and device.type == "cpu":
        layout.transpose_wide_linears(model)
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = build_scheduler(
        cfg.scheduler, optimizer, steps_per_epoch(len(dataset.train), cfg.trainer),
        cfg.trainer.epochs,
    )
    augment = Augment(cfg.augment)
    tta = TestTimeViews.from_config(cfg.augment)
    if tta.hflip and not cfg.augment.hflip:
        console.warn(
            "augment.tta_hflip=true but the model never sees mirrored images in training "
            "(augment.hflip=0): test-time mirroring is likely to hurt (measured: 0.836 test acc "
            "with it vs 0.92 without); add augment.hflip=0.5"
        )
    if tta.shift > cfg.augment.translate:
        console.warn(
            f"augment.tta_shift={tta.shift} but training shifts images by "
            f"{cfg.augment.translate} px at most (augment.translate): test-time views shifted "
            f"further are likely to hurt; set augment.translate={tta.shift} or more"
        )
    chosen = choose_precision(cfg.trainer.precision, device)  # auto: may probe the CPU once
    if chosen.warning:
        console.warn(chosen.warning)
    autocast = chosen.dtype
    scaler = torch.amp.GradScaler(device.type) if autocast is torch.float16 else None
    forward = distributed.wrap(model, device) if distributed.enabled() else model
    interval = cfg.scheduler.get("interval", "epoch")  # a user's schedule may leave it out
    training = Training(
        model, build_loss(cfg.loss), optimizer, scheduler, interval, normalize,
        augment if augment.active else None, cfg.regularization, cfg.trainer, autocast, scaler,
        torch.compile(forward) if cfg.trainer.compile else forward, tta,
    )
    return dataset, training


@dataclass
class Observers:
    """What rank 0 (the only process, or torchrun's first) adds to a run: the console's
    progress, TensorBoard, metrics.csv, diagnostics and checkpoints. The other ranks run the
    deciding callbacks alone: no files, no console."""

    tensorboard: TensorBoardLogger
    diagnostics: Diagnostics | None
    checkpointer: Checkpointer
    watching: list[Callback]  # the ones that only watch, before the deciding callbacks

    @classmethod
    def create(cls, cfg: DictConfig, run_dir: Path, t: Training, resumed: bool) -> Observers:
        tensorboard = TensorBoardLogger(
            run_dir, OmegaConf.to_yaml(cfg), t.optimizer, cfg.trainer.log_every_n_steps,
            hparams.collect(cfg), cfg.trainer.monitor, resumed,
        )
        watching = [console.ProgressPrinter(cfg.trainer.batch_size), tensorboard,
                    CSVLogger(run_dir / "metrics.csv")]
        diagnostics = None
        if cfg.diagnostics.enabled:
            diagnostics = Diagnostics(cfg.diagnostics, t.model, tensorboard.writer)
            watching.append(diagnostics)
        checkpointer = Checkpointer(
            run_dir / "checkpoints", lambda: snapshot(t), OmegaConf.to_container(cfg, resolve=True),
            cfg.trainer.checkpoint_every_n_epochs, resumed,
        )
        return cls(tensorboard, diagnostics, checkpointer, watching)

    def around(self, deciding: list[Callback]) -> list[Callback]:
        """All the run's callbacks, the checkpointer last: it saves what the others did."""
        callbacks = [*self.watching, *deciding, self.checkpointer]
        self.checkpointer.watch(callbacks)
        return callbacks


def snapshot(t: Training) -> dict:
    """What a checkpoint keeps of the model, optimizer, schedule and loss scaler."""
    return {
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
    }


def run(cfg: DictConfig, run_dir: Path, resume: dict | None = None) -> Summary:
    """Train as `cfg` says, write the run's outputs into `run_dir`, return the summary.
    With `resume` (a checkpoint of this run, see resume.py), go on from where it was saved.
    Under torchrun every rank runs this; rank 0 alone writes files and prints."""
    start = time.perf_counter()
    main = distributed.is_main()  # the rank's role, decided once
    console.compact = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if main and cfg.trainer.get("verbose", False):  # a config saved before the key: no
        console.print_config(cfg)
    dataset, training = build(cfg)
    overrides = run_overrides(run_dir)  # the command that started the run, if known
    if main:
        typed = [shorten_aliases(o) for o in overrides or []]
        console.print_header(cfg, run_dir, dataset, training, typed, hparams.group_choices(run_dir))
        if resume is not None:
            resume_run.take_back_later_outputs(run_dir, resume)
    observers = Observers.create(cfg, run_dir, training, resume is not None) if main else None
    deciding = deciding_callbacks(cfg, training.model)
    callbacks = observers.around(deciding) if observers else deciding
    state = None if resume is None else restored(cfg, run_dir, training, dataset, resume, main)
    if observers and resume is None and cfg.diagnostics.pictures and training.augment is not None:
        preview_augmentation(dataset, training, observers.tensorboard)
    try:
        outcome = fit(training, dataset, callbacks, state, resume and resume["callbacks"])
    except BaseException as e:  # a second Ctrl-C or a crash: leave the event file readable
        if observers:
            stopped = isinstance(e, KeyboardInterrupt)
            observers.tensorboard.close("interrupted" if stopped else "failed")
        raise
    if outcome.kind == INTERRUPTED:
        stop_interrupted(outcome, observers, run_dir, dataset, training.model, start)
    if observers is None:
        return other_rank_ends(cfg, dataset, training, outcome)
    return finish(cfg, run_dir, dataset, training, outcome, observers, overrides, start)


def restored(
    cfg: DictConfig, run_dir: Path, training: Training, dataset: data.Data, resume: dict,
    main: bool,
) -> FitState:
    """The fit's state from the checkpoint `resume`, with the model, optimizer and RNGs."""
    state = resume_run.restore(resume, training, dataset.train.labels.device)
    if main:
        console.console.print(f"resuming {run_dir} at epoch {state.epoch}, step {state.step}",
                              highlight=False, soft_wrap=True)
        return state
    if state.progress is not None:  # rank 0 carries the interrupted epoch's sums
        state.progress.forget_totals()
    # The checkpoint holds rank 0's random state: this rank augments differently.
    torch.manual_seed(cfg.trainer.seed + 1000 * distributed.rank() + state.step)
    return state


def finish(
    cfg: DictConfig, run_dir: Path, dataset: data.Data, training: Training, outcome: Outcome,
    observers: Observers, overrides: list[str] | None, start: float,
) -> Summary:
    """Rank 0 after the fit: test score, summary.json, TensorBoard's last entries, the summary
    on the console; a run that diverged ends with its error line after all that is written."""
    diverged = outcome.kind == DIVERGED
    test = {"loss": math.nan, "acc": math.nan} if diverged else test_score(cfg, dataset, training)
    matrix = test.pop("confusion_matrix", None)
    wall = time.perf_counter() - start
    summary = summarize(outcome, test, run_dir, dataset, training.model, wall)
    state = outcome.state
    if matrix is not None:
        summary.confusion_matrix = {"classes": dataset.class_names, "counts": matrix.tolist()}
        if cfg.diagnostics.pictures:
            draw_pictures(matrix, dataset, state, observers.tensorboard, run_dir)
    summary.diagnosis = diagnose(state.history, cfg, diverged, overrides, state.initial_loss,
                                 dataset.num_classes, check_builds)
    summary.alerts = sorted(observers.diagnostics.alerted) if observers.diagnostics else []
    write_summary(run_dir, summary)
    observers.tensorboard.finish(summary, state.step)
    console.print_summary(summary)
    if diverged:
        folder = run_dir / "checkpoints"
        kept = (f"its best epoch is in {folder}/best.pt" if state.history
                else f"the last good checkpoint is {folder}/last.pt")
        advice = summary.diagnosis["advice"]
        tries = f": try {', '.join(advice)}" if advice else ""
        raise UserError(f"{outcome.reason}{tries}; {kept}")
    return summary


def draw_pictures(
    matrix: torch.Tensor, dataset: data.Data, state: FitState, tb: TensorBoardLogger,
    run_dir: Path,
) -> None:
    from trainkit import plots  # matplotlib: only when pictures are asked for

    figure = plots.confusion_figure(matrix, dataset.class_names)
    tb.writer.add_figure("test/confusion_matrix", figure, state.step)
    plots.learning_curves_png(state.history, run_dir / "curves.png")


def other_rank_ends(
    cfg: DictConfig, dataset: data.Data, training: Training, outcome: Outcome
) -> Summary:
    """A rank other than 0 under torchrun: the same test evaluation as rank 0 (collectives
    need every rank); rank 0 says how the run ended."""
    if outcome.kind == DIVERGED:
        raise UserError(outcome.reason)
    test = test_score(cfg, dataset, training)
    del test["confusion_matrix"]
    return Summary("", outcome.status, outcome.reason, best=outcome.state.best, test=test)


def test_score(cfg: DictConfig, dataset: data.Data, training: Training) -> dict:
    """Loss, accuracy and confusion matrix on the test set, with test-time augmentation."""
    return evaluate(training.model, dataset.test, training.normalize, training.loss_fn,
                    cfg.trainer.eval_batch_size, training.tta, dataset.num_classes)


def deciding_callbacks(cfg: DictConfig, model: nn.Module) -> list[Callback]:
    """The callbacks that change how training goes (all others only watch): every rank runs
    them, on the same all-reduced metrics, so all ranks decide alike."""
    if cfg.regularization.early_stopping.enabled:
        return [EarlyStopping(cfg.regularization.early_stopping, model)]
    return []


def preview_augmentation(dataset: data.Data, training: Training, tb: TensorBoardLogger) -> None:
    """What the model sees, next to the originals, in TensorBoard's IMAGES tab."""
    import torchvision  # slow to import: only when needed

    originals = dataset.train.images[:32]
    devices = [originals.device] if originals.is_cuda else []
    with torch.random.fork_rng(devices=devices):  # the preview must not change training
        augmented = training.augment(originals)
    for tag, images in (("originals", originals.float()), ("augmented", augmented)):
        grid = torchvision.utils.make_grid(images / 255, nrow=8, pad_value=1.0)
        tb.writer.add_image(f"inputs/{tag}", grid, 0)  # step 0: before training


def stop_interrupted(
    outcome: Outcome, observers: Observers | None, run_dir: Path, dataset: data.Data,
    model: nn.Module, start: float,
) -> NoReturn:
    """After SIGINT/SIGTERM (the checkpointer saved last.pt): summary.json and the logs say
    where the run stopped, and the error says how to go on."""
    state = outcome.state
    if observers is None:
        raise Interrupted(state.interrupted, f"rank {distributed.rank()} stopped")
    summary = summarize(outcome, {"loss": math.nan, "acc": math.nan}, run_dir, dataset, model,
                        time.perf_counter() - start)
    write_summary(run_dir, summary)
    observers.tensorboard.close("interrupted")
    console.console.print(f"saved {observers.checkpointer.saved}", highlight=False, soft_wrap=True)
    raise Interrupted(
        state.interrupted,
        f"{outcome.reason}; go on with: {distributed.launcher()}trainkit resume={run_dir}",
    )
