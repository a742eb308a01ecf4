"""Reading a run's TensorBoard data back with TensorBoard's own reader, as its tabs see it."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

SPLITS = ("train", "validation", "test")  # sibling runs in a run's folder, Keras's layout


def events(folder: Path) -> EventAccumulator:
    loaded = EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0}
    )
    loaded.Reload()
    return loaded


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    return [(s.step, s.value) for s in events(folder).Scalars(tag)]


def scalar_tags(folder: Path) -> set[str]:
    return set(events(folder).Tags()["scalars"])


def texts(folder: Path) -> dict[str, list[str]]:
    """Text tag -> its entries, as TensorBoard's TEXT tab lists them."""
    loaded = events(folder)
    names = [t for t in loaded.Tags()["tensors"] if t.endswith("/text_summary")]
    return {
        name.removesuffix("/text_summary"): [
            e.tensor_proto.string_val[0].decode() for e in loaded.Tensors(name)
        ]
        for name in names
    }


def hparams_records(folder: Path) -> tuple[object, object]:
    """The experiment and session-start records a job wrote for the HPARAMS tab."""
    loaded = events(folder)
    content = {
        tag: loaded.SummaryMetadata(tag).plugin_data.content
        for tag in (metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG)
    }
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]
    )
    return experiment, start
