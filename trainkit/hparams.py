"""TensorBoard's HPARAMS tab, written so that it works for every sweep.

`SummaryWriter.add_hparams` writes into a new timestamped sub-folder with its own copy of the
metrics, so the tab shows runs that are not the job's own and learning curves that are not
beside them. Here each job writes the three hparams records (experiment, session start,
session end) into its own run dir, with:
- the metrics declared up front: the tags the run already logs, read back by the tab;
- the same key set in every job of a sweep: every config group's choice, the keys people sweep
  most, and every key the command line overrides (all jobs of a sweep override the same keys);
- values TensorBoard can hold: None and lists become text.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from trainkit.config import shorten_aliases
from trainkit.run_dirs import SPLIT_RUNS

# "experiment" is the preset, if any: the groups' choices alone do not show what it set.
GROUPS = ("experiment", "data", "model", "init", "loss", "optimizer", "scheduler",
          "regularization", "augment", "trainer")
CORE_KEYS = ("optimizer.lr", "trainer.batch_size", "trainer.epochs", "trainer.seed")
# Overrides that say where things are, not how training goes.
NOT_HPARAMS = ("data.root", "data.download", "trainer.device", "trainer.overwrite")

HEADLINE = "curves"  # loss and accuracy: curves/loss sorts before diagnostics/, schedule/, ...
STATUS = {
    "completed": api_pb2.STATUS_SUCCESS,
    "failed": api_pb2.STATUS_FAILURE,
    "interrupted": api_pb2.STATUS_UNKNOWN,  # the protocol has no "stopped early"
}


def best_tag(monitor: str) -> str:
    """The monitored metric's best so far, a curve in the run's own folder (callbacks.py)."""
    return f"summary/best_{monitor}"


def metric_names(monitor: str) -> list[tuple[str, str, str]]:
    """(group, tag, column title) of each metric the HPARAMS tab shows for a job: the last value
    of `tag` in the TensorBoard run `<job>/<group>` (Keras's layout: train/, validation/, test/
    beside the job's own records; "" is the job's own folder)."""
    splits = [(SPLIT_RUNS[split], f"{HEADLINE}/{kind}", f"{split} {kind}")
              for split in ("val", "train", "test") for kind in ("accuracy", "loss")]
    return [*splits, ("", best_tag(monitor), f"best {monitor}")]


def group_choices(run_dir: Path | None = None) -> dict[str, Any]:
    """Config group -> the option this job chose: Hydra's, or for a resumed run (no Hydra app)
    what Hydra wrote into `run_dir`; empty when neither is there (as in tests)."""
    if HydraConfig.initialized():
        return dict(HydraConfig.get().runtime.choices)
    saved = run_dir / ".hydra" / "hydra.yaml" if run_dir is not None else None
    if saved is None or not saved.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(saved), "hydra.runtime.choices", default={})
    return dict(choices)


def collect(cfg: DictConfig) -> dict[str, bool | float | str]:
    """The hparams of this job: group choices, the core keys and the overridden keys."""
    choices = group_choices()
    overridden: list[str] = []
    if HydraConfig.initialized():
        overridden = [key_of(o) for o in HydraConfig.get().overrides.task]
    values: dict[str, Any] = {group: choices.get(group) or "" for group in GROUPS}
    for key in [*CORE_KEYS, *sorted(overridden)]:
        if key in values or key in NOT_HPARAMS or key.startswith("hydra"):
            continue
        node = OmegaConf.select(cfg, key, default=None)
        values[key] = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    return {key: normalize(value) for key, value in values.items()}


def key_of(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def swept_keys(run_dir: Path) -> list[str]:
    """The keys a sweep varies, in the order typed, from the multirun.yaml Hydra wrote into the
    sweep dir before its first job (the same answer in every job): sweep overrides and a
    sweeper's own params."""
    path = run_dir.parent / "multirun.yaml"
    if not path.is_file():
        return []
    multirun = OmegaConf.load(path)
    overrides = [str(o) for o in OmegaConf.select(multirun, "hydra.overrides.task", default=[])]
    params = OmegaConf.select(multirun, "hydra.sweeper.params", default=None) or {}
    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [
        key_of(text) for o, text in zip(parsed, overrides, strict=True) if o.is_sweep_override()
    ]
    return list(dict.fromkeys([*keys, *(str(k) for k in params)]))


def normalize(value: Any) -> bool | float | str:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return json.dumps(value)  # None -> "null", lists and dicts -> their JSON text


def write_start(writer: SummaryWriter, hparams: dict, monitor: str, run_dir: Path) -> None:
    """Declare the experiment (hparams and metrics) and start this job's session.

    In a sweep the declared columns are the swept keys, marked `differs` (TensorBoard shows the
    first five such columns), and the trial is named by their values (`optimizer=sgd,lr=0.1 ·
    <sweep folder>`: the folder keeps two sweeps with the same values in one logdir apart).
    The keys the sweep holds constant stay in each session's values, not in the columns. A lone
    run declares every key."""
    swept = [key for key in swept_keys(run_dir) if key in hparams]
    columns = swept or list(hparams)
    infos = [
        api_pb2.HParamInfo(name=key, display_name=shorten_aliases(f"{key}=").rstrip("="),
                           type=data_type(hparams[key]), differs=key in swept)
        for key in columns
    ]
    metrics = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(group=group, tag=tag), display_name=title)
        for group, tag, title in metric_names(monitor)
    ]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)
    name = trial_name(hparams, swept, run_dir)
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time(), group_name=name)
    for key, value in hparams.items():
        field = {bool: "bool_value", float: "number_value", str: "string_value"}[type(value)]
        setattr(start.hparams[key], field, value)
    write(writer, metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))
    write(writer, metadata.SESSION_START_INFO_TAG,
          plugin_data_pb2.HParamsPluginData(session_start_info=start))


def trial_name(hparams: dict, swept: list[str], run_dir: Path) -> str:
    """`optimizer=sgd,lr=0.1 · <sweep folder>`, the swept keys as typed; "" outside a sweep or
    when the job's folder is named so (TensorBoard then names the trial by its folder's path)."""
    if not swept:
        return ""
    values = ",".join(shorten_aliases(f"{key}={as_text(hparams[key])}") for key in swept)
    if run_dir.name == values:  # the folder says it already, and its path is unique
        return ""
    return f"{values} · {run_dir.parent.name}"


def as_text(value: bool | float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # epochs=3, not epochs=3.0
    return str(value).lower() if isinstance(value, bool) else str(value)


def write_end(writer: SummaryWriter, status: str) -> None:
    end = plugin_data_pb2.SessionEndInfo(status=STATUS[status], end_time_secs=time.time())
    write(writer, metadata.SESSION_END_INFO_TAG,
          plugin_data_pb2.HParamsPluginData(session_end_info=end))


def write(writer: SummaryWriter, tag: str, content: plugin_data_pb2.HParamsPluginData) -> None:
    # tensorboard.plugins.hparams.summary builds these same records but needs TensorFlow.
    value = Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(content))
    writer._get_file_writer().add_summary(Summary(value=[value]))


def data_type(value: bool | float | str) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, float):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING
