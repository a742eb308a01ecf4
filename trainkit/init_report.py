"""`trainkit init-report [overrides]`: how each initializer treats signals at step 0.

For one batch of real training data, for each scheme, every Linear/Conv layer l is measured:
- forward: the std of its output z_l = W_l a_(l-1), next to the variance-propagation
  prediction behind Glorot's and He's analyses, std(z_l) = sqrt(fan_in * E[W^2] * E[a^2]),
  with E[a^2] measured at the layer's input;
- backward: the std of the gradient it sends to its input, dL/da_(l-1), next to the prediction
  sqrt(fan_out * E[W^2] * E[(dL/dz_l)^2]).
Predictions hold per layer when weights are independent of the signal (true at step 0). What
changes between schemes is whether the std holds steady across depth: a layer whose
activation std is below 1/2 or above 2x the previous layer's is flagged (shrinking/growing).

Writes init_report.json and TensorBoard scalars (init_report/act_std/<scheme>, step = layer
index) into the output folder and prints a table per signal. The schemes compared are
`init-report schemes=a,b,c` (default: SCHEMES) with the model and data of the config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from trainkit import console, data, runtime
from trainkit.config import CONF_DIR
from trainkit.diagnostics import weighted_layers
from trainkit.errors import UserError
from trainkit.experiment import build_model
from trainkit.init import initialize
from trainkit.losses import build_loss

SCHEMES = ["default", "normal", "uniform_fan_in", "xavier_normal", "he_normal", "orthogonal"]
BATCH = 512


def measure(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module) -> list:
    """Per weighted layer: measured and predicted std of its output and of its input gradient."""
    layers = weighted_layers(model)
    seen: dict[str, dict] = {name: {} for name in layers}
    hooks = []
    for name, layer in layers.items():

        def forward(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name):
            seen[name]["a2"] = inputs[0].detach().pow(2).mean().item()
            seen[name]["act_std"] = output.detach().std().item()

        def backward(module: nn.Module, grad_in: tuple, grad_out: tuple, name: str = name):
            seen[name]["g2"] = grad_out[0].detach().pow(2).mean().item()
            seen[name]["grad_std"] = grad_in[0].detach().std().item()

        hooks += [layer.register_forward_hook(forward), layer.register_full_backward_hook(backward)]
    x = x.clone().requires_grad_(True)  # so the first layer reports its input gradient too
    loss_fn(model(x), labels).backward()
    for handle in hooks:
        handle.remove()
    rows = []
    for name, layer in layers.items():
        w = layer.weight.detach()
        w2 = w.pow(2).mean().item()
        fan_in = w[0].numel()
        # Each input unit feeds out_channels x kernel area outputs, divided by the stride.
        stride = math.prod(getattr(layer, "stride", (1,)))
        fan_out = w.shape[0] * w[0, 0].numel() / stride
        s = seen[name]
        rows.append({
            "layer": name,
            "act_std": s["act_std"],
            "act_pred": math.sqrt(fan_in * w2 * s["a2"]),
            "grad_std": s["grad_std"],
            "grad_pred": math.sqrt(fan_out * w2 * s["g2"]),
        })
    return rows


def probe_batch(cfg: DictConfig) -> tuple[data.Data, torch.Tensor, torch.Tensor]:
    """The dataset and its first BATCH training images (normalized) and labels, on the device."""
    device = runtime.setup(cfg.trainer)
    dataset = data.load(cfg.data, device)
    normalize = data.Normalizer(dataset.mean, dataset.std, device)
    return dataset, normalize(dataset.train.images[:BATCH]), dataset.train.labels[:BATCH]


def measure_at_init(
    cfg: DictConfig, init_cfg: DictConfig, dataset: data.Data, x: torch.Tensor, labels: torch.Tensor
) -> list:
    """`measure` for cfg's model initialized by `init_cfg`, on the probe batch."""
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, dataset.input_shape, dataset.num_classes).to(x.device)
    initialize(model, init_cfg)
    model.eval()  # dropout off: measure the weights, not the noise
    return measure(model, x, labels, build_loss(cfg.loss))


def init_report(cfg: DictConfig, out_dir: Path, schemes: list[str] | None = None) -> dict:
    schemes = schemes or SCHEMES
    known = sorted(p.stem for p in (CONF_DIR / "init").glob("*.yaml"))
    unknown = [s for s in schemes if s not in known]
    if unknown:
        raise UserError(f"schemes: {', '.join(unknown)} unknown; choose from {', '.join(known)}")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        scheme_configs = {s: compose("config", overrides=[f"init={s}"]).init for s in schemes}
    probe = probe_batch(cfg)
    report = {scheme: measure_at_init(cfg, scheme_configs[scheme], *probe) for scheme in schemes}
    write_outputs(report, out_dir)
    for signal in ("act", "grad"):
        console.console.print(table(report, signal))
    return report


def drift(rows: list[dict], i: int) -> str:
    """'shrinking'/'growing' when a layer's activation std is under 1/2 or over 2x the previous
    layer's: a signal that would vanish or explode if the network were deeper."""
    if i == 0 or rows[i - 1]["act_std"] == 0:
        return ""
    ratio = rows[i]["act_std"] / rows[i - 1]["act_std"]
    return "shrinking" if ratio < 0.5 else "growing" if ratio > 2 else ""


def table(report: dict, signal: str) -> Table:
    title = {"act": "activation std per layer, measured (predicted)",
             "grad": "input-gradient std per layer, measured (predicted)"}[signal]
    t = Table(title=title, title_justify="left")
    t.add_column("layer")
    for scheme in report:
        t.add_column(scheme, justify="right")
    layers = [row["layer"] for row in next(iter(report.values()))]
    for i, layer in enumerate(layers):
        cells = []
        for rows in report.values():
            row = rows[i]
            cell = f"{row[f'{signal}_std']:.3g} ({row[f'{signal}_pred']:.3g})"
            flag = drift(rows, i) if signal == "act" else ""
            cells.append(f"[red]{cell} {flag}[/]" if flag else cell)
        t.add_row(layer, *cells)
    return t


def write_outputs(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "init_report.json").write_text(json.dumps(report, indent=2) + "\n")
    writer = SummaryWriter(log_dir=str(out_dir))
    for scheme, rows in report.items():
        for i, row in enumerate(rows):
            for key in ("act_std", "act_pred", "grad_std", "grad_pred"):
                writer.add_scalar(f"init_report/{key}/{scheme}", row[key], i)
    writer.close()
