"""The CUDA path, run where a GPU is present (`pytest -m gpu`); skipped without CUDA.
Data lives on the GPU, autocast runs in bf16/fp16, torch.compile works, and 2-process DDP uses
NCCL when two GPUs exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainkit.experiment import build, run

from .conftest import compose_config, small_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_data_model_and_steps_live_on_the_gpu(fmnist_slice: Path, tmp_path: Path) -> None:
    cfg = compose_config([*small_overrides(fmnist_slice, "cnn"), "device=auto", "epochs=1"])
    dataset, training = build(cfg)
    assert dataset.train.images.is_cuda and dataset.train.images.dtype is torch.uint8
    assert all(p.is_cuda for p in training.model.parameters())
    summary = run(cfg, tmp_path / "run")
    assert summary.device.startswith("cuda")
    assert summary.test["acc"] > 0.5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_trains_in_low_precision(
    precision: str, fmnist_slice: Path, tmp_path: Path
) -> None:
    overrides = [*small_overrides(fmnist_slice, "cnn"), f"trainer.precision={precision}"]
    cfg = compose_config(overrides)
    _, training = build(cfg)
    assert training.autocast is {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert (training.scaler is not None) == (precision == "fp16")
    x = torch.randn(4, 1, 28, 28, device="cuda")
    with training.precision_context(torch.device("cuda")):
        assert training.forward(x).dtype is training.autocast
    summary = run(cfg, tmp_path / precision)
    assert summary.test["acc"] > 0.5


def test_compiled_training_matches_eager(fmnist_slice: Path, tmp_path: Path) -> None:
    base = [*small_overrides(fmnist_slice, "cnn"), "epochs=1", "trainer.deterministic=true"]
    eager = run(compose_config(base), tmp_path / "eager")
    compiled = run(compose_config([*base, "trainer.compile=true"]), tmp_path / "compiled")
    assert compiled.final["train_loss"] == pytest.approx(eager.final["train_loss"], rel=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_ddp_uses_nccl(fmnist_slice: Path, tmp_path: Path) -> None:
    args = [*small_overrides(fmnist_slice, "cnn"), "hydra.run.dir=run"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "trainkit", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["distributed"] == {"world_size": 2, "backend": "nccl"}
