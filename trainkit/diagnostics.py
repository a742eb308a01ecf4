"""Training-dynamics diagnostics: make vanishing and exploding gradients visible.

Every tag is under diagnostics/, so that TensorBoard lists the loss and accuracy charts
(curves/) first. Sampled at step 1 and then every `every` steps, where `every` is
`every_n_steps` or a quarter of an epoch when that is shorter (callbacks.sample_every): a short
run shows every signal too. Per layer (each module that owns a weight; tags use its name, e.g.
diagnostics/grad_norm/net.fc1):
  grad_norm/<layer>     ||dL/dW||
  weight_norm/<layer>   ||W||
  update_ratio/<layer>  ||W_t - W_t-1|| / ||W_t-1||, the relative size of one step (~1e-3 is
                        healthy; far smaller: the layer barely learns; far larger: unstable)
  act_mean/<layer>, act_std/<layer>, dead_frac/<layer>
                        statistics of each activation module's output; dead units are outputs
                        that are <= 0 for every sample of the batch (dead ReLUs)
The total gradient norm, grad_norm/total, at step 1 and every `total_norm_every_n_steps` (at
most `every`) steps: kept on the device and written at each sample, so no per-step sync (a sync
every step would cost the MLP a visible share of its step time). Histograms of weights and
gradients (weights/<layer>, grads/<layer>) every `histograms_every_n_epochs` epochs, at the
epoch's last step, in HISTOGRAM_BINS equal bins (write_histogram).

Alerts (printed once each, and written to TensorBoard text as warnings/<kind>):
  vanishing   first layer's gradient norm < vanishing_ratio x the last layer's
  exploding   total gradient norm not finite, or > exploding_factor x its median so far
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from trainkit.callbacks import Callback, is_sampled, sample_every
from trainkit.console import warn
from trainkit.loop import FitState, Outcome
from trainkit.models import ACTIVATIONS

ACTIVATION_TYPES = tuple(ACTIVATIONS.values())
HISTOGRAM_BINS = 64  # TensorBoard's histogram view re-bins to ~30 anyway
PREFIX = "diagnostics"


def write_histogram(writer: SummaryWriter, tag: str, values: torch.Tensor, step: int) -> None:
    """A histogram of the finite entries of `values`, binned by torch.

    Not SummaryWriter.add_histogram: it bins in numpy, whose `values.dot(values)` wakes OpenBLAS's
    worker threads, and they spin for a while after it returns. On 2 cores they took the CPU from
    the training steps that followed, which ran markedly slower."""
    x = values.detach().flatten().float().cpu()  # histc on CUDA has no deterministic mode
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return
    smallest, largest = (float(v) for v in x.aminmax())
    low, high = smallest, largest
    if low == high:  # one value: a bin of width 1 around it, as numpy.histogram does
        low, high = low - 0.5, high + 0.5
    counts = torch.histc(x, HISTOGRAM_BINS, min=low, max=high)
    edges = torch.linspace(low, high, HISTOGRAM_BINS + 1)
    writer.add_histogram_raw(
        tag,
        min=smallest,
        max=largest,
        num=x.numel(),
        sum=float(x.sum()),
        sum_squares=float(x.dot(x)),
        bucket_limits=edges[1:].tolist(),  # TensorBoard takes each bucket's right edge
        bucket_counts=counts.tolist(),
        global_step=step,
    )


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules owning a `weight` matrix or kernel (Linear, Conv), in forward-definition order."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim >= 2
    }


class Diagnostics(Callback):
    def __init__(self, cfg: DictConfig, model: nn.Module, writer: SummaryWriter) -> None:
        self.cfg = cfg
        # Read per step: plain ints, not config lookups (slow enough to matter per step).
        self.every = cfg.every_n_steps  # set for the run's epoch length at its start
        self.norm_every = min(cfg.total_norm_every_n_steps, self.every)
        self.model = model
        self.writer = writer
        self.layers = weighted_layers(model)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.total_norms: list[tuple[int, torch.Tensor]] = []  # (step, norm) still on device
        self.norm_history: deque[float] = deque(maxlen=1000)  # recent finite total norms
        self.previous: dict[str, torch.Tensor] = {}  # weights one step before a sampled step
        self.hooks: list = []
        self.activations: dict[str, dict[str, torch.Tensor]] = {}
        self.alerted: set[str] = set()

    def set_period(self, state: FitState) -> None:
        self.every = sample_every(self.cfg.every_n_steps, state.steps_per_epoch)
        self.norm_every = min(self.cfg.total_norm_every_n_steps, self.every)

    def on_fit_start(self, state: FitState) -> None:
        self.set_period(state)
        if state.step == 0:  # step 1 is sampled
            self.prepare()

    def prepare(self) -> None:
        """Before a sampled step: keep the weights (for the update ratio), watch activations."""
        self.previous = {n: m.weight.detach().clone() for n, m in self.layers.items()}
        self.unwatch_activations()  # once only, were it asked twice (a resume at step 0)
        self.watch_activations()

    # -- every step: cheap, on the device
    def on_step_end(self, state: FitState) -> None:
        if is_sampled(state.step, self.norm_every):
            grads = [p.grad for p in self.trainable if p.grad is not None]
            if grads:
                self.total_norms.append((state.step, nn.utils.get_total_norm(grads)))
        if is_sampled(state.step, self.every):
            self.sample(state.step)
        if is_sampled(state.step + 1, self.every):  # the next step is sampled: watch it
            self.prepare()

    def sample(self, step: int) -> None:
        w, p = self.writer, PREFIX
        self.write_total_norms(step)
        grad_norms = {}
        for name, layer in self.layers.items():
            weight = layer.weight.detach()
            w.add_scalar(f"{p}/weight_norm/{name}", weight.norm().item(), step)
            if layer.weight.grad is not None:
                grad_norms[name] = layer.weight.grad.norm().item()
                w.add_scalar(f"{p}/grad_norm/{name}", grad_norms[name], step)
            if name in self.previous:
                before = self.previous[name]
                ratio = (weight - before).norm() / before.norm().clamp_min(1e-12)
                w.add_scalar(f"{p}/update_ratio/{name}", ratio.item(), step)
        self.previous = {}
        for name, stats in self.activations.items():
            for key, value in stats.items():
                w.add_scalar(f"{p}/{key}/{name}", value.item(), step)
        self.unwatch_activations()
        self.check_vanishing(step, grad_norms)

    def write_total_norms(self, step: int) -> None:
        """The total gradient norms kept on the device since the last write, read in one sync."""
        norms = self.pending_norms()
        for at, value in norms:
            self.writer.add_scalar(f"{PREFIX}/grad_norm/total", value, at)
        self.total_norms = []
        self.check_exploding(step, [value for _, value in norms])

    def pending_norms(self) -> list[tuple[int, float]]:
        if not self.total_norms:
            return []
        values = torch.stack([norm for _, norm in self.total_norms]).tolist()
        return [(at, value) for (at, _), value in zip(self.total_norms, values, strict=True)]

    # -- activations, through forward hooks that live for one step only
    def watch_activations(self) -> None:
        for name, module in self.model.named_modules():
            if isinstance(module, ACTIVATION_TYPES):
                self.hooks.append(module.register_forward_hook(self._record(name)))

    def _record(self, name: str):  # noqa: ANN202 (a hook factory)
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            # fp32 statistics of a bf16 activation (autocast): a bf16 sum of many values rounds
            out = output.detach().flatten(1).float()
            self.activations[name] = {
                "act_mean": out.mean(),
                "act_std": out.std(),
                "dead_frac": (out <= 0).all(dim=0).float().mean(),
            }

        return hook

    def unwatch_activations(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks, self.activations = [], {}

    # -- alerts
    def check_vanishing(self, step: int, grad_norms: dict[str, float]) -> None:
        names = list(grad_norms)
        if len(names) >= 2 and grad_norms[names[-1]] > 0:
            ratio = grad_norms[names[0]] / grad_norms[names[-1]]
            if ratio < self.cfg.vanishing_ratio:
                self.alert(
                    "vanishing",
                    f"vanishing gradients at step {step}: the first layer's gradient norm "
                    f"({names[0]}: {grad_norms[names[0]]:.2e}) is {ratio:.1e} x the last "
                    f"layer's ({names[-1]}: {grad_norms[names[-1]]:.2e}); early layers barely "
                    "learn. Try relu with init=he_normal, model.batch_norm=true, or fewer layers",
                    step,
                )

    def check_exploding(self, step: int, totals: list[float]) -> None:
        for value in totals:
            median = statistics.median(self.norm_history) if self.norm_history else math.nan
            if not math.isfinite(value) or value > self.cfg.exploding_factor * median:
                self.alert(
                    "exploding",
                    f"exploding gradients at step {step}: total gradient norm {value:.3g}"
                    + (
                        f", {value / median:.0f} x its median so far"
                        if math.isfinite(value)
                        else ""
                    )
                    + ". Try a lower lr or regularization.clip_grad_norm=1.0",
                    step,
                )
            if math.isfinite(value):
                self.norm_history.append(value)

    def alert(self, kind: str, message: str, step: int) -> None:
        if kind in self.alerted:
            return
        self.alerted.add(kind)
        warn(message)
        self.writer.add_text(f"warnings/{kind}", message, step)

    # -- histograms, and every total norm of the epoch written by its end
    def on_epoch_end(self, state: FitState, metrics: dict) -> None:
        self.write_total_norms(state.step)
        every = self.cfg.histograms_every_n_epochs
        if every and state.epoch % every == 0:
            for name, layer in self.layers.items():
                write_histogram(self.writer, f"{PREFIX}/weights/{name}", layer.weight, state.step)
                if layer.weight.grad is not None:
                    grad = layer.weight.grad
                    write_histogram(self.writer, f"{PREFIX}/grads/{name}", grad, state.step)

    def on_fit_end(self, state: FitState, outcome: Outcome) -> None:
        self.unwatch_activations()

    # -- resume: the norms not yet written, the median's history, the alerts already given
    def state_dict(self) -> dict:
        return {"pending_norms": self.pending_norms(), "norm_history": list(self.norm_history),
                "alerted": sorted(self.alerted)}

    def load_state_dict(self, saved: dict, state: FitState) -> None:
        device = self.trainable[0].device if self.trainable else None
        pending = saved["pending_norms"]
        self.total_norms = [(at, torch.tensor(v, device=device)) for at, v in pending]
        self.norm_history.extend(saved["norm_history"])
        self.alerted = set(saved["alerted"])
        self.set_period(state)
        if is_sampled(state.step + 1, self.every):  # it stopped just before a sample
            self.prepare()
