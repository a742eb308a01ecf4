"""Shared fixtures: a small real slice of Fashion-MNIST, generated CIFAR-10 files, and a way to
compose the real config the way the CLI does."""

from __future__ import annotations

import os

# One torch thread per test process, before torch is imported (trainkit runs in subprocesses
# inherit it): `pytest -n auto` runs one worker per core, and two workers each running torch
# on both cores contend; test_studies.py and test_tools.py took 114 s that way, 65 s this way
# (2 cores, Zen 3). A test of thread counts sets trainer.threads itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from trainkit.config import CONF_DIR, expand_aliases, register_schemas
from trainkit.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, fashion_mnist_files, read_idx

SLICE_TRAIN, SLICE_TEST = 1200, 400
GROUP_OPTIONS = [
    (group.name, option.stem)
    for group in sorted(CONF_DIR.iterdir())
    if group.is_dir()
    for option in sorted(group.glob("*.yaml"))
]


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: two zero bytes, type 0x08 (uint8), ndim, big-endian dims, then data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_cifar10(root: Path, n_train_per_batch: int = 40, n_test: int = 30, seed: int = 0) -> Path:
    """Files in the real CIFAR-10 python format: pickled dicts with bytes keys, uint8 rows of
    3072 values (1024 red, 1024 green, 1024 blue), integer labels. Returns the images written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": n_train_per_batch for i in range(1, 6)} | {"test_batch": n_test}
    for name, n in batches.items():
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, :1024] = (labels * 25)[:, None]  # a learnable signal in the red channel
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return folder


@pytest.fixture(autouse=True)
def no_hydra_run_left_behind() -> object:
    """A test that runs Hydra's app in this process leaves HydraConfig set: a later test in
    the same worker would read that run's overrides, choices and mode as its own."""
    yield
    HydraConfig.instance().cfg = None


@pytest.fixture(scope="session")
def fmnist_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 1200 training and 400 test samples of the real Fashion-MNIST, as idx.gz files."""
    files = fashion_mnist_files(DEBIAN_FASHION_MNIST)
    if files is None:
        pytest.fail(
            "Fashion-MNIST is missing: run scripts/setup.sh (installs dataset-fashion-mnist)"
        )
    root = tmp_path_factory.mktemp("fmnist")
    for key, n in [("train", SLICE_TRAIN), ("test", SLICE_TEST)]:
        for kind in ("images", "labels"):
            array = read_idx(files[f"{key}_{kind}"])[:n]
            write_idx(root / f"{FASHION_MNIST_FILES[f'{key}_{kind}']}.gz", array)
    return root


COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]


def write_pngs(folder: Path, per_class: int, seed: int = 0) -> None:
    """One folder per class of 40x40 PNGs, each class a colour under noise: learnable."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, color in enumerate(COLORS):
        (folder / f"class_{'abc'[c]}").mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(0, 60, (40, 40, 3))
            pixels = np.clip(np.array(color) * 0.7 + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"class_{'abc'[c]}" / f"{i}.png")


@pytest.fixture(scope="session")
def image_folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pictures")
    write_pngs(root, per_class=20)
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return root


def small_overrides(fmnist_root: Path, model: str = "mlp") -> list[str]:
    """A run that takes a second or two: the slice, 200 of it for validation, a small model."""
    model_size = {
        "mlp": ["model.hidden=[64]"],
        "cnn": ["model.channels=[8,16]", "model.hidden=32"],
        "resnet": ["model.widths=[8,16]", "model.blocks=1"],
        "torchvision": ["model.arch=resnet18"],
    }
    return [
        f"data.root={fmnist_root}",
        "data.val_size=200",
        "data.download=false",
        "epochs=2",
        "batch_size=100",
        "diagnostics.pictures=false",  # matplotlib figures: ~0.5 s a run; tested on their own
        "diagnostics.advice=false",  # checking each advice: ~0.4 s a run; test_verdict.py's
        "trainer.precision=fp32",  # auto would be bf16 on a CPU with AMX: the same numbers on all
        f"model={model}",
        *model_size[model],
    ]


def compose_config(overrides: list[str]) -> DictConfig:
    register_schemas()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=expand_aliases(overrides))
