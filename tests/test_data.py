"""Loading, splitting, batching and normalizing, on real Fashion-MNIST and generated CIFAR-10."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from trainkit import data
from trainkit.errors import UserError

from .conftest import SLICE_TEST, SLICE_TRAIN, write_cifar10, write_idx


def data_cfg(root: Path, name: str = "fashion_mnist", **kw: object):
    base = {
        "name": name,
        "root": str(root),
        "download": False,
        "val_size": 200,
        "train_size": None,
        "test_size": None,
        "split_seed": 0,
        "classes": None,
        "mean": [0.5] * (3 if name == "cifar10" else 1),
        "std": [0.25] * (3 if name == "cifar10" else 1),
    }
    return OmegaConf.create(base | kw)


def test_fashion_mnist_loads_as_uint8_tensors_with_a_seeded_validation_split(
    fmnist_slice: Path,
) -> None:
    d = data.load(data_cfg(fmnist_slice), torch.device("cpu"))
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape[1:] == (1, 28, 28)
    assert (len(d.train), len(d.val), len(d.test)) == (SLICE_TRAIN - 200, 200, SLICE_TEST)
    assert d.num_classes == 10 and d.input_shape == (1, 28, 28)
    # Validation and training never share a sample, and together they are the training set.
    rows = {bytes(x.numpy().tobytes()) for x in torch.cat([d.train.images, d.val.images])}
    assert len(rows) == SLICE_TRAIN
    # The split depends on split_seed alone.
    again = data.load(data_cfg(fmnist_slice), torch.device("cpu"))
    assert torch.equal(again.val.labels, d.val.labels)
    other = data.load(data_cfg(fmnist_slice, split_seed=1), torch.device("cpu"))
    assert not torch.equal(other.val.images, d.val.images)


@pytest.mark.parametrize(
    ("train_size", "expected"), [(0.5, 500), (300, 300), (1, 1000), (None, 1000)]
)
def test_train_size_takes_a_count_or_a_fraction(
    fmnist_slice: Path, train_size: float | None, expected: int
) -> None:
    d = data.load(data_cfg(fmnist_slice, train_size=train_size), torch.device("cpu"))
    assert len(d.train) == expected
    assert len(d.val) == 200  # validation does not shrink with the training set


def test_too_large_a_train_size_is_a_user_error(fmnist_slice: Path) -> None:
    message = (
        r"data.train_size=5000 asks for 5,000 training samples, and 1,000 are left after "
        r"validation: choose 1..1,000 \(or a fraction\)"
    )
    with pytest.raises(UserError, match=message):
        data.load(data_cfg(fmnist_slice, train_size=5000), torch.device("cpu"))


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        data.load(data_cfg(tmp_path), torch.device("cpu"))
    assert str(e.value) == (
        f"fashion_mnist not found in {tmp_path}: run `apt-get install "
        "dataset-fashion-mnist`, or set data.root=DIR holding the four idx "
        ".gz files"
    )


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download and Path(root) == tmp_path
            raise RuntimeError(
                "Error downloading x.gz:\nTried http://x.invalid/, got:\n<no network>"
            )

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(UserError) as e:
        data.load(data_cfg(tmp_path, download=True), torch.device("cpu"))
    assert str(e.value).endswith(
        "(download failed: Error downloading x.gz: Tried http://x.invalid/, got: <no network>)"
    )
    assert "\n" not in str(e.value)


def test_truncated_idx_file_is_reported_with_its_path(fmnist_slice: Path, tmp_path: Path) -> None:
    for f in fmnist_slice.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    victim = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(victim.read_bytes())
    victim.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz is truncated or corrupt"):
        data.load(data_cfg(tmp_path), torch.device("cpu"))
    victim.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=r"cannot be read .*reinstall the dataset files"):
        data.load(data_cfg(tmp_path), torch.device("cpu"))


def test_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(data.read_idx(tmp_path / "x.gz"), array)


def test_cifar10_reads_the_standard_python_batches(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, n_train_per_batch=20, n_test=15)
    d = data.load(data_cfg(tmp_path, name="cifar10", val_size=10), torch.device("cpu"))
    assert d.input_shape == (3, 32, 32)
    assert (len(d.train), len(d.val), len(d.test)) == (90, 10, 15)
    # Test images come back in file order, rows reshaped channel-first.
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    expected = torch.from_numpy(raw[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(d.test.images, expected)
    assert d.test.labels.tolist() == raw[b"labels"]


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, n_train_per_batch=5, n_test=5)

    class Exploit:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(
        UserError,
        match=r"data_batch_3 is not a valid CIFAR batch "
        r"\(refusing to load builtins.print\)",
    ):
        data.load(data_cfg(tmp_path, name="cifar10", val_size=5), torch.device("cpu"))


def test_normalizer_maps_uint8_to_standardized_floats() -> None:
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    out = data.Normalizer([0.5], [0.25], torch.device("cpu"))(images)
    expected = (torch.tensor([0, 128, 255]) / 255.0 - 0.5) / 0.25
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.flatten(), expected)


def test_batches_cover_every_sample_once_and_shuffle_by_generator() -> None:
    split = data.Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    plain = [y.tolist() for _, y in data.batches(split, 4)]
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shuffled = list(data.shuffled_batches(split, 4, torch.Generator().manual_seed(0)))
    assert [len(y) for _, _, y in shuffled] == [4, 4, 2]
    flat = torch.cat([y for _, _, y in shuffled])
    assert sorted(flat.tolist()) == list(range(10)) and flat.tolist() != list(range(10))
    assert all(torch.equal(idx, y) for idx, _, y in shuffled)  # indices name the samples
    again = data.shuffled_batches(split, 4, torch.Generator().manual_seed(0))
    assert torch.equal(flat, torch.cat([y for _, _, y in again]))
    # An epoch resumed at its second batch gets the rest of the same order, nothing gathered
    # for the batch it skips
    later = data.shuffled_batches(split, 4, torch.Generator().manual_seed(0), start=1)
    assert torch.equal(flat[4:], torch.cat([y for _, _, y in later]))


@pytest.mark.parametrize("n, expected_steps", [(11, 3), (10, 2), (8, 2)])
def test_ranks_split_every_global_batch_between_them(
    n: int, expected_steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 ranks, global batch 4: each step's batch is shared out; a last batch too short to give
    every rank a sample is dropped on all of them (n=11: 3 left over, kept; n=10: 2, dropped)."""
    split = data.Split(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n))
    monkeypatch.setenv("WORLD_SIZE", "3")
    per_rank = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        batches = data.shuffled_batches(split, 4, torch.Generator().manual_seed(0))
        per_rank.append([y.tolist() for _, _, y in batches])
    assert [len(steps) for steps in per_rank] == [expected_steps] * 3
    monkeypatch.setenv("WORLD_SIZE", "1")
    whole = [
        y.tolist() for _, _, y in data.shuffled_batches(split, 4, torch.Generator().manual_seed(0))
    ]
    for step, batch in enumerate(whole[:expected_steps]):  # the same samples one process uses
        assert sum((steps[step] for steps in per_rank), []) == batch


def test_classes_keeps_those_classes_relabelled_in_order(fmnist_slice: Path) -> None:
    full = data.load(data_cfg(fmnist_slice, val_size=0.1), torch.device("cpu"))
    some = data.load(data_cfg(fmnist_slice, val_size=0.1, classes=[7, 2]), torch.device("cpu"))
    assert some.num_classes == 2
    n_test = int(((full.test.labels == 7) | (full.test.labels == 2)).sum())
    assert len(some.test) == n_test and set(some.test.labels.tolist()) == {0, 1}
    # Label 0 is class 7: the same images as class 7 of the full test set.
    assert torch.equal(
        some.test.images[some.test.labels == 0], full.test.images[full.test.labels == 7]
    )
    with pytest.raises(UserError, match=r"data.classes=\[3, 3\]: list distinct labels"):
        data.load(data_cfg(fmnist_slice, classes=[3, 3]), torch.device("cpu"))


def test_evaluation_shares_cover_a_split_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainkit import distributed

    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(list(range(10))[distributed.part(10)])
    assert shares == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalizer_standardizes_each_channel_and_leaves_its_input_alone(
    channels_last: bool,
) -> None:
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    images = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    normalize = data.Normalizer(mean, std, torch.device("cpu"), channels_last)
    expected = (images / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    out = normalize(images)
    torch.testing.assert_close(out, expected)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    floats = images.float()  # an augmented batch arrives as floats: it must not change
    torch.testing.assert_close(normalize(floats), expected)
    assert torch.equal(floats, images.float())


def test_take_gathers_samples_in_the_layout_they_are_held_in() -> None:
    images = torch.randint(0, 256, (20, 3, 4, 5), dtype=torch.uint8)
    idx = torch.tensor([7, 0, 19, 7])
    assert torch.equal(data.take(images, idx), images[idx])
    nhwc = images.contiguous(memory_format=torch.channels_last)
    taken = data.take(nhwc, idx)
    assert torch.equal(taken, images[idx])
    assert taken.is_contiguous(memory_format=torch.channels_last) and not taken.is_contiguous()


def test_cifar10_held_channels_last_has_the_same_images(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    cfg = data_cfg(tmp_path, name="cifar10", val_size=20)
    plain = data.load(cfg, torch.device("cpu"))
    nhwc = data.load(cfg, torch.device("cpu"), channels_last=True)
    for split in ("train", "val", "test"):
        a, b = getattr(plain, split), getattr(nhwc, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert b.images.is_contiguous(memory_format=torch.channels_last)
        assert not b.images.is_contiguous()  # NHWC storage, not a copy in NCHW
    batch = next(data.shuffled_batches(nhwc.train, 8, torch.Generator().manual_seed(0)))
    assert batch[1].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch[1], nhwc.train.images[batch[0]])
