"""`data=image_folder`: your own images, one folder per class (torchvision's ImageFolder layout):

    root/<class>/*.png|jpg|...                    test carved with data.test_fraction
    root/train/<class>/...  root/test/<class>/... test as given

Every image is decoded once, converted to data.channels (1: grey, 3: RGB) and resized to
data.size x data.size, then held as uint8 like the built-in datasets: the same batched pipeline
on the device, validation carved from train as for the others. Class names are the folder
names, sorted (ImageFolder's order).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from trainkit.errors import UserError, first_line

HOW_TO_GET = "set data.root=DIR holding one folder of images per class (or train/ and test/)"


def find(folder: Path) -> Path | None:
    """`folder` if it holds class folders (directly, or under train/)."""
    return folder if class_names(folder) else None


def split_folders(root: Path) -> tuple[Path, Path | None]:
    """(train folder, test folder or None when the test set is carved from train)."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / "train", root / "test"
    return root, None


def class_names(root: Path) -> tuple[str, ...]:
    if not root.is_dir():
        return ()
    train, _ = split_folders(root)
    return tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))


def spec_fields(cfg: DictConfig) -> dict:
    """data.DatasetSpec's fields for these settings: shape and classes come from them and the
    folder."""
    if cfg.channels not in (1, 3):
        raise UserError(f"data.channels={cfg.channels}: choose 1 (grey) or 3 (RGB)")
    if cfg.size < 1:
        raise UserError(f"data.size={cfg.size}: images are resized to size x size, e.g. 32")
    root = Path(cfg.root).expanduser() if cfg.root else None
    names = class_names(root) if root is not None else ()
    read = functools.partial(
        load,
        size=cfg.size,
        channels=cfg.channels,
        test_fraction=cfg.test_fraction,
        seed=cfg.split_seed,
    )
    return {
        "input_shape": (cfg.channels, cfg.size, cfg.size),
        "find": find,
        "read": read,
        "torchvision_class": "",
        "how_to_get": HOW_TO_GET,
        "class_names": names or ("class 0",),
        "mean": (0.5,) * cfg.channels,
        "std": (0.25,) * cfg.channels,
    }


def load(
    root: Path, size: int, channels: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Train images, labels, test images, labels as uint8 [N, C, size, size] and int64 [N]."""
    from torchvision.datasets import ImageFolder

    train_folder, test_folder = split_folders(root)
    try:
        train = ImageFolder(str(train_folder), loader=str)  # paths only; decoded below
        test = ImageFolder(str(test_folder), loader=str) if test_folder else None
    except (FileNotFoundError, OSError) as e:
        raise UserError(
            f"{root} holds no images in class folders ({first_line(e)}): {HOW_TO_GET}"
        ) from None
    if test is not None and test.classes != train.classes:
        raise UserError(
            f"{test_folder} has classes {test.classes} and {train_folder} "
            f"{train.classes}: give both the same class folders"
        )
    train_x, train_y = decode(train.samples, size, channels)
    if test is not None:
        test_x, test_y = decode(test.samples, size, channels)
        return train_x, train_y, test_x, test_y
    n_test = int(round(test_fraction * len(train_y)))
    if not 1 <= n_test < len(train_y):
        raise UserError(
            f"data.test_fraction={test_fraction} gives {n_test} test images of "
            f"{len(train_y)}: choose a fraction that leaves both sets some"
        )
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed)).numpy()
    test_idx, train_idx = order[:n_test], order[n_test:]
    return train_x[train_idx], train_y[train_idx], train_x[test_idx], train_y[test_idx]


def decode(samples: list[tuple[str, int]], size: int, channels: int) -> tuple[np.ndarray, ...]:
    """Each file decoded, converted and resized once (PIL, bilinear)."""
    from PIL import Image

    images = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    for i, (path, _) in enumerate(samples):
        try:
            with Image.open(path) as image:
                pixels = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        except Exception as e:  # PIL's UnidentifiedImageError, a truncated file, ...
            raise UserError(
                f"{path} cannot be read as an image ({first_line(e)[:80]}): remove or replace it"
            ) from None
        array = np.asarray(pixels, dtype=np.uint8)
        images[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return images, labels
