"""Transfer learning: start a model from a trainkit checkpoint, replace the layers whose shape
changed (the head, when the number of classes differs), and freeze parameters by name prefix.

    trainkit data.classes=[5,6,7] model=mlp model.from_checkpoint=outputs/.../checkpoints/best.pt \
        model.freeze=[net.fc1,net.fc2]

Frozen parameters get no gradient and no optimizer state; frozen batch-norm layers also keep
their running statistics (the loop holds them in eval mode).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch import nn

from trainkit import checkpoint
from trainkit.errors import UserError


def checkpoint_path(path: str) -> Path:
    """A .pt file, or a run folder: its checkpoints/best.pt, else last.pt."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise UserError(f"model.from_checkpoint={path}: no checkpoints/best.pt or last.pt there")
    return p


def load_weights(
    model: nn.Module, path: str, trusted: checkpoint.Targets = frozenset()
) -> tuple[list[str], dict]:
    """Copy every tensor of the checkpoint whose name and shape match. Returns the names of the
    tensors left as initialized (shape changed) and the checkpoint's model config. A different
    architecture is an error. `trusted`: the user's own classes (checkpoint.load)."""
    file = checkpoint_path(path)
    ckpt = checkpoint.load(file, trusted=trusted)
    theirs, ours = ckpt["model"], model.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if missing or unexpected:
        was = ckpt.get("config", {}).get("model", {}).get("_target_", "another model")
        example = (missing or unexpected)[0]
        raise UserError(
            f"{file} holds a {was} whose layers differ from this model's ({example} is in one "
            "but not the other): use the model settings the checkpoint was trained with"
        )
    replaced = [k for k in ours if theirs[k].shape != ours[k].shape]
    model.load_state_dict({k: v for k, v in theirs.items() if k not in replaced}, strict=False)
    return replaced, ckpt.get("config", {}).get("model", {})


# Model settings that change what the weights compute without changing their names or shapes:
# a checkpoint loads into either setting, silently.
SAME_SHAPES_OTHER_FUNCTION = ("activation", "pool_first")


def differing_settings(theirs: dict, ours: DictConfig, file: str) -> list[str]:
    """One warning per SAME_SHAPES_OTHER_FUNCTION setting in which the checkpoint's model config
    (`theirs`) differs from this model's: the loaded weights compute another function."""
    return [
        f"{file} was trained with model.{key}={_yaml(theirs[key])} and this model has "
        f"model.{key}={_yaml(ours[key])}: the loaded weights compute another function; set "
        f"model.{key}={_yaml(theirs[key])} to start where that run left off"
        for key in SAME_SHAPES_OTHER_FUNCTION
        if key in theirs and key in ours and theirs[key] != ours[key]
    ]


def _yaml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def freeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    """requires_grad=False for every parameter whose name starts with one of `prefixes`."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(_under(name, prefix) for name in names):
            tops = sorted({name.split(".")[0] for name in names})
            raise UserError(
                f"model.freeze: {prefix} names no parameter; names start with {', '.join(tops)} "
                "(see the parameter table of a run)"
            )
    frozen = []
    for name, param in model.named_parameters():
        if any(_under(name, prefix) for prefix in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip(".") + ".")


def apply(
    model: nn.Module, cfg: DictConfig, trusted: checkpoint.Targets = frozenset()
) -> tuple[list[str], list[str]]:
    """Load and freeze as the model group says. Returns the names of the replaced tensors and
    warnings about settings that differ from the checkpoint's (differing_settings)."""
    replaced, warnings = [], []
    source = cfg.get("from_checkpoint")  # a user's model config may leave both keys out
    if source:
        ours = checkpoint.targets_in({"model": OmegaConf.to_container(cfg, resolve=True)})
        replaced, theirs = load_weights(model, source, ours | set(trusted))
        warnings = differing_settings(theirs, cfg, str(checkpoint_path(source)))
    freeze(model, list(cfg.get("freeze") or []))
    return replaced, warnings


def parameter_table(model: nn.Module) -> Table:
    """Trainable and frozen parameter counts per top-level module."""
    table = Table(title="parameters", title_justify="left")
    for column in ("module", "trainable", "frozen"):
        table.add_column(column, justify="left" if column == "module" else "right")
    modules = dict(model.named_children())
    if len(modules) == 1:  # a wrapper such as MLP.net: show the layers inside it
        ((prefix, only),) = modules.items()
        modules = {f"{prefix}.{name}": m for name, m in only.named_children()}
    totals = [0, 0]
    for name, module in modules.items():
        params = list(module.parameters())
        if not params:
            continue
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        totals[0] += trainable
        totals[1] += frozen
        table.add_row(name, f"{trainable:,}", f"{frozen:,}")
    table.add_row("total", f"{totals[0]:,}", f"{totals[1]:,}", style="bold")
    return table
