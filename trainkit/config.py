"""Config schemas, the command-line aliases, and validation.

Every key the code reads is declared here, so Hydra rejects a typo or a wrong type while it
composes the config; `validate` then checks ranges and reports every problem at once.
The YAML files in `conf/` pick a schema through their defaults list
(`- /schema/optimizer/sgd@_here_`) and carry the commented values a user sees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from trainkit.errors import UserError
from trainkit.metrics import METRICS, MONITORABLE


def find_conf_dir() -> Path:
    """The config tree: trainkit/conf in an installed wheel, conf/ beside the package in a
    checkout (pyproject.toml ships the one as the other)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"trainkit's config tree is missing: no conf/config.yaml in or beside "
                       f"{package}; reinstall trainkit")


CONF_DIR = find_conf_dir()

# Short names on the command line for the keys everybody sweeps. They are rewritten into the
# full key before Hydra composes, so each value lives in one place and the saved config is true.
ALIASES = {
    "lr": "optimizer.lr",
    "epochs": "trainer.epochs",
    "batch_size": "trainer.batch_size",
    "seed": "trainer.seed",
    "device": "trainer.device",
}

@dataclass
class DataConfig:
    name: str = MISSING  # fashion_mnist | cifar10 | image_folder | MNIST, KMNIST, CIFAR100, ...
    root: str | None = None  # folder with the dataset files; None: the system copy, then download
    download: bool = True  # download into root (or ~/.cache/trainkit) when nothing is found
    # Any, not float: a count stays an integer in the saved config and the header (5000, not
    # 5000.0); validate() checks that it is a number.
    val_size: Any = 5000  # carved from train: a count (> 1) or a fraction (< 1)
    train_size: Any = None  # of what is left: a count (> 1), a fraction (<= 1), None: all
    test_size: int | None = None  # evaluate on the first N test samples; None = all
    split_seed: int = 0  # fixes which samples go to validation, whatever trainer.seed is
    classes: list[int] | None = None  # keep only these classes, relabelled 0..k-1 in this order
    mean: list[float] | None = None  # per-channel normalization, on the 0..1 scale;
    std: list[float] | None = None  # null: the dataset's own (data.normalization)


@dataclass
class ImageFolderConfig(DataConfig):
    name: str = "image_folder"
    size: int = 32  # every image resized to size x size, once, when it is read
    channels: int = 3  # 1: grey, 3: RGB
    test_fraction: float = 0.2  # carved from the images when there are no train/ and test/


@dataclass
class ModelConfig:
    # Transfer learning, for every model: start from a trainkit checkpoint (a .pt file or a run
    # folder), replace the head if the class count differs, freeze parameters by name prefix.
    from_checkpoint: str | None = None
    freeze: list[str] = field(default_factory=list)  # e.g. [features] or [net.fc1, net.fc2]


TRANSFER_KEYS = ("from_checkpoint", "freeze")  # read by trainkit, not passed to the model class


@dataclass
class MLPConfig(ModelConfig):
    _target_: str = "trainkit.models.MLP"
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    activation: str = "relu"
    batch_norm: bool = False
    dropout: float = 0.0
    input_dropout: float = 0.0


@dataclass
class CNNConfig(ModelConfig):
    _target_: str = "trainkit.models.CNN"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    hidden: int = 128
    activation: str = "relu"
    batch_norm: bool = False
    dropout: float = 0.0
    input_dropout: float = 0.0
    pool_first: bool = False


@dataclass
class ResNetConfig(ModelConfig):
    _target_: str = "trainkit.models.ResNet"
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    blocks: int = 2
    residual: bool = True
    activation: str = "relu"
    batch_norm: bool = True


@dataclass
class TorchvisionConfig(ModelConfig):
    _target_: str = "trainkit.models.TorchvisionNet"
    arch: str = "resnet18"
    pretrained: bool = False
    small_input_stem: bool = True


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    fused: bool | None = None  # None: torch's fused kernel (the faster one)


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    _convert_: str = "all"  # betas must reach torch as a tuple/list, not a ListConfig
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    fused: bool | None = None  # None: torch's fused kernel (the faster one)


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


@dataclass
class RMSpropConfig:
    _target_: str = "torch.optim.RMSprop"
    _partial_: bool = True
    lr: float = 1e-3
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False


@dataclass
class AdagradConfig:
    _target_: str = "torch.optim.Adagrad"
    _partial_: bool = True
    lr: float = 1e-2
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10
    fused: bool | None = None  # None: torch's fused kernel (the faster one)


@dataclass
class SchedulerConfig:
    _target_: str | None = None  # None: a constant lr (scheduler=none)
    _partial_: bool = True  # the call site adds the optimizer (and total, if it takes one)
    interval: str = "step"  # step the schedule after every optimizer `step` or every `epoch`


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    interval: str = "epoch"
    step_size: int = 1  # in units of `interval`
    gamma: float = 0.5


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    _target_: str = "trainkit.schedule.cosine"
    eta_min: float = 0.0  # the lr reached at the end of training


@dataclass
class MultiStepSchedulerConfig(SchedulerConfig):
    _target_: str = "torch.optim.lr_scheduler.MultiStepLR"
    _convert_: str = "all"  # milestones reach torch as a list
    interval: str = "epoch"
    milestones: list[int] = field(default_factory=lambda: [3, 6])  # in units of `interval`
    gamma: float = 0.1


@dataclass
class ExponentialSchedulerConfig(SchedulerConfig):
    _target_: str = "torch.optim.lr_scheduler.ExponentialLR"
    interval: str = "epoch"
    gamma: float = 0.8


@dataclass
class WarmupCosineSchedulerConfig(SchedulerConfig):
    _target_: str = "trainkit.schedule.warmup_cosine"
    warmup_fraction: float = 0.05  # share of the run spent ramping up linearly
    warmup_start_factor: float = 0.01  # the ramp starts at this fraction of lr
    eta_min: float = 0.0


@dataclass
class OneCycleSchedulerConfig(SchedulerConfig):
    _target_: str = "trainkit.schedule.one_cycle"
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1.0e4
    anneal_strategy: str = "cos"
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95


@dataclass
class PlateauSchedulerConfig(SchedulerConfig):
    _target_: str = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    interval: str = "epoch"
    mode: str = "min"  # it watches the validation loss
    factor: float = 0.1
    patience: int = 2
    threshold: float = 1.0e-4
    cooldown: int = 0
    min_lr: float = 0.0


@dataclass
class InitConfig:
    _target_: str | None = None  # fills one weight tensor in place; None: PyTorch's own
    _partial_: bool = True  # the call site gives it each Linear/Conv weight


@dataclass
class ScaledInitConfig(InitConfig):
    scale: float = 0.01  # U[-scale, scale] or N(0, scale^2)


@dataclass
class ConstantInitConfig(InitConfig):
    value: float = 0.0


@dataclass
class GainInitConfig(InitConfig):
    gain: float = 1.0


@dataclass
class KaimingInitConfig(InitConfig):
    mode: str = "fan_in"  # fan_in keeps forward activations' scale, fan_out the gradients'
    nonlinearity: str = "relu"  # torch's gain table: relu -> sqrt(2), tanh -> 5/3, linear -> 1


@dataclass
class LossConfig:
    _target_: str = MISSING  # an nn.Module called as loss(logits, labels)


@dataclass
class CrossEntropyConfig(LossConfig):
    _target_: str = "torch.nn.CrossEntropyLoss"
    label_smoothing: float = 0.0


@dataclass
class MSEConfig(LossConfig):
    _target_: str = "trainkit.losses.MSELoss"
    outputs: str = "probabilities"  # what is compared to the one-hot target: probabilities | logits


@dataclass
class HingeConfig(LossConfig):
    _target_: str = "torch.nn.MultiMarginLoss"  # multi-class (Weston-Watkins) hinge
    margin: float = 1.0
    p: int = 1  # 1: hinge, 2: squared hinge


@dataclass
class AugmentConfig:
    hflip: float = 0.0  # probability of a horizontal flip
    translate: int = 0  # shift by up to this many pixels in x and in y
    rotate: float = 0.0  # rotate by up to this many degrees either way
    zoom: list[float] = field(default_factory=lambda: [1.0, 1.0])  # scale factor range
    erase: float = 0.0  # probability of random erasing: one rectangle of random pixels per image
    erase_area: list[float] = field(default_factory=lambda: [0.02, 0.25])  # its share of the image
    tta_hflip: bool = False  # test-set scores average the logits of image and mirror (not val's)
    tta_shift: int = 0  # ... and of the image shifted by this many pixels up, down, left, right


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val_loss"  # val_loss | val_acc | train_loss | train_acc
    mode: str | None = None  # min | max; null: min for losses, max for accuracies
    patience: int = 5  # epochs without improvement before stopping
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    restore_best: bool = True  # end with the weights of the best epoch


L1_MODES = ("subgradient", "proximal")


@dataclass
class RegularizationConfig:
    l1: float = 0.0  # adds l1 * sum|w| to the loss (weights, not biases or norms)
    l2: float = 0.0  # adds l2/2 * sum w^2 to the loss: the explicit L2 penalty
    # subgradient: l1 * sum|w| added to the loss (weights hover near 0, rarely exactly 0);
    # proximal: instead, after each optimizer step w <- sign(w) * max(|w| - lr * l1, 0)
    # (soft-thresholding, as Lasso solvers do: weights land exactly on 0)
    l1_mode: str = "subgradient"
    clip_grad_norm: float | None = None  # rescale gradients to this total L2 norm at most
    clip_grad_value: float | None = None  # clamp every gradient entry to [-v, v]
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class VerdictConfig:
    overfit_gap: float = 0.05  # train acc - val acc above this: overfit
    overfit_rise: float = 0.1  # val loss risen this much (relative) above its best: overfit
    underfit_acc: float = 0.8  # train acc below this: underfit
    plateau_epochs: int = 3  # window for the plateau rule
    plateau_delta: float = 0.01  # val loss gains below this (relative) per epoch: plateaued


@dataclass
class DiagnosticsConfig:
    enabled: bool = True
    every_n_steps: int = 100  # per-layer signals sampled every N optimizer steps
    total_norm_every_n_steps: int = 10  # the total gradient norm every N optimizer steps
    histograms_every_n_epochs: int = 1  # 0: no histograms
    vanishing_ratio: float = 1.0e-3  # first/last layer gradient-norm ratio that warns
    exploding_factor: float = 100.0  # total gradient norm this many x its median warns
    pictures: bool = True  # curves.png, the confusion-matrix figure, augmented samples grid
    advice: bool = True  # the verdict's overrides worth trying, each composed and built first
    verdict: VerdictConfig = field(default_factory=VerdictConfig)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainerConfig:
    epochs: int = 5
    batch_size: int = 128
    eval_batch_size: int = 500
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    seed: int = 0
    deterministic: bool = False  # bitwise-reproducible kernels (slower on GPU)
    threads: int | None = None  # torch intra-op threads; None: torch's default
    channels_last: bool = True  # NHWC memory layout for 4-D batches: faster CNNs on CPU
    transposed_linear: bool = True  # wide Linear weights column-major on CPU (layout.py)
    precision: str = "auto"  # auto (bf16 where fast, else fp32; precision.py) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the training forward (a cold compile is slow on CPU)
    max_steps_per_epoch: int | None = None  # cut epochs short, for debugging
    log_every_n_steps: int = 50  # how often the progress bar syncs the running loss
    monitor: str = "val_acc"  # metric that picks best.pt: val_acc (max) or val_loss (min)
    checkpoint_every_n_epochs: int | None = None  # also keep epoch_<n>.pt every n epochs
    overwrite: bool = False  # a run into a folder holding another deletes that run's files
    verbose: bool = False  # print the whole config tree before the run's header


@dataclass
class Config:
    data: Any = MISSING
    model: Any = MISSING
    init: Any = MISSING
    loss: Any = MISSING
    regularization: RegularizationConfig = MISSING
    augment: AugmentConfig = MISSING
    diagnostics: DiagnosticsConfig = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = MISSING


# conf/<group>/<option>.yaml names its schema as `- /schema/<group>/<name>@_here_`.
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"data": DataConfig, "image_folder": ImageFolderConfig},
    "model": {
        "mlp": MLPConfig,
        "cnn": CNNConfig,
        "resnet": ResNetConfig,
        "torchvision": TorchvisionConfig,
    },
    "init": {
        "plain": InitConfig,
        "scaled": ScaledInitConfig,
        "constant": ConstantInitConfig,
        "gain": GainInitConfig,
        "kaiming": KaimingInitConfig,
    },
    "loss": {"cross_entropy": CrossEntropyConfig, "mse": MSEConfig, "hinge": HingeConfig},
    "optimizer": {
        "sgd": SGDConfig,
        "adam": AdamConfig,
        "adamw": AdamWConfig,
        "rmsprop": RMSpropConfig,
        "adagrad": AdagradConfig,
    },
    "scheduler": {
        "none": SchedulerConfig,
        "step": StepSchedulerConfig,
        "multistep": MultiStepSchedulerConfig,
        "exponential": ExponentialSchedulerConfig,
        "cosine": CosineSchedulerConfig,
        "warmup_cosine": WarmupCosineSchedulerConfig,
        "onecycle": OneCycleSchedulerConfig,
        "plateau": PlateauSchedulerConfig,
    },
    "regularization": {"regularization": RegularizationConfig},
    "augment": {"augment": AugmentConfig},
    "diagnostics": {"diagnostics": DiagnosticsConfig},
    "trainer": {"trainer": TrainerConfig},
}


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore, where conf/*.yaml find them."""
    cs = ConfigStore.instance()
    cs.store(name="schema_config", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    # --help lists the groups of conf/ through this, leaving out the schema/ groups above.
    OmegaConf.register_new_resolver("trainkit_groups", config_groups_help, replace=True)
    OmegaConf.register_new_resolver("trainkit_dirname", folder_name, replace=True)
    OmegaConf.register_new_resolver("trainkit_run_suffix", run_suffix, replace=True)


def config_groups_help() -> str:
    return "\n".join(f"{group}: {', '.join(options)}" for group, options in config_groups().items())


def config_groups() -> dict[str, list[str]]:
    """Each group of conf/ with its options, nested ones too (hydra/launcher); a group that
    holds only groups (hydra/) has no entry of its own."""
    groups = {}
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(CONF_DIR).as_posix()] = options
    return groups


def expand_aliases(overrides: list[str]) -> list[str]:
    """`lr=0.01` -> `optimizer.lr=0.01`, `epochs=3` -> `trainer.epochs=3`, and so on."""
    expanded = []
    for text in overrides:
        key, sep, value = text.partition("=")
        expanded.append(f"{ALIASES[key]}={value}" if sep and key in ALIASES else text)
    return expanded


def alias_conflicts(overrides: list[str]) -> list[str]:
    """An alias and its full key both given (`lr=1e-3 optimizer.lr=1e-2`): Hydra would keep the
    last one without a word, so the command line is refused instead. One line per key."""
    given: dict[str, list[str]] = {}
    for text in overrides:
        key, sep, _ = text.partition("=")
        if sep and not text.startswith("-"):
            given.setdefault(ALIASES.get(key, key.lstrip("+~")), []).append(text)
    errors = []
    for alias, path in ALIASES.items():
        spelled = given.get(path, [])
        keys = {text.partition("=")[0].lstrip("+~") for text in spelled}
        if alias in keys and path in keys:
            errors.append(f"{' and '.join(spelled)} both set {path} ({alias} is short for it): "
                          "give it once")
    return errors


def folder_name(overrides: Sequence[str], exclude: Sequence[str], job_num: int = -1) -> str:
    """A folder name from a job's overrides, in the order typed, with the aliases typed:
    optimizer=sgd,lr=0.1. The keys in `exclude` are left out: data.root, and in a sweep every
    key whose value all jobs share (cli.claim_outputs), so that a job's folder names what the
    sweep varies; a job that would get no name is named by its number. A '/' in a value would
    nest folders: it becomes '_'."""
    kept = [str(o) for o in overrides if str(o).partition("=")[0].lstrip("+~") not in exclude]
    name = shorten_aliases(",".join(kept)).replace("/", "_")
    return name or (str(job_num) if job_num >= 0 else "")


def run_suffix(overrides: Sequence[str], exclude: Sequence[str]) -> str:
    """A single run's folder: its overrides after the time (13-05-22_lr=0.01,epochs=3), so a
    list of runs says what each one asked for; nothing when there are none, or when they would
    make a name longer than a file system takes."""
    name = folder_name(overrides, exclude)
    return f"_{name}" if name and len(name.encode()) <= MAX_SUFFIX_BYTES else ""


MAX_SUFFIX_BYTES = 200  # of a file system's 255 per folder name, with room for the time


def shorten_aliases(overrides: str) -> str:
    """Back to the aliases the user typed, for folder names and messages: lr=0.1,optimizer=sgd."""
    for alias, path in ALIASES.items():
        overrides = re.sub(rf"(^|,){re.escape(path)}=", rf"\g<1>{alias}=", overrides)
    return overrides


Check = tuple[bool, str]  # (holds, the line that says what to change when it does not)


def validate(cfg: DictConfig) -> list[str]:
    """Every range or consistency problem in a composed config, one line each."""
    errors = non_finite(cfg)
    if errors:  # the checks below compare numbers, which NaN and inf would confuse
        return errors
    checks = [
        *trainer_checks(cfg.trainer, cfg.optimizer.lr),
        *data_checks(cfg.data),
        *model_checks(cfg.model, cfg.init),
        *optimizer_checks(cfg.optimizer),
        *schedule_checks(cfg.scheduler),
        *regularization_checks(cfg.regularization),
        *augment_checks(cfg.augment),
        *diagnostics_checks(cfg.diagnostics),
    ]
    errors = [message for holds, message in checks if not holds]
    errors += validate_init(cfg.init)
    return errors + [message for holds, message in loss_checks(cfg.loss) if not holds]


def trainer_checks(t: DictConfig, lr: float) -> list[Check]:
    every, most = t.checkpoint_every_n_epochs, t.max_steps_per_epoch
    return [
        (lr > 0, f"lr={lr}: the learning rate must be > 0, e.g. lr=1e-3"),
        (t.epochs >= 1, f"epochs={t.epochs}: train for at least one epoch, e.g. epochs=5"),
        (t.batch_size >= 1,
         f"batch_size={t.batch_size}: use a batch size >= 1, e.g. batch_size=128"),
        (t.eval_batch_size >= 1, "trainer.eval_batch_size must be >= 1"),
        (re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
         f"device={t.device}: choose auto, cpu, cuda or cuda:N"),
        (0 <= t.seed < 2**32, f"seed={t.seed}: use a seed in 0..2**32-1"),
        (t.threads is None or t.threads >= 1, "trainer.threads must be >= 1 (or null)"),
        (t.log_every_n_steps >= 1, "trainer.log_every_n_steps must be >= 1"),
        (t.precision in PRECISIONS,
         f"trainer.precision={t.precision}: choose one of {', '.join(PRECISIONS)}"),
        (every is None or every >= 1, "trainer.checkpoint_every_n_epochs must be >= 1 (or null)"),
        (most is None or most >= 1, "trainer.max_steps_per_epoch must be >= 1 (or null)"),
        (t.monitor in MONITORABLE,
         f"trainer.monitor={t.monitor}: choose {' or '.join(MONITORABLE)}"),
    ]


def data_checks(d: DictConfig) -> list[Check]:
    return [
        (is_number(d.val_size) and d.val_size > 0 and d.val_size != 1,
         "data.val_size must be a count (> 1, e.g. 5000) or a fraction (< 1, e.g. 0.1)"),
        (d.train_size is None or (is_number(d.train_size) and d.train_size > 0),
         "data.train_size must be a count (> 1), a fraction (<= 1), or null for all"),
        (d.test_size is None or d.test_size >= 1, "data.test_size must be >= 1 (or null)"),
        ((d.mean is None) == (d.std is None) and len(d.mean or []) == len(d.std or []),
         "data.mean and data.std need one value per channel (or both null)"),
        (all(s > 0 for s in d.std or []), "data.std values must be > 0"),
    ]


def model_checks(m: DictConfig, init: DictConfig) -> list[Check]:
    return [
        (0 <= m.get("dropout", 0) < 1, "model.dropout must be in [0, 1)"),
        (0 <= m.get("input_dropout", 0) < 1, "model.input_dropout must be in [0, 1)"),
        (m.get("blocks", 1) >= 1, "model.blocks must be >= 1"),
        (not m.get("pretrained") or not init.get("_target_"),
         f"init ({init.get('_target_')}) would overwrite the pretrained weights: keep "
         "init=default with model.pretrained=true"),
        (m.get("kernel_size", 1) >= 1, "model.kernel_size must be >= 1, e.g. 3"),
    ]


def optimizer_checks(opt: DictConfig) -> list[Check]:
    betas = list(opt.get("betas", [0.9, 0.999]))
    return [
        (0 <= opt.get("momentum", 0) < 1, "optimizer.momentum must be in [0, 1)"),
        (len(betas) == 2 and all(0 <= b < 1 for b in betas),
         f"optimizer.betas={betas}: give two values in [0, 1), e.g. [0.9, 0.999]"),
        (opt.get("weight_decay", 0) >= 0, "optimizer.weight_decay must be >= 0"),
    ]


def schedule_checks(sch: DictConfig) -> list[Check]:
    interval = sch.get("interval", "epoch")
    return [
        (interval in ("step", "epoch"), f"scheduler.interval={interval}: choose step or epoch"),
        (0 <= sch.get("warmup_fraction", 0) < 1, "scheduler.warmup_fraction must be in [0, 1)"),
        (0 < sch.get("pct_start", 0.5) < 1, "scheduler.pct_start must be in (0, 1)"),
        (0 < sch.get("gamma", 0.5) <= 1, "scheduler.gamma must be in (0, 1]"),
        (0 < sch.get("factor", 0.5) < 1, "scheduler.factor must be in (0, 1)"),
        (sch.get("step_size", 1) >= 1, "scheduler.step_size must be >= 1"),
    ]


def regularization_checks(reg: DictConfig) -> list[Check]:
    stop = reg.early_stopping
    clips = [(reg[key] is None or reg[key] > 0, f"regularization.{key} must be > 0 (or null)")
             for key in ("clip_grad_norm", "clip_grad_value")]
    return [
        (reg.l1 >= 0 and reg.l2 >= 0, "regularization.l1 and .l2 must be >= 0"),
        (reg.l1_mode in L1_MODES,
         f"regularization.l1_mode={reg.l1_mode}: choose one of {', '.join(L1_MODES)}"),
        *clips,
        (stop.monitor in METRICS,
         f"regularization.early_stopping.monitor={stop.monitor}: choose one of "
         f"{', '.join(METRICS)}"),
        (stop.mode in (None, "min", "max"),
         "regularization.early_stopping.mode: choose min or max (or null: from the monitor)"),
        (stop.patience >= 1, "regularization.early_stopping.patience must be >= 1"),
    ]


MAX_ERASE = 0.3  # the largest share of the image an erased rectangle fits at aspect 3.3 or 0.3


def augment_checks(aug: DictConfig) -> list[Check]:
    return [
        (0 <= aug.hflip <= 1, "augment.hflip is a probability: 0..1"),
        (aug.translate >= 0 and aug.rotate >= 0, "augment.translate and .rotate must be >= 0"),
        (aug.tta_shift >= 0, "augment.tta_shift is a number of pixels: >= 0"),
        (len(aug.zoom) == 2 and 0 < aug.zoom[0] <= aug.zoom[1],
         "augment.zoom is a range [low, high] with 0 < low <= high, e.g. [0.9, 1.1]"),
        (0 <= aug.erase <= 1, "augment.erase is a probability: 0..1"),
        (len(aug.erase_area) == 2 and 0 < aug.erase_area[0] <= aug.erase_area[1] <= MAX_ERASE,
         f"augment.erase_area is a range [low, high] of image fractions, 0 < low <= high <= "
         f"{MAX_ERASE} (larger rectangles do not fit at every aspect ratio), e.g. [0.02, 0.25]"),
    ]


def diagnostics_checks(diag: DictConfig) -> list[Check]:
    return [
        (diag.every_n_steps >= 1, "diagnostics.every_n_steps must be >= 1"),
        (diag.total_norm_every_n_steps >= 1,
         "diagnostics.total_norm_every_n_steps must be >= 1"),
        (diag.histograms_every_n_epochs >= 0,
         "diagnostics.histograms_every_n_epochs must be >= 0"),
        (diag.verdict.plateau_epochs >= 1, "diagnostics.verdict.plateau_epochs must be >= 1"),
    ]


def loss_checks(loss: DictConfig) -> list[Check]:
    return [
        (0 <= loss.get("label_smoothing", 0) < 1,
         "loss.label_smoothing must be in [0, 1), e.g. 0.1"),
        (loss.get("p", 1) in (1, 2), "loss.p must be 1 (hinge) or 2 (squared hinge)"),
        (loss.get("margin", 1) > 0, "loss.margin must be > 0"),
    ]


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def non_finite(cfg: DictConfig) -> list[str]:
    """lr=1e400 is inf and lr=nan is NaN to YAML: no setting means either."""
    errors = []
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)):
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{shorten_aliases(f'{key}={value}')}: not a finite number; "
                          "write one such as 1e-3")
    return errors


def leaves(node: object, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a nested dict; a list counts as its items."""
    if isinstance(node, dict):
        return [kv for key, value in node.items() for kv in leaves(value, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [(prefix.rstrip("."), value) for value in node]
    return [(prefix.rstrip("."), node)]


def validate_init(init: DictConfig) -> list[str]:
    from torch.nn.init import calculate_gain

    errors = []
    if init.get("scale", 1) <= 0:
        errors.append("init.scale must be > 0 (init=zeros sets every weight to 0)")
    if init.get("mode", "fan_in") not in ("fan_in", "fan_out"):
        errors.append(f"init.mode={init.mode}: choose fan_in or fan_out")
    if "nonlinearity" in init:
        try:
            calculate_gain(init.nonlinearity)
        except ValueError:
            errors.append(
                f"init.nonlinearity={init.nonlinearity}: use one of torch's names, "
                "e.g. relu, leaky_relu, tanh, sigmoid, linear"
            )
    return errors


def from_legacy_name(
    cfg: DictConfig, group: str, targets: dict[str, str], extra: dict | None = None
) -> DictConfig:
    """A group's config saved before it had a `_target_` (a checkpoint's: {name: hinge, ...})
    as it is built today. The name is looked up in `targets` (a name missing there, such as
    `default`/`none`, builds nothing); any other name is refused: a name is never taken as
    code to run. `extra`: keys the target needs (e.g. _partial_)."""
    if "_target_" in cfg or "name" not in cfg:
        return cfg
    plain = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "name"}
    if cfg.name in ("default", "none"):
        return OmegaConf.create(plain)
    if cfg.name not in targets:
        raise UserError(f"{group}.name={cfg.name}: not one trainkit had ({', '.join(targets)})")
    return OmegaConf.create({"_target_": targets[cfg.name], **(extra or {}), **plain})


def compose_config(overrides: list[str]) -> DictConfig:
    """The config tree for `overrides` (aliases allowed), composed as the CLI composes a run:
    for jobs that are not Hydra apps (subcommands, studies)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=expand_aliases(overrides))
