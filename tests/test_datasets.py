"""More datasets through the same in-memory batched pipeline: a folder of your own images
(data=image_folder) and torchvision's sets by name (data=torchvision data.name=MNIST), each on
files generated in its own on-disk format."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from trainkit import data
from trainkit.errors import UserError

from .conftest import write_pngs
from .test_cli import trainkit


def folder_cfg(root: Path, **kw: object) -> object:
    return OmegaConf.create({
        "name": "image_folder", "root": str(root), "download": False, "val_size": 6,
        "train_size": None, "test_size": None, "split_seed": 0, "classes": None, "mean": None,
        "std": None, "size": 16, "channels": 3, "test_fraction": 0.2, **kw,
    })  # fmt: skip


@pytest.mark.slow
def test_an_image_folder_trains_with_its_folder_names_as_classes(tmp_path: Path) -> None:
    write_pngs(tmp_path / "pics", per_class=20)
    args = ["data=image_folder", f"data.root={tmp_path / 'pics'}", "data.val_size=6",
            "data.size=16", "model=cnn", "model.channels=[8,16]", "epochs=4", "batch_size=16",
            "diagnostics.pictures=false", "hydra.run.dir=run"]  # fmt: skip
    result = trainkit(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] | {"source": ""} == {"source": "", "train": 42, "val": 6, "test": 12}
    assert summary["confusion_matrix"]["classes"] == ["class_a", "class_b", "class_c"]
    assert summary["test"]["acc"] >= 0.9  # three colours: learnt


def test_an_image_folder_reads_train_and_test_folders_grey_and_resized(tmp_path: Path) -> None:
    write_pngs(tmp_path / "pics" / "train", per_class=10)
    write_pngs(tmp_path / "pics" / "test", per_class=4, seed=1)
    d = data.load(folder_cfg(tmp_path / "pics", channels=1, size=12), torch.device("cpu"))
    assert d.train.images.shape == (24, 1, 12, 12) and d.test.images.shape == (12, 1, 12, 12)
    assert d.train.images.dtype == torch.uint8 and d.class_names == ["class_a", "class_b",
                                                                      "class_c"]  # fmt: skip
    assert sorted(d.test.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # Grey of the red class (R ~184, G and B ~51): PIL's L = 0.299 R + 0.587 G + 0.114 B ~ 91
    red = d.test.images[d.test.labels == 0].float().mean().item()
    assert 80 < red < 100


def test_a_file_that_is_not_an_image_gets_one_line(tmp_path: Path) -> None:
    write_pngs(tmp_path / "pics", per_class=5)
    (tmp_path / "pics" / "class_b" / "notes.png").write_text("not an image")
    with pytest.raises(UserError, match=r"notes.png cannot be read as an image .*: remove or"):
        data.load(folder_cfg(tmp_path / "pics"), torch.device("cpu"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Uncompressed idx, as torchvision keeps MNIST's raw files."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name", ["MNIST", "KMNIST"])
@pytest.mark.slow
def test_torchvision_digit_sets_train_from_their_raw_files(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "root" / name / "raw"  # where torchvision puts them
    raw.mkdir(parents=True)
    for stem, n in (("train", 300), ("t10k", 100)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, label in enumerate(labels):  # a bright band whose row says the label
            images[i, 2 * label : 2 * label + 3] = 255
        write_idx(raw / f"{stem}-images-idx3-ubyte", images)
        write_idx(raw / f"{stem}-labels-idx1-ubyte", labels)
    args = ["data=torchvision", f"data.name={name}", f"data.root={tmp_path / 'root'}",
            "data.download=false", "data.val_size=50", "model=mlp", "model.hidden=[32]",
            "epochs=5", "batch_size=50", "diagnostics.pictures=false",
            "hydra.run.dir=run"]  # fmt: skip
    result = trainkit(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"]["train"] == 250 and summary["dataset"]["test"] == 100
    assert summary["test"]["acc"] > 0.8  # the label is where the band is
    config = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert config.data.name == name and config.data.mean is None  # each set's own statistics


def test_cifar100_reads_its_python_files_with_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 120), ("test", 40)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, n).tolist(),
                 b"coarse_labels": rng.integers(0, 20, n).tolist()}  # fmt: skip
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    cfg = OmegaConf.create({
        "name": "CIFAR100", "root": str(tmp_path), "download": False, "val_size": 20,
        "train_size": None, "test_size": None, "split_seed": 0, "classes": None, "mean": None,
        "std": None,
    })  # fmt: skip
    d = data.load(cfg, torch.device("cpu"))
    assert d.num_classes == 100 and len(d.train) == 100 and len(d.test) == 40
    assert d.train.images.shape[1:] == (3, 32, 32)
    assert d.mean == pytest.approx([0.5071, 0.4865, 0.4409])


def test_svhn_reads_its_mat_files_and_makes_label_10_the_digit_0(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 60), ("test_32x32.mat", 20)):
        labels = np.arange(n) % 10 + 1  # 1..10, as SVHN stores them
        images = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(tmp_path / name, {"X": images, "y": labels[:, None]})
    cfg = OmegaConf.create({
        "name": "SVHN", "root": str(tmp_path), "download": False, "val_size": 10,
        "train_size": None, "test_size": None, "split_seed": 0, "classes": None, "mean": None,
        "std": None,
    })  # fmt: skip
    d = data.load(cfg, torch.device("cpu"))
    assert d.test.images.shape == (20, 3, 32, 32) and d.num_classes == 10
    assert d.test.labels.tolist() == [(i % 10 + 1) % 10 for i in range(20)]
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, damaged")
    with pytest.raises(UserError, match=r"test_32x32.mat is not an SVHN file"):
        data.load(cfg, torch.device("cpu"))
