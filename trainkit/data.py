"""Datasets held whole on the run's device as uint8 tensors, split and batched there.

Fashion-MNIST comes from its standard idx files, CIFAR-10 from its standard python batches.
Each is looked for in `data.root`, then where the system keeps it, then downloaded with
torchvision where a network exists. Batches are cut by index from the device-resident tensor
and normalized on the device: no per-sample Python, no DataLoader.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from trainkit import distributed
from trainkit.errors import UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "trainkit"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W] on the run's device (NHWC storage: see load)
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    num_classes: int
    source: Path  # where the files were read from
    class_names: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


# ---------------------------------------------------------------- Fashion-MNIST (idx files)


def fashion_mnist_files(folder: Path) -> dict[str, Path] | None:
    """The four idx files in `folder`, gzipped or not, if all are there."""
    found = {}
    for key, stem in FASHION_MNIST_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found[key] = next((p for p in candidates if p.is_file()), None)
    return found if all(found.values()) else None


def find_fashion_mnist(folder: Path) -> Path | None:
    """`folder`, or torchvision's FashionMNIST/raw below it, if it holds the four idx files."""
    for base in (folder, folder / "FashionMNIST" / "raw"):
        if fashion_mnist_files(base) is not None:
            return base
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a uint8 array; a clear error if it is damaged."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        raw = bytearray(raw)  # writable, so torch.from_numpy needs no copy and warns of nothing
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path} cannot be read ({e}): reinstall the dataset files") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path} is not a uint8 idx file: reinstall the dataset files")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    values = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(dims)):
        raise UserError(
            f"{path} is truncated or corrupt ({values.size} values, header says "
            f"{int(np.prod(dims))}): reinstall the dataset files"
        )
    return values.reshape(dims)


def load_fashion_mnist(folder: Path) -> tuple[np.ndarray, ...]:
    files = fashion_mnist_files(folder)
    train_x, test_x = read_idx(files["train_images"]), read_idx(files["test_images"])
    train_y, test_y = read_idx(files["train_labels"]), read_idx(files["test_labels"])
    # idx images are [N, H, W]; add the channel axis.
    return train_x[:, None], train_y, test_x[:, None], test_y


# ---------------------------------------------------------------- CIFAR-10 (python batches)


class _CifarUnpickler(pickle.Unpickler):
    """Loads the CIFAR batches' dicts of numpy arrays and refuses anything that could run code."""

    SAFE = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def find_cifar10(folder: Path) -> Path | None:
    for base in (folder / CIFAR10_DIR, folder):
        names = [*CIFAR10_TRAIN_BATCHES, "test_batch"]
        if all((base / n).is_file() for n in names):
            return base
    return None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # any damage: truncated pickle, wrong keys, wrong sizes
        raise UserError(f"{path} is not a valid CIFAR-10 batch ({e}): reinstall it") from None
    if len(images) != len(labels):
        raise UserError(f"{path} has {len(images)} images but {len(labels)} labels: reinstall it")
    return images, labels


def load_cifar10(folder: Path) -> tuple[np.ndarray, ...]:
    parts = [read_cifar_batch(folder / n) for n in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = read_cifar_batch(folder / "test_batch")
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    return train_x, train_y, test_x, test_y


# ---------------------------------------------------------------- finding and downloading


@dataclass(frozen=True)
class DatasetSpec:
    input_shape: tuple[int, int, int]  # C, H, W of one image
    find: Callable[[Path], Path | None]  # the folder below a search folder holding the files
    read: Callable[[Path], tuple[np.ndarray, ...]]  # -> train images, labels, test images, labels
    torchvision_class: str  # downloads where a network exists
    how_to_get: str  # said when the files are missing
    class_names: tuple[str, ...]


DATASETS = {
    "fashion_mnist": DatasetSpec(
        (1, 28, 28),
        find_fashion_mnist,
        load_fashion_mnist,
        "FashionMNIST",
        "run `apt-get install dataset-fashion-mnist`, or set data.root=DIR holding the four "
        "idx .gz files",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "cifar10": DatasetSpec(
        (3, 32, 32),
        find_cifar10,
        load_cifar10,
        "CIFAR10",
        "set data.root=DIR holding cifar-10-batches-py/ (the python version from "
        "https://www.cs.toronto.edu/~kriz/cifar.html)",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
}


def search_folders(cfg: DictConfig) -> list[Path]:
    if cfg.root is not None:
        return [Path(cfg.root).expanduser()]
    system = [DEBIAN_FASHION_MNIST] if cfg.name == "fashion_mnist" else []
    return [*system, CACHE_DIR / cfg.name]


def spec(cfg: DictConfig) -> DatasetSpec:
    if cfg.name not in DATASETS:
        raise UserError(f"data.name={cfg.name}: choose one of {', '.join(DATASETS)}")
    return DATASETS[cfg.name]


def locate(cfg: DictConfig) -> Path | None:
    """The folder the dataset's files are read from, or None if no search folder has them."""
    for folder in search_folders(cfg):
        found = spec(cfg).find(folder)
        if found is not None:
            return found
    return None


def missing_message(cfg: DictConfig) -> str:
    where = ", ".join(str(p) for p in search_folders(cfg))
    return f"{cfg.name} not found in {where}: {spec(cfg).how_to_get}"


def download(cfg: DictConfig) -> Path:
    import torchvision.datasets

    folder = search_folders(cfg)[-1]
    dataset_class = getattr(torchvision.datasets, spec(cfg).torchvision_class)
    try:
        for train in (True, False):
            dataset_class(root=str(folder), train=train, download=True)
    except Exception as e:  # no network, a proxy, a full disk...
        reason = " ".join(str(e).split())  # torchvision's message spans lines
        raise UserError(f"{missing_message(cfg)} (download failed: {reason})") from None
    found = spec(cfg).find(folder)
    if found is None:
        raise UserError(missing_message(cfg))
    return found


# ---------------------------------------------------------------- splits and batches


def _count(size: float | None, total: int, what: str) -> int:
    """A fraction (<= 1) or a count (> 1) of `total`; None is all of it."""
    if size is None:
        return total
    n = int(round(size * total)) if size <= 1 else int(size)
    if not 1 <= n <= total:
        raise UserError(f"{what}={size} asks for {n} of {total} samples: choose 1..{total}")
    return n


def load(cfg: DictConfig, device: torch.device, channels_last: bool = False) -> Data:
    """Read the dataset, carve validation from train with a fixed seed, move it to `device`.
    `channels_last`: hold color images as [N, C, H, W] views of NHWC storage, the layout a
    channels_last model takes in: converting each batch instead measured ~4 ms per CIFAR-10
    batch of 128 on the CPU (a uint8 NCHW -> NHWC copy is slow here), ~7% of a CNN step."""
    found = locate(cfg)
    if found is None:
        if not cfg.download:
            raise UserError(missing_message(cfg))
        found = download(cfg)
    train_x, train_y, test_x, test_y = spec(cfg).read(found)
    if cfg.classes:
        (train_x, train_y), (test_x, test_y) = (
            keep_classes(train_x, train_y, list(cfg.classes)),
            keep_classes(test_x, test_y, list(cfg.classes)),
        )

    n_val = _count(cfg.val_size, len(train_y) - 1, "data.val_size")
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, rest = order[:n_val], order[n_val:]
    train_idx = rest[: _count(cfg.train_size, len(rest), "data.train_size")]
    n_test = _count(cfg.test_size, len(test_y), "data.test_size")
    train_images, test_images = (image_tensor(x, channels_last) for x in (train_x, test_x))

    def split(images: torch.Tensor, y: np.ndarray, idx: torch.Tensor | slice) -> Split:
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))[idx]
        chosen = images[idx] if isinstance(idx, slice) else take(images, idx)
        return Split(chosen.to(device), labels.to(device))

    return Data(
        train=split(train_images, train_y, train_idx),
        val=split(train_images, train_y, val_idx),
        test=split(test_images, test_y, slice(0, n_test)),
        num_classes=len(cfg.classes) if cfg.classes else int(train_y.max()) + 1,
        source=found,
        class_names=[
            spec(cfg).class_names[c] for c in (cfg.classes or range(int(train_y.max()) + 1))
        ],
    )


def image_tensor(x: np.ndarray, channels_last: bool) -> torch.Tensor:
    """uint8 [N, C, H, W] images as a tensor; `channels_last` (and more than one channel): a view
    of NHWC storage. One channel needs nothing: both layouts are the same bytes."""
    images = torch.from_numpy(np.ascontiguousarray(x))
    if channels_last and images.shape[1] > 1:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def take(images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The images at `idx` (along the sample axis), in the layout they are held in.

    index_select, not images[idx]: advanced indexing measured ~150 us per batch of 128
    Fashion-MNIST images on the CPU, index_select ~7 us (5% of an MLP step). Channels-last
    images are gathered as whole rows of their NHWC view: index_select on the [N, C, H, W] view
    returns NCHW, copied element by element (~0.7 ms per CIFAR-10 batch of 128)."""
    if not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        return images.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
    return images.index_select(0, idx)


def keep_classes(
    images: np.ndarray, labels: np.ndarray, classes: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The samples of `classes` only, their labels renumbered 0..k-1 in the order given."""
    present = set(np.unique(labels).tolist())
    if not set(classes) <= present or len(set(classes)) != len(classes):
        raise UserError(f"data.classes={classes}: list distinct labels among {sorted(present)}")
    keep = np.isin(labels, classes)
    relabel = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    return images[keep], relabel[labels[keep]]


class Normalizer:
    """uint8 [N, C, H, W] -> float, (x/255 - mean) / std per channel."""

    def __init__(
        self, mean: list[float], std: list[float], device: torch.device, channels_last: bool = False
    ) -> None:
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.per_pixel: dict[torch.Size, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # A fresh float tensor (a copy even when given floats: the caller's stays as it was),
        # then two in-place passes: one addcmul with broadcast factors measured 3-4x slower.
        x = images.to(torch.float32, memory_format=self.memory_format,
                      copy=images.is_floating_point())  # fmt: skip
        scale, shift = self.factors(x.shape[1:])
        return x.mul_(scale).add_(shift)

    def factors(self, image_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """scale and shift as whole [1, C, H, W] images in the batch's layout, made once per
        shape. A [1, C, 1, 1] factor broadcast over a channels-last batch runs an inner loop of
        C elements: 0.8 ms instead of 40 us per CIFAR-10 batch of 128 on the CPU."""
        if image_shape not in self.per_pixel:
            self.per_pixel[image_shape] = tuple(
                f.expand(1, *image_shape).contiguous(memory_format=self.memory_format)
                for f in (self.scale, self.shift)
            )
        return self.per_pixel[image_shape]


def batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) per batch, in order; the last may be short."""
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]


def shuffled_batches(
    split: Split, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(sample indices, uint8 images, labels) per optimizer step, in a fresh random order drawn
    from `generator`; the last batch may be short. Under torchrun each rank gets its share of
    every batch (distributed.shard), so `batch_size` is the global batch."""
    order = torch.randperm(len(split), generator=generator).to(split.labels.device)
    for step in range(distributed.global_batches(len(split), batch_size)):
        idx = distributed.shard(order[step * batch_size : (step + 1) * batch_size])
        yield idx, take(split.images, idx), split.labels.index_select(0, idx)
