"""`trainkit resume=<run dir or checkpoint> [data.root=...] [device=...]`: go on with a run.

The run continues in its own folder from the checkpoint (last.pt by default), as if it had
never stopped: model, optimizer, scheduler, every RNG, the batch order and an interrupted
epoch's position come back, so a deterministic run ends with the numbers of an uninterrupted
one. What the stopped process wrote after that checkpoint is taken back first: metrics.csv rows
of later epochs, and TensorBoard events newer than the checkpoint (the event files are
rewritten without them), so curves continue without a duplicated or missing step.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from trainkit import checkpoint, init, layout, losses, runtime, schedule
from trainkit.config import compose_config, shorten_aliases
from trainkit.errors import UserError
from trainkit.files import write_atomic
from trainkit.loop import FitState, Training
from trainkit.run_dirs import SPLIT_RUNS
from trainkit.summary import read as read_summary

# Where and how to run may change on resume; what is trained may not.
CHANGEABLE = ("data.root", "data.download", "trainer.device", "trainer.threads")


def find_checkpoint(target: str) -> tuple[Path, Path]:
    """(checkpoint, run dir) for a run dir or a checkpoint inside its checkpoints/ folder."""
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
        if not path.is_file():
            raise UserError(f"resume={target}: no checkpoints/last.pt there: name a run dir "
                            "(outputs/<date>/<time>) or a checkpoint file")
    elif not path.is_file():
        raise UserError(f"resume={target}: no such run dir or checkpoint: check the path")
    if path.parent.name != "checkpoints":
        raise UserError(f"resume={target}: a resumed run goes on in its own run dir: name a "
                        "checkpoint inside <run dir>/checkpoints/")
    return path, path.parent.parent


def load(target: str, overrides: list[str]) -> tuple[DictConfig, Path, dict]:
    """The run's own config (with only CHANGEABLE keys overridden), its dir and checkpoint.
    Other overrides may repeat the run's own values (the command that started it, with
    resume= added): they are composed (with the user's config dir) and compared."""
    path, run_dir = find_checkpoint(target)
    refuse_failed(run_dir, path)
    changes = [o for o in overrides if o.partition("=")[0] in CHANGEABLE]
    repeats = [o for o in overrides if o not in changes]
    composed = compose_config([*repeats, *changes]) if repeats else None
    trusted = checkpoint.targets_in(to_container(composed)) if composed is not None else set()
    saved = checkpoint.load(path, trusted=trusted)  # names no code but trainkit's and theirs
    if "fit" not in saved:
        raise UserError(
            f"{path} has no resume state (an older trainkit wrote it): start a new run, or "
            "load its weights with model.from_checkpoint="
        )
    check_resume_state(saved, path)
    cfg = checkpoint.config_of(saved, path)
    if composed is not None:
        refuse_changes(repeats, composed, cfg)
    for text in changes:
        key, _, value = text.partition("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None)
    fit = saved["fit"]
    if fit["progress"] is None and fit["epoch"] >= fit["epochs"]:
        raise UserError(
            f"{run_dir} finished all {fit['epochs']} epochs: nothing to resume (to train on, "
            f"start a new run with model.from_checkpoint={path})"
        )
    return cfg, run_dir, saved


def to_container(cfg: DictConfig | None) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}  # type: ignore[return-value]


def refuse_changes(overrides: list[str], composed: DictConfig, saved: DictConfig) -> None:
    """Each override (a key or a group) must give the value the run was saved with; the keys
    that may change (CHANGEABLE) are left out of the comparison, and a group saved before
    `_target_`s ({name: cosine}) is compared as it builds today."""
    for text in overrides:
        key = text.partition("=")[0].lstrip("+~")
        if key.startswith("hydra."):  # where configs are found, not what the run is
            continue
        ours, theirs = (comparable(key, OmegaConf.select(c, key)) for c in (composed, saved))
        if ours != theirs:
            was = f"another {key}" if isinstance(theirs, dict) else f"{key}={theirs}"
            raise UserError(
                f"{shorten_aliases(text)}: a resumed run keeps its config, and it was saved with "
                f"{shorten_aliases(was)}; only {', '.join(CHANGEABLE)} may change"
            )


def comparable(key: str, node: object) -> object:
    """A config value, or a group as a plain dict without the CHANGEABLE keys."""
    if not OmegaConf.is_config(node):
        return node
    group = {"scheduler": schedule.legacy, "loss": losses.legacy, "init": init.legacy}.get(key)
    if group is not None:
        node = group(node)  # type: ignore[arg-type]
    plain = OmegaConf.to_container(node, resolve=True)
    if isinstance(plain, dict):
        for changeable in CHANGEABLE:
            group_key, _, leaf = changeable.partition(".")
            if group_key == key:
                plain.pop(leaf, None)
    return plain


# What restore() reads, with the type it must have: a damaged file gets one line, not a
# traceback from deep inside the restore.
RESUME_STATE = {"model": dict, "optimizer": dict, "rng": dict, "fit": dict, "callbacks": dict,
                "config": dict, "epoch": int, "step": int, "saved_at": float}
FIT_STATE = {"epochs": int, "steps_per_epoch": int, "epoch": int, "step": int,
             "generator": torch.Tensor, "history": list}


def check_resume_state(saved: dict, path: Path) -> None:
    for where, wanted in ((saved, RESUME_STATE), (saved["fit"], FIT_STATE)):
        if not isinstance(where, dict):
            raise checkpoint.damaged(path, "its fit state is not a mapping")
        for key, kind in wanted.items():
            if not isinstance(where.get(key), kind):
                raise checkpoint.damaged(path, f"{key} is missing or not a {kind.__name__}")
    for key in ("model", "trainer", "optimizer", "scheduler", "data"):
        if not isinstance(saved["config"].get(key), dict):
            raise checkpoint.damaged(path, f"its config has no {key} group")


def refuse_failed(run_dir: Path, path: Path) -> None:
    """A run that diverged would diverge again from the same state with the same config."""
    summary = read_summary(run_dir / "summary.json")
    if summary is not None and not summary.damaged and summary.status == "failed":
        reason = str(summary.reason or summary.stop_reason or "").split(";")[0]
        raise UserError(
            f"{run_dir} failed ({reason}) and would fail again the same way: start a new run "
            f"with the fix, e.g. model.from_checkpoint={path} lr=<lower>"
        )


def log_to_run_dir(run_dir: Path) -> None:
    """Append to the run's trainkit.log, as Hydra did for the first part of the run."""
    handler = logging.FileHandler(run_dir / "trainkit.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("trainkit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def take_back_later_outputs(run_dir: Path, saved: dict) -> None:
    """Drop what the stopped process logged after the checkpoint was written."""
    epochs_done = len(saved["fit"]["history"])
    keep_csv_rows(run_dir / "metrics.csv", epochs_done)
    for folder in (run_dir, *(run_dir / name for name in SPLIT_RUNS.values())):
        keep_events_until(folder, saved["saved_at"])


def keep_csv_rows(path: Path, epochs: int) -> None:
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    write_atomic(path, lambda f: csv.writer(f).writerows(rows[: 1 + epochs]))


def keep_events_until(run_dir: Path, until: float) -> None:
    """Rewrite the run's event files as one, keeping each file's version record and every
    event written at or before `until` (each event carries its wall time). Records already kept
    are not kept twice, so an attempt that was itself cut short is repaired by the next one."""
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    if not files:
        return
    seen: set[bytes] = set()
    kept: list[bytes] = []
    for file in files:
        for record in RawEventFileLoader(str(file)).Load():
            event = event_pb2.Event.FromString(record)
            version = event.HasField("file_version")  # one such record, at the start
            wanted = not kept if version else event.wall_time <= until
            if wanted and record not in seen:
                seen.add(record)
                kept.append(record)

    def write(f: object) -> None:
        writer = RecordWriter(f)
        for record in kept:
            writer.write(record)
        writer.flush()

    # The first name: TensorBoard reads files in name order.
    write_atomic(files[0], write, binary=True)
    for file in files[1:]:
        file.unlink()


def restore(saved: dict, t: Training, device: object) -> FitState:
    """Put the model, optimizer, scheduler and RNGs back as they were saved; the fit's state to
    go on from. The callbacks' states (saved["callbacks"]) are fit's to give back to them."""
    with checkpoint.fitting_its_config():
        t.model.load_state_dict(saved["model"])
        t.optimizer.load_state_dict(saved["optimizer"])
        layout.match_state_to_params(t.optimizer)  # saved on another device: other layouts
        if t.scheduler is not None and saved["scheduler"] is not None:
            t.scheduler.load_state_dict(saved["scheduler"])
        if t.scaler is not None and saved.get("scaler") is not None:
            t.scaler.load_state_dict(saved["scaler"])
        state = FitState.from_state_dict(saved["fit"], device)  # type: ignore[arg-type]
        runtime.set_rng_state(saved["rng"])  # last: building the model drew from them
    return state
