"""The readers of files trainkit is handed, fuzzed with hypothesis: truncations, bit flips and
header bytes set at random in idx files (gzipped or not), CIFAR-10 batches, checkpoints and a
sweep job's summary. Each damaged file gives a UserError (one line to the user) or data that
passes every check a run relies on; never another exception, never wrong data let through.

Derandomized, so that CI on each CPU of the machine class runs the same examples."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from trainkit import checkpoint, data, sweep
from trainkit.errors import UserError

from .conftest import write_cifar10, write_idx

EXAMPLES = 250
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])  # fmt: skip


@st.composite
def damage(draw: st.DrawFn, blob: bytes, header: int) -> bytes:
    """`blob` cut short, with bits flipped, or with bytes of its first `header` set."""
    kind = draw(st.sampled_from(["truncate", "flip", "header"]))
    out = bytearray(blob)
    if kind == "truncate":
        return bytes(out[: draw(st.integers(0, len(out) - 1))])
    if kind == "flip":
        bits = st.tuples(st.integers(0, len(out) - 1), st.integers(0, 7))
        for at, bit in draw(st.lists(bits, min_size=1, max_size=8)):
            out[at] ^= 1 << bit
        return bytes(out)
    values = st.tuples(st.integers(0, header - 1), st.integers(0, 255))
    for at, value in draw(st.lists(values, min_size=1, max_size=4)):
        out[at] = value
    return bytes(out)


def data_cfg(root: Path, name: str) -> object:
    return OmegaConf.create({
        "name": name, "root": str(root), "download": False, "val_size": 5, "train_size": None,
        "test_size": None, "split_seed": 0, "classes": None,
    })  # fmt: skip


def read_checked(cfg: object) -> data.Arrays | None:
    """What a run would train on, or None when a UserError refused the files."""
    try:
        _, arrays = data.read(cfg)  # type: ignore[arg-type]
        train_x, train_y, test_x, test_y = arrays
        data.plan(cfg, train_y, test_y)  # type: ignore[arg-type]
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return None
    return arrays


def assert_usable(arrays: data.Arrays, shape: tuple[int, ...]) -> None:
    train_x, train_y, test_x, test_y = arrays
    for images, labels in ((train_x, train_y), (test_x, test_y)):
        assert images.dtype == np.uint8 and tuple(images.shape[1:]) == shape
        assert len(images) == len(labels) > 0
        assert labels.min() >= 0 and labels.max() < 10


@pytest.fixture(scope="module")
def small_fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 training and 20 test images in idx files, two gzipped and two not."""
    root = tmp_path_factory.mktemp("fuzz_fmnist")
    rng = np.random.default_rng(0)
    for stem, n in (("train", 30), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        (root / f"{stem}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes()
        )
    return root


@pytest.mark.parametrize("target", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte",
                                    "train-images-idx3-ubyte.gz inside"])  # fmt: skip
def test_damaged_idx_files_are_refused_or_usable(
    target: str, small_fmnist: Path, tmp_path: Path
) -> None:
    name, inside = target.split()[0], target.endswith("inside")
    original = (small_fmnist / name).read_bytes()
    blob = gzip.decompress(original) if inside else original

    @FUZZ
    @given(damaged=damage(blob, header=16))
    def check(damaged: bytes) -> None:
        root = tmp_path / "root"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(small_fmnist, root)
        (root / name).write_bytes(gzip.compress(damaged) if inside else damaged)
        arrays = read_checked(data_cfg(root, "fashion_mnist"))
        if arrays is not None:
            assert_usable(arrays, (1, 28, 28))

    check()


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_cifar")
    write_cifar10(root, n_train_per_batch=4, n_test=4)
    return root


def test_damaged_cifar_batches_are_refused_or_usable(small_cifar: Path, tmp_path: Path) -> None:
    blob = (small_cifar / "cifar-10-batches-py" / "data_batch_2").read_bytes()

    @FUZZ
    @given(damaged=damage(blob, header=64))
    def check(damaged: bytes) -> None:
        root = tmp_path / "root"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(small_cifar, root)
        (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(damaged)
        arrays = read_checked(data_cfg(root, "cifar10"))
        if arrays is not None:
            assert_usable(arrays, (3, 32, 32))

    check()


def test_a_cifar_batch_that_unpickles_code_is_refused(small_cifar: Path, tmp_path: Path) -> None:
    root = shutil.copytree(small_cifar, tmp_path / "root")

    class RunsCode:
        def __reduce__(self) -> tuple:
            return (print, ("ran",))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        data.read(data_cfg(root, "cifar10"))  # type: ignore[arg-type]


def small_checkpoint() -> bytes:
    model = torch.nn.Linear(4, 3)
    saved = {
        "model": model.state_dict(),
        "config": {"model": {"_target_": "trainkit.models.MLP", "hidden": [4]},
                   "optimizer": {"_target_": "torch.optim.Adam", "betas": [0.9, 0.999]}},
        "epoch": 1,
    }  # fmt: skip
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    return buffer.getvalue()


def test_damaged_checkpoints_are_refused_or_whole(tmp_path: Path) -> None:
    blob = small_checkpoint()

    @FUZZ
    @given(damaged=damage(blob, header=128))
    def check(damaged: bytes) -> None:
        path = tmp_path / "last.pt"
        path.write_bytes(damaged)
        try:
            saved = checkpoint.load(path)
        except UserError as e:
            assert str(e).startswith(f"checkpoint {path} ") and "\n" not in str(e)
            return
        assert set(saved["model"]) == {"weight", "bias"}
        assert all(isinstance(v, torch.Tensor) for v in saved["model"].values())
        targets = {saved["config"]["model"]["_target_"], saved["config"]["optimizer"]["_target_"]}
        assert targets <= {"trainkit.models.MLP", "torch.optim.Adam"}

    check()


def test_a_damaged_sweep_job_is_reported_as_failed(tmp_path: Path) -> None:
    """summary.json and metrics.csv of one job, damaged: the report is built all the same."""
    job = tmp_path / "sweep" / "lr=0.1"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.1\n")
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: 0\n")
    summary = json.dumps({"status": "completed", "final": {"val_acc": 0.8}, "test": {"acc": 0.8},
                          "epochs_run": 1, "wall_time_s": 1.0}).encode()  # fmt: skip
    metrics = b"epoch,train_loss,val_loss,val_acc\n1,0.5,0.6,0.8\n"

    @FUZZ
    @given(damaged_summary=damage(summary, header=16), damaged_metrics=damage(metrics, header=34))
    def check(damaged_summary: bytes, damaged_metrics: bytes) -> None:
        (job / "summary.json").write_bytes(damaged_summary)
        (job / "metrics.csv").write_bytes(damaged_metrics)
        report = sweep.build_report(tmp_path / "sweep", "val_acc")
        rows = sweep.job_rows(report)
        assert len(rows) == 1 and rows[0]["job"] == "lr=0.1"

    check()
