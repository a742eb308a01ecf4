"""The end-of-run fit verdict, read off the learning curves with rules simple enough to check by
hand. With final train/val accuracy a_t, a_v and losses l_t, l_v, and the best val loss l* at
epoch e* (thresholds in conf/diagnostics/default.yaml, `verdict:`); `start` is the first step's
training loss or, when higher (or unknown), chance's: ln(num_classes) for cross-entropy, the
loss of predicting every class alike:

- diverged:  a loss is not finite, or the last train loss is above the first epoch's (the
             loop also fails a run whose losses end far above the first step's).
- lr too high: an epoch's mean train loss rose above SPIKE_FACTOR x start and the run
             recovered; or val loss ended above CHANCE_MARGIN x start while val accuracy is
             near chance (below 2/num_classes): it learned to be confidently wrong. (A run
             whose lr is too low stays below its start: it is underfit.)
- overfit:   a_t - a_v > overfit_gap, or l_v has risen more than overfit_rise (relative) above
             l* since e* while training went on.
- underfit:  a_t < underfit_acc: the model cannot even fit its training data.
- plateaued: over the last plateau_epochs epochs, val loss improved by less than
             plateau_delta (relative) in every epoch. At the end of an annealed schedule
             (one-cycle, cosine: the last lr under a tenth of the highest) that is by design,
             and the advice is a bigger model and more epochs rather than another schedule.
- good fit:  none of the above.

The advice is overrides to paste after the run's own command, with values computed from the
run (lr=0.01 for a diverged run at lr=0.1). Each is composed with the run's overrides,
validated and dry-built as `trainkit` would before a run; one that does not compose, or that
changes nothing (the run already does it), is left out. Hints that are not overrides are text.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from pathlib import Path

import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from trainkit.config import CONF_DIR, compose_config, expand_aliases, validate

# Raises if a config cannot be built; the bool: its model or data changed (a forward pass).
Builds = Callable[[DictConfig, bool], None]

SPIKE_FACTOR = 1.5  # as loop.DIVERGED_FACTOR: an epoch this far above the start spiked
CHANCE_MARGIN = 1.05  # a val loss this far above the start is worse than guessing
HINTS = {"overfit": ["more training data"], "good fit": ["a sweep of lr around this one"]}


def diagnose(
    history: list[dict], cfg: DictConfig, diverged: bool = False,
    overrides: list[str] | None = None, initial_loss: float = math.nan,
    num_classes: int | None = None, builds: Builds | None = None,
) -> dict:
    """{'verdict': ..., 'evidence': {numbers}, 'advice': [overrides worth trying next, hints]}.
    `cfg`: the run's config; `overrides`: the command line it was composed from (None: not
    known, as for a run started from Python: the advice is checked against `cfg` itself);
    `initial_loss`: the first step's training loss; `num_classes` sets chance; `builds`: what
    checks that a suggestion builds (experiment.check_builds), as trainkit does before a run."""
    chance = chance_loss(cfg, num_classes)
    verdict, evidence = judge(history, cfg.diagnostics.verdict, diverged, initial_loss, chance,
                              num_classes)
    wanted = cfg.diagnostics.get("advice", True)  # a config saved before the key: yes
    advice = advise(verdict, history, cfg, overrides, builds) if wanted else []
    return {"verdict": verdict, "evidence": evidence, "advice": advice}


def chance_loss(cfg: DictConfig, num_classes: int | None) -> float:
    """Cross-entropy's loss for predicting every class alike (label smoothing does not change
    it); NaN for other losses or an unknown class count."""
    target = str(OmegaConf.select(cfg, "loss._target_", default="") or "")
    if num_classes and num_classes > 1 and target.endswith("CrossEntropyLoss"):
        return math.log(num_classes)
    return math.nan


def judge(
    history: list[dict], rules: DictConfig, diverged: bool = False,
    initial_loss: float = math.nan, chance: float = math.nan, num_classes: int | None = None,
) -> tuple[str, dict]:
    """The verdict and the numbers it rests on (the rules in this module's docstring)."""
    if not history:  # stopped inside the first epoch
        return ("diverged" if diverged else "good fit"), {"epochs": 0}
    first, last = history[0], history[-1]
    losses = [m[k] for m in history for k in ("train_loss", "val_loss")]
    best = min(history, key=lambda m: m["val_loss"] if math.isfinite(m["val_loss"]) else math.inf)
    gap = last["train_acc"] - last["val_acc"]
    rise = (last["val_loss"] - best["val_loss"]) / best["val_loss"] if best["val_loss"] else 0.0
    recent = [m["val_loss"] for m in history[-(rules.plateau_epochs + 1) :]]
    gains = [(a - b) / a for a, b in zip(recent, recent[1:], strict=False) if a > 0]
    evidence = {
        "train_acc": last["train_acc"], "val_acc": last["val_acc"], "acc_gap": gap,
        "best_val_loss": best["val_loss"], "best_epoch": best["epoch"],
        "val_loss_rise_since_best": rise, "epochs": last["epoch"],
    }
    start = max((x for x in (initial_loss, chance) if math.isfinite(x)), default=math.nan)
    peak = max(history, key=lambda m: m["train_loss"])
    spiked = peak["train_loss"] > SPIKE_FACTOR * start  # False when start is NaN
    near_chance = bool(num_classes) and last["val_acc"] < 2 / num_classes
    wrong = near_chance and last["val_loss"] > CHANCE_MARGIN * start
    if math.isfinite(start):
        evidence |= {"initial_loss": initial_loss, "chance_loss": chance,
                     "peak_train_loss": peak["train_loss"],
                     "peak_epoch": peak["epoch"]}
    if diverged or last["train_loss"] > first["train_loss"] or not all(map(math.isfinite, losses)):
        verdict = "diverged"
    elif spiked or wrong:
        verdict = "lr too high"
    elif gap > rules.overfit_gap or (best["epoch"] < last["epoch"] and rise > rules.overfit_rise):
        verdict = "overfit"
    elif last["train_acc"] < rules.underfit_acc:
        verdict = "underfit"
    elif len(gains) >= rules.plateau_epochs and max(gains) < rules.plateau_delta:
        verdict = "plateaued"
    else:
        verdict = "good fit"
    return verdict, evidence


def advise(
    verdict: str, history: list[dict], cfg: DictConfig, overrides: list[str] | None,
    builds: Builds | None = None,
) -> list[str]:
    """The verdict's candidate overrides that compose, validate, build (`builds`, if given)
    and change something, then its hints."""
    check = Checker(cfg, overrides, builds)
    return [o for o in candidates(verdict, history, cfg) if check.changes(o)] + HINTS.get(
        verdict, []
    )


def candidates(verdict: str, history: list[dict], cfg: DictConfig) -> list[str]:
    """Overrides worth trying after a run with this verdict, values computed from the run."""
    lr, epochs = cfg.optimizer.lr, cfg.trainer.epochs
    activation = OmegaConf.select(cfg, "model.activation", default="relu")
    init = "init=xavier_normal" if activation in ("tanh", "sigmoid") else "init=he_normal"
    clip = "regularization.clip_grad_norm=1.0"
    if verdict == "diverged":
        return [f"lr={lower_lr(cfg, 10)}", clip, init, "scheduler=warmup_cosine"]
    if verdict == "lr too high":
        return [f"lr={lower_lr(cfg, 3)}", "scheduler=warmup_cosine", clip]
    if verdict == "overfit":
        return ["regularization.l2=1e-4", "optimizer=adamw", "model.dropout=0.3",
                "augment=standard", "regularization=early_stopping",
                "data.train_size=null"]
    if verdict == "underfit":
        pairs = zip(history, history[1:], strict=False)
        falling = all(b["train_loss"] < a["train_loss"] for a, b in pairs)
        faster = [f"lr={number(lr * 3)}"] if falling and len(history) > 1 else []
        return [*bigger_model(cfg), f"epochs={epochs * 2}", *faster, "regularization.l2=0",
                "regularization.l1=0", "model.dropout=0", "model.input_dropout=0"]
    if verdict == "plateaued":
        if annealed(history):  # the schedule's end, by design: go further, not slower
            return [*bigger_model(cfg), f"epochs={epochs * 2}"]
        return ["scheduler=plateau", "scheduler=onecycle", f"lr={lower_lr(cfg, 3)}"]
    return [f"epochs={epochs * 2}"]  # good fit: more of the same while val loss still falls


ANNEALED = 0.1  # a last epoch's lr under this share of the run's highest: the schedule annealed


def annealed(history: list[dict]) -> bool:
    """Whether the run ended with its schedule's lr annealed (one-cycle, cosine): its last
    epochs are meant to flatten out, and a plateau there is not a schedule to change."""
    lrs = [m["lr"] for m in history if isinstance(m.get("lr"), float | int)]
    return len(lrs) > 1 and lrs[-1] < ANNEALED * max(lrs)


def bigger_model(cfg: DictConfig) -> list[str]:
    """Twice the width of the run's own model, in the keys its model type has."""
    model = cfg.model
    out = []
    for key in ("hidden", "channels", "widths"):
        value = model.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out.append(f"model.{key}={value * 2}")
        elif OmegaConf.is_list(value) and value:
            out.append(f"model.{key}=[{','.join(str(v * 2) for v in value)}]")
    if str(model.get("_target_", "")).endswith(".MLP"):
        out.append("model=cnn")  # convolutions: the better model for images
    return out


def lower_lr(cfg: DictConfig, factor: float) -> str:
    """The run's lr over `factor`, at most 10x the optimizer's own default (its schema's): a
    tenth of lr=1e6 diverges as surely as lr=1e6."""
    lr = cfg.optimizer.lr / factor
    schema = OmegaConf.get_type(cfg.optimizer)
    default = getattr(schema, "lr", None) if schema is not None else None
    if isinstance(default, float):
        lr = min(lr, 10 * default)
    return number(lr)


def number(x: float) -> str:
    """Two significant digits, as a user would type it: 0.033, 0.0003, 1e-05."""
    return f"{float(f'{x:.2g}'):g}"


class Checker:
    """Applies a suggestion as `trainkit` would compose it after the run's overrides, validates
    the result and builds what it changes (on the meta device), as `trainkit` does before every
    run. A key=value override is merged into the run's typed config, which is what Hydra does
    with one given last; a group=option is composed with the run's overrides, or, when they are
    not known, that option's config takes the group's place."""

    def __init__(self, cfg: DictConfig, overrides: list[str] | None, builds: Builds | None) -> None:
        self.cfg = cfg
        self.builds = builds
        self.overrides = expand_aliases(list(overrides)) if overrides is not None else None
        self.base = plain(cfg)

    def changes(self, suggestion: str) -> bool:
        try:
            new = self.apply(suggestion)
            if validate(new):
                return False
            changed = plain(new)
            if changed == self.base:  # the run does it already
                return False
            if self.builds is not None:
                self.builds(new, any(changed[k] != self.base[k] for k in ("model", "data")))
        except Exception:  # any failure to compose, validate or build: not advice to give
            return False
        return True

    def apply(self, suggestion: str) -> DictConfig:
        (text,) = expand_aliases([suggestion])
        group, _, option = text.partition("=")
        if not (CONF_DIR / group).is_dir():  # a value of the wrong type (a list for an int) fails
            return OmegaConf.merge(self.cfg, OmegaConf.from_dotlist([text]))
        if self.overrides is not None:
            return compose([*self.overrides, text])
        new = copy.deepcopy(self.cfg)
        with open_dict(new):
            new[group] = copy.deepcopy(group_option(group, option))
        return new


@functools.cache
def group_option(group: str, option: str) -> DictConfig:
    return compose([f"{group}={option}"])[group]


def compose(overrides: list[str]) -> DictConfig:
    """Inside a Hydra app its own config search path (with a user's --config-dir) is used."""
    if GlobalHydra.instance().is_initialized():
        from hydra import compose as hydra_compose

        return hydra_compose("config", overrides=overrides)
    return compose_config(overrides)


def plain(cfg: DictConfig) -> dict:
    """The config as values, without the keys a job may set for itself (threads in a sweep)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.get("trainer", {}).pop("threads", None)
    return out


def run_overrides(run_dir: Path) -> list[str] | None:
    """The command line of the run in `run_dir`: Hydra's, or what Hydra wrote into the folder
    (a resumed run; read as plain YAML: the folder is data). None when neither is there."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    try:
        saved = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in saved] if isinstance(saved, list) else None
