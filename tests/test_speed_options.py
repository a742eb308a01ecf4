"""The speed options change how a step runs, not what it computes: trainer.precision (with an
honest fallback where the hardware is slow at it), trainer.compile, fused optimizers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from trainkit import checkpoint, runtime
from trainkit.experiment import build, run

from .conftest import compose_config, small_overrides


def losses(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


@pytest.fixture
def fp32_run(fmnist_slice: Path, tmp_path: Path) -> Path:
    run(compose_config([*small_overrides(fmnist_slice), "epochs=1"]), tmp_path / "fp32")
    return tmp_path / "fp32"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_on_a_cpu_without_it_warns_and_trains_in_fp32(
    precision: str, fmnist_slice: Path, fp32_run: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma"})
    overrides = [*small_overrides(fmnist_slice), "epochs=1", f"trainer.precision={precision}"]
    run(compose_config(overrides), tmp_path / precision)
    out = capsys.readouterr().out
    assert f"trainer.precision={precision}: this CPU has no fast {precision} matmul" in out
    assert "training in fp32" in out
    assert losses(tmp_path / precision) == losses(fp32_run)  # the same fp32 numbers


def test_bf16_autocast_runs_the_forward_in_bf16_where_the_cpu_has_it(
    fmnist_slice: Path, fp32_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    cfg = compose_config([*small_overrides(fmnist_slice), "epochs=1", "trainer.precision=bf16"])
    _, training = build(cfg)
    assert training.autocast is torch.bfloat16 and training.scaler is None
    with training.precision_context(torch.device("cpu")):
        logits = training.forward(torch.randn(4, 1, 28, 28))
    assert logits.dtype is torch.bfloat16  # the matmuls ran in bf16
    run(cfg, tmp_path / "bf16")
    bf16, fp32 = losses(tmp_path / "bf16"), losses(fp32_run)
    assert bf16 != fp32 and bf16[0] == pytest.approx(fp32[0], rel=0.05)  # close, not equal


def test_fp16_scales_the_loss_and_its_scaler_is_checkpointed(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_fp16"})
    overrides = [*small_overrides(fmnist_slice), "epochs=1", "trainer.precision=fp16"]
    summary = run(compose_config(overrides), tmp_path)
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert saved["scaler"]["scale"] > 1  # loss scaling on (torch starts at 2**16)
    assert summary.best["val_acc"] > 0.3  # it learned (chance: 0.1)


@pytest.mark.slow
def test_compiled_training_computes_what_eager_training_does(
    fmnist_slice: Path, fp32_run: Path, tmp_path: Path
) -> None:
    overrides = [*small_overrides(fmnist_slice), "epochs=1", "trainer.compile=true"]
    run(compose_config(overrides), tmp_path / "compiled")
    assert losses(tmp_path / "compiled") == pytest.approx(losses(fp32_run), rel=1e-4)
    saved = checkpoint.load(tmp_path / "compiled" / "checkpoints" / "last.pt")
    assert not any(key.startswith("_orig_mod") for key in saved["model"])  # plain module keys


def test_adam_uses_the_fused_kernel_unless_told_otherwise(fmnist_slice: Path) -> None:
    base = small_overrides(fmnist_slice)
    _, fused = build(compose_config(base))
    _, unfused = build(compose_config([*base, "optimizer.fused=false"]))
    assert fused.optimizer.param_groups[0]["fused"] is True
    assert not unfused.optimizer.param_groups[0]["fused"]
    assert len(fused.optimizer.param_groups) == 1  # no weight decay: one group, one kernel call
