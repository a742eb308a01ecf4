"""Datasets held whole on the run's device as uint8 tensors, split and batched there.

Fashion-MNIST comes from its standard idx files, CIFAR-10 from its standard python batches.
Each is looked for in `data.root`, then where the system keeps it, then downloaded with
torchvision where a network exists. Batches are cut by index from the device-resident tensor
and normalized on the device: no per-sample Python, no DataLoader.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from trainkit import distributed
from trainkit.errors import UserError, first_line

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
    mean: list[float] = field(default_factory=lambda: [0.5])  # what Normalizer takes
    std: list[float] = field(default_factory=lambda: [0.25])

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


def idx_finder(torchvision_folder: str) -> Callable[[Path], Path | None]:
    """A `find` for the four idx files (Fashion-MNIST, MNIST, KMNIST: the same names): in a
    folder, or in torchvision's <Name>/raw below it."""

    def find(folder: Path) -> Path | None:
        for base in (folder, folder / torchvision_folder / "raw"):
            if fashion_mnist_files(base) is not None:
                return base
        return None

    return find


find_fashion_mnist = idx_finder("FashionMNIST")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a uint8 array; a clear error if it is damaged."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        raw = bytearray(raw)  # writable, so torch.from_numpy needs no copy and warns of nothing
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path} cannot be read ({e}): reinstall the dataset files") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path} is not a uint8 idx file: reinstall the dataset files")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise UserError(
            f"{path} has a damaged idx header ({ndim} dimensions, {len(raw)} "
            "bytes): reinstall the dataset files"
        )
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    values = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != math.prod(dims):
        raise UserError(
            f"{path} is truncated or corrupt ({values.size} values, header says "
            f"{math.prod(dims)}): reinstall the dataset files"
        )
    return values.reshape(dims)


def load_fashion_mnist(folder: Path) -> tuple[np.ndarray, ...]:
    files = fashion_mnist_files(folder)
    assert files is not None  # found by find_fashion_mnist
    arrays = []
    for part in ("train", "test"):
        images, labels = read_idx(files[f"{part}_images"]), read_idx(files[f"{part}_labels"])
        if images.ndim != 3:  # idx images are [N, H, W]
            raise UserError(
                f"{files[f'{part}_images']} holds {images.ndim}-D data, not a stack "
                "of 2-D images: reinstall the dataset files"
            )
        if labels.ndim != 1:
            raise UserError(
                f"{files[f'{part}_labels']} holds {labels.ndim}-D data, not one "
                "label per image: reinstall the dataset files"
            )
        arrays += [images[:, None], labels]  # add the channel axis
    return tuple(arrays)


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


def read_cifar_batch(path: Path, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"data is {data.dtype} {list(data.shape)}, not uint8 [N, 3072]")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels are {labels.dtype} {list(labels.shape)}, not integers")
        images = data.reshape(-1, 3, 32, 32)
    except Exception as e:  # any damage: truncated pickle, wrong keys, wrong sizes
        why = first_line(e)[:120]
        raise UserError(f"{path} is not a valid CIFAR batch ({why}): reinstall it") from None
    return images, labels.astype(np.int64)


def load_cifar10(folder: Path) -> tuple[np.ndarray, ...]:
    parts = [read_cifar_batch(folder / n) for n in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = read_cifar_batch(folder / "test_batch")
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    return train_x, train_y, test_x, test_y


CIFAR100_DIR = "cifar-100-python"


def find_cifar100(folder: Path) -> Path | None:
    for base in (folder / CIFAR100_DIR, folder):
        if (base / "train").is_file() and (base / "test").is_file():
            return base
    return None


def load_cifar100(folder: Path) -> tuple[np.ndarray, ...]:
    """The python version's train and test files, with their 100 fine labels."""
    train_x, train_y = read_cifar_batch(folder / "train", b"fine_labels")
    test_x, test_y = read_cifar_batch(folder / "test", b"fine_labels")
    return train_x, train_y, test_x, test_y


SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def find_svhn(folder: Path) -> Path | None:
    return folder if all((folder / name).is_file() for name in SVHN_FILES) else None


def load_svhn(folder: Path) -> tuple[np.ndarray, ...]:
    """SVHN's cropped digits (.mat files, read with scipy): label 10 is the digit 0."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError("data.name=SVHN reads MATLAB files with scipy: pip install scipy (or "
                        "torch-trainkit[svhn])") from None
    arrays = []
    for name in SVHN_FILES:
        try:
            mat = loadmat(folder / name)
            images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
            if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.dtype != np.uint8:
                raise ValueError(f"X is {images.dtype} {list(images.shape)}, not [32, 32, 3, N]")
            if labels.size and (labels.min() < 1 or labels.max() > 10):
                raise ValueError(f"a label {labels.min()}..{labels.max()} outside 1..10")
        except Exception as e:  # a damaged or foreign file
            raise UserError(f"{folder / name} is not an SVHN file ({first_line(e)[:100]}): "
                            "reinstall it") from None
        arrays += [images.transpose(3, 2, 0, 1).copy(), labels.astype(np.int64) % 10]
    return tuple(arrays)


# ---------------------------------------------------------------- finding and downloading


@dataclass(frozen=True)
class DatasetSpec:
    input_shape: tuple[int, int, int]  # C, H, W of one image
    find: Callable[[Path], Path | None]  # the folder below a search folder holding the files
    read: Callable[[Path], tuple[np.ndarray, ...]]  # -> train images, labels, test images, labels
    torchvision_class: str  # downloads where a network exists
    how_to_get: str  # said when the files are missing
    class_names: tuple[str, ...]
    mean: tuple[float, ...] = (0.5,)  # per-channel pixel mean and std on the 0..1 scale,
    std: tuple[float, ...] = (0.25,)  # used when data.mean / data.std are null


DIGITS = tuple(str(d) for d in range(10))
# Kuzushiji-MNIST's ten hiragana, in their romanized names (torchvision's KMNIST.classes).
HIRAGANA = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")

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
    "mnist": DatasetSpec(
        (1, 28, 28), idx_finder("MNIST"), load_fashion_mnist, "MNIST",
        "set data.root=DIR holding MNIST's four idx files (or MNIST/raw/ below it)",
        DIGITS, (0.1307,), (0.3081,),
    ),
    "kmnist": DatasetSpec(
        (1, 28, 28), idx_finder("KMNIST"), load_fashion_mnist, "KMNIST",
        "set data.root=DIR holding KMNIST's four idx files (or KMNIST/raw/ below it)",
        HIRAGANA, (0.1918,), (0.3483,),
    ),
    "cifar100": DatasetSpec(
        (3, 32, 32), find_cifar100, load_cifar100, "CIFAR100",
        "set data.root=DIR holding cifar-100-python/ (the python version)",
        tuple(f"class {i}" for i in range(100)), (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
    "svhn": DatasetSpec(
        (3, 32, 32), find_svhn, load_svhn, "SVHN",
        "set data.root=DIR holding train_32x32.mat and test_32x32.mat",
        DIGITS, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
    ),
}
# data=torchvision takes torchvision's class names: data.name=MNIST
TORCHVISION_NAMES = {"FashionMNIST": "fashion_mnist", "CIFAR10": "cifar10", "MNIST": "mnist",
                     "KMNIST": "kmnist", "CIFAR100": "cifar100", "SVHN": "svhn"}


def search_folders(cfg: DictConfig) -> list[Path]:
    if cfg.root is not None:
        return [Path(cfg.root).expanduser()]
    name = TORCHVISION_NAMES.get(cfg.name, cfg.name)
    system = [DEBIAN_FASHION_MNIST] if name == "fashion_mnist" else []
    return [*system, CACHE_DIR / name]


def spec(cfg: DictConfig) -> DatasetSpec:
    if cfg.name == "image_folder":
        from trainkit import image_folder  # PIL: only for image folders

        return DatasetSpec(**image_folder.spec_fields(cfg))
    name = TORCHVISION_NAMES.get(cfg.name, cfg.name)
    if name not in DATASETS:
        names = ", ".join([*DATASETS, "image_folder"])
        raise UserError(f"data.name={cfg.name}: choose one of {names} (or torchvision's names: "
                        f"{', '.join(TORCHVISION_NAMES)})")
    return DATASETS[name]


def normalization(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """data.mean and data.std, or the dataset's own where they are null."""
    known = spec(cfg)
    mean = list(cfg.mean) if cfg.get("mean") is not None else list(known.mean)
    std = list(cfg.std) if cfg.get("std") is not None else list(known.std)
    channels = known.input_shape[0]
    if len(mean) == 1 and channels > 1 and cfg.get("mean") is None:  # the generic default
        mean, std = mean * channels, std * channels
    return mean, std


def locate(cfg: DictConfig) -> Path | None:
    """The folder the dataset's files are read from, or None if no search folder has them."""
    for folder in search_folders(cfg):
        try:
            found = spec(cfg).find(folder)
        except OSError as e:  # a name too long for the file system, a folder we may not read
            shown = str(folder) if len(str(folder)) <= 80 else f"{str(folder)[:80]}..."
            raise UserError(
                f"data.root={shown} cannot be searched ({e.strerror}): "
                "name the folder that holds the dataset files"
            ) from None
        if found is not None:
            return found
    return None


def missing_message(cfg: DictConfig) -> str:
    where = ", ".join(str(p) for p in search_folders(cfg))
    return f"{cfg.name} not found in {where}: {spec(cfg).how_to_get}"


def download(cfg: DictConfig) -> Path:
    import torchvision.datasets

    folder = search_folders(cfg)[-1]
    if not spec(cfg).torchvision_class:  # an image folder: nothing to download
        raise UserError(missing_message(cfg))
    dataset_class = getattr(torchvision.datasets, spec(cfg).torchvision_class)
    # torchvision checks each file's MD5 against the one it knows before anything reads it.
    splits = [{"split": "train"}, {"split": "test"}] if spec(cfg).torchvision_class == "SVHN" \
        else [{"train": True}, {"train": False}]
    try:
        for split in splits:
            dataset_class(root=str(folder), download=True, **split)
    except Exception as e:  # no network, a proxy, a full disk...
        reason = " ".join(str(e).split())  # torchvision's message spans lines
        raise UserError(f"{missing_message(cfg)} (download failed: {reason})") from None
    found = spec(cfg).find(folder)
    if found is None:
        raise UserError(missing_message(cfg))
    return found


# ---------------------------------------------------------------- splits and batches


def _count(size: float | None, total: int, what: str, noun: str, have: str) -> int:
    """A fraction (<= 1) or a count (> 1) of `total`; None is all of it. The error names the
    key (`what`), what it counts (`noun`) and how many there are (`have`)."""
    if size is None:
        return total
    n = int(round(size * total)) if size <= 1 else int(size)
    if not 1 <= n <= total:
        raise UserError(
            f"{what}={size:g} asks for {n:,} {noun}, and {have}: choose 1..{total:,} "
            "(or a fraction)"
        )
    return n


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, y, test x, y
_checked: dict[tuple, Arrays] = {}  # read by `check`, for the run's `load` to take


def read(cfg: DictConfig, keep: bool = False) -> tuple[Path, Arrays]:
    """The dataset's folder and its arrays, checked (check_arrays) before anything uses them.
    `keep`: hold them for the next read of the same folder (the pre-flight check reads the
    files, the run that follows takes them instead of reading them again)."""
    found = locate(cfg)
    if found is None:
        if not cfg.download:
            raise UserError(missing_message(cfg))
        found = download(cfg)
    # Files changed since, or other image_folder settings: read them again.
    settings = tuple(cfg.get(k) for k in ("name", "size", "channels", "test_fraction"))
    key = (settings, cfg.split_seed, str(found), file_stamps(found))
    arrays = _checked.pop(key, None)
    if arrays is None:
        arrays = check_arrays(cfg, found, spec(cfg).read(found))
    _checked.clear()  # one dataset held at most
    if keep:
        _checked[key] = arrays
    return found, arrays


def file_stamps(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of each file in `folder`."""
    stats = ((p.name, p.stat()) for p in sorted(folder.iterdir()))  # a folder: when it changed
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


def check_arrays(cfg: DictConfig, found: Path, arrays: tuple[np.ndarray, ...]) -> Arrays:
    """Images of the dataset's size, one label per image, every label one of its classes."""
    shape, n_classes = spec(cfg).input_shape, len(spec(cfg).class_names)
    train_x, train_y, test_x, test_y = arrays
    for part, images, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
        where = f"{cfg.name} in {found}: the {part} set"
        if tuple(images.shape[1:]) != shape:
            size, wanted = ("x".join(map(str, dims)) for dims in (images.shape[1:], shape))
            raise UserError(
                f"{where} holds images of {size}, and {cfg.name} images are {wanted}: "
                "reinstall the dataset files"
            )
        if len(images) != len(labels) or len(labels) == 0:
            raise UserError(
                f"{where} has {len(images):,} images and {len(labels):,} labels: "
                "each image needs one label; reinstall the dataset files"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= n_classes:
            bad = low if low < 0 else high
            raise UserError(
                f"{where} has a label {bad}, and {cfg.name} has {n_classes} classes "
                f"(0..{n_classes - 1}): reinstall the dataset files"
            )
    return train_x, train_y, test_x, test_y


@dataclass(frozen=True)
class Plan:
    """Which samples go where: validation and training indices into the training files, and
    how many test samples are scored."""

    val_idx: torch.Tensor
    train_idx: torch.Tensor
    n_test: int


def plan(cfg: DictConfig, train_y: np.ndarray, test_y: np.ndarray) -> Plan:
    """Validation carved from train with data.split_seed, then data.train_size of the rest."""
    n = len(train_y)
    have = f"there are {n:,} training samples (one must stay to train on)"
    n_val = _count(cfg.val_size, n - 1, "data.val_size", "validation samples", have)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, rest = order[:n_val], order[n_val:]
    have = f"{len(rest):,} are left after validation"
    n_train = _count(cfg.train_size, len(rest), "data.train_size", "training samples", have)
    have = f"there are {len(test_y):,}"
    n_test = _count(cfg.test_size, len(test_y), "data.test_size", "test samples", have)
    return Plan(val_idx, rest[:n_train], n_test)


def select(cfg: DictConfig, arrays: Arrays) -> Arrays:
    """data.classes: only those classes' samples, relabelled 0..k-1."""
    if not cfg.classes:
        return arrays
    train_x, train_y, test_x, test_y = arrays
    classes = list(cfg.classes)
    return (*keep_classes(train_x, train_y, classes), *keep_classes(test_x, test_y, classes))


def check(cfg: DictConfig) -> int:
    """Everything `load` would refuse (files, sizes, labels, splits), before a run starts;
    the arrays read are kept for that run. Returns the number of training samples."""
    _, arrays = read(cfg, keep=True)
    _, train_y, _, test_y = select(cfg, arrays)
    return len(plan(cfg, train_y, test_y).train_idx)


def load(cfg: DictConfig, device: torch.device, channels_last: bool = False) -> Data:
    """Read the dataset, carve validation from train with a fixed seed, move it to `device`.
    `channels_last`: hold color images as [N, C, H, W] views of NHWC storage, the layout a
    channels_last model takes in: converting each batch instead costs a uint8 NCHW -> NHWC copy
    per batch, slow on the CPU and a visible share of a CNN step."""
    found, arrays = read(cfg)
    train_x, train_y, test_x, test_y = select(cfg, arrays)
    chosen = plan(cfg, train_y, test_y)
    train_images, test_images = (image_tensor(x, channels_last) for x in (train_x, test_x))

    def split(images: torch.Tensor, y: np.ndarray, idx: torch.Tensor | slice) -> Split:
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))[idx]
        chosen = images[idx] if isinstance(idx, slice) else take(images, idx)
        return Split(chosen.to(device), labels.to(device))

    classes = list(cfg.classes or range(len(spec(cfg).class_names)))
    mean, std = normalization(cfg)
    return Data(
        train=split(train_images, train_y, chosen.train_idx),
        val=split(train_images, train_y, chosen.val_idx),
        test=split(test_images, test_y, slice(0, chosen.n_test)),
        num_classes=len(classes),
        source=found,
        class_names=[spec(cfg).class_names[c] for c in classes],
        mean=mean,
        std=std,
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

    index_select, not images[idx]: advanced indexing is many times slower on the CPU, enough to
    show in an MLP step. Channels-last images are gathered as whole rows of their NHWC view:
    index_select on the [N, C, H, W] view returns NCHW, copied element by element (slow)."""
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
        # then two in-place passes: one addcmul with broadcast factors ran slower.
        x = images.to(torch.float32, memory_format=self.memory_format,
                      copy=images.is_floating_point())
        scale, shift = self.factors(x.shape[1:])
        return x.mul_(scale).add_(shift)

    def factors(self, image_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """scale and shift as whole [1, C, H, W] images in the batch's layout, made once per
        shape. A [1, C, 1, 1] factor broadcast over a channels-last batch runs an inner loop of
        C elements, far slower on the CPU than whole-image factors."""
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
    split: Split, batch_size: int, generator: torch.Generator, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(sample indices, uint8 images, labels) per optimizer step, in a fresh random order drawn
    from `generator`; the last batch may be short. Under torchrun each rank gets its share of
    every batch (distributed.shard), so `batch_size` is the global batch. `start`: the first
    batch to give (an epoch resumed part-way); the order is the same whatever it is."""
    order = torch.randperm(len(split), generator=generator).to(split.labels.device)
    for step in range(start, distributed.global_batches(len(split), batch_size)):
        idx = distributed.shard(order[step * batch_size : (step + 1) * batch_size])
        yield idx, take(split.images, idx), split.labels.index_select(0, idx)
