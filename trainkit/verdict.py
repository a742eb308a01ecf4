"""The end-of-run fit verdict, read off the learning curves with rules simple enough to check by
hand. With final train/val accuracy a_t, a_v and losses l_t, l_v, and the best val loss l* at
epoch e* (thresholds in conf/diagnostics/default.yaml, `verdict:`):

- diverged:  a loss is not finite, or the last train loss is above the first epoch's (the
             loop also fails a run whose losses end far above the first step's).
- lr too high: an epoch's mean train loss rose above spike_factor x the first step's loss,
             and the run recovered: the learning rate was too high for part of it.
- overfit:   a_t - a_v > overfit_gap, or l_v has risen more than overfit_rise (relative) above
             l* since e* while training went on.
- underfit:  a_t < underfit_acc: the model cannot even fit its training data.
- plateaued: over the last plateau_epochs epochs, val loss improved by less than
             plateau_delta (relative) in every epoch.
- good fit:  none of the above.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

ADVICE = {
    "diverged": ["lr=<a tenth of this one>", "regularization.clip_grad_norm=1.0",
                 "init=he_normal (or xavier_normal for tanh/sigmoid)"],
    "overfit": ["regularization.l2=1e-4 (or optimizer=adamw)", "model.dropout=0.3",
                "augment=standard", "regularization=early_stopping",
                "data.train_size=<more data>"],
    "lr too high": ["lr=<a third of this one>", "scheduler=warmup_cosine",
                    "regularization.clip_grad_norm=1.0"],
    "underfit": ["a bigger model (e.g. model.hidden=[512,256] or model=cnn)",
                 "epochs=<twice as many>", "lr=<3x higher>", "regularization.l2=0 model.dropout=0"],
    "plateaued": ["scheduler=plateau", "scheduler=onecycle", "lr=<a third of this one>"],
    "good fit": ["epochs=<more> while val loss still falls", "a sweep: trainkit -m lr=..."],
}  # fmt: skip


SPIKE_FACTOR = 1.5  # as loop.DIVERGED_FACTOR: an epoch this far above the start spiked


def diagnose(
    history: list[dict], cfg: DictConfig, diverged: bool = False, choices: dict | None = None,
    initial_loss: float = math.nan,
) -> dict:  # fmt: skip
    """{'verdict': ..., 'evidence': {numbers}, 'advice': [overrides worth trying next]}.
    `choices` (group -> option, Hydra's runtime choices): advice the run already follows, such
    as scheduler=onecycle to a one-cycle run, is left out. `initial_loss`: the first step's
    training loss, against which a spike is measured."""
    if not history:  # stopped inside the first epoch
        verdict = "diverged" if diverged else "good fit"
        return {"verdict": verdict, "evidence": {"epochs": 0},
                "advice": advice(verdict, choices)}  # fmt: skip
    first, last = history[0], history[-1]
    losses = [m[k] for m in history for k in ("train_loss", "val_loss")]
    best = min(history, key=lambda m: m["val_loss"] if math.isfinite(m["val_loss"]) else math.inf)
    gap = last["train_acc"] - last["val_acc"]
    rise = (last["val_loss"] - best["val_loss"]) / best["val_loss"] if best["val_loss"] else 0.0
    recent = [m["val_loss"] for m in history[-(cfg.plateau_epochs + 1) :]]
    gains = [(a - b) / a for a, b in zip(recent, recent[1:], strict=False) if a > 0]
    evidence = {
        "train_acc": last["train_acc"],
        "val_acc": last["val_acc"],
        "acc_gap": gap,
        "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "val_loss_rise_since_best": rise,
        "epochs": last["epoch"],
    }
    worse = last["train_loss"] > first["train_loss"]
    peak = max(history, key=lambda m: m["train_loss"])
    spiked = peak["train_loss"] > SPIKE_FACTOR * initial_loss  # False when it is NaN
    if spiked:
        evidence |= {"initial_loss": initial_loss, "peak_train_loss": peak["train_loss"],
                     "peak_epoch": peak["epoch"]}  # fmt: skip
    if diverged or worse or not all(math.isfinite(x) for x in losses):
        verdict = "diverged"
    elif spiked:
        verdict = "lr too high"
    elif gap > cfg.overfit_gap or (best["epoch"] < last["epoch"] and rise > cfg.overfit_rise):
        verdict = "overfit"
    elif last["train_acc"] < cfg.underfit_acc:
        verdict = "underfit"
    elif len(gains) >= cfg.plateau_epochs and max(gains) < cfg.plateau_delta:
        verdict = "plateaued"
    else:
        verdict = "good fit"
    return {"verdict": verdict, "evidence": evidence, "advice": advice(verdict, choices)}


def advice(verdict: str, choices: dict | None) -> list[str]:
    chosen = {f"{group}={option}" for group, option in (choices or {}).items()}
    return [line for line in ADVICE[verdict] if line not in chosen]
