"""trainer.precision=auto: bf16 where a probe (mocked here, both ways; nothing is timed) says it
is fast, fp32 elsewhere, said in the header and summary.json; the probe's cache; and what bf16
autocast leaves in fp32 (gradients, their norms, the loss the NaN check reads, batch norm's
statistics), run here on a CPU without bf16 by mocking its flags."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from trainkit import checkpoint, precision, runtime
from trainkit.experiment import build, run

from .conftest import compose_config, small_overrides
from .tensorboard_events import scalars

FAST = {"matmul": 2.5, "conv": 1.9}  # an AMX CPU's kind of figures
SLOW = {"matmul": 0.01, "conv": 0.05}  # an emulated bf16's
CPU = torch.device("cpu")


class FakeProbe:
    def __init__(self, speedups: dict[str, float]) -> None:
        self.speedups, self.calls = speedups, 0

    def __call__(self) -> dict[str, float]:
        self.calls += 1
        return dict(self.speedups)


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder, and a CPU with bf16 units unless a test says otherwise."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    return tmp_path / "cache"


def fake_probe(monkeypatch: pytest.MonkeyPatch, speedups: dict[str, float]) -> FakeProbe:
    probe = FakeProbe(speedups)
    monkeypatch.setattr(precision, "probe", probe)
    return probe


def test_auto_picks_bf16_where_the_probe_says_it_is_faster(monkeypatch) -> None:  # noqa: ANN001
    fake_probe(monkeypatch, FAST)
    choice = precision.choose("auto", CPU)
    assert choice.dtype is torch.bfloat16
    assert choice.describe() == "bf16 (auto: bf16 matmul 2.50x, conv 1.90x fp32 on this CPU)"


@pytest.mark.parametrize(
    "speedups", [SLOW, {"matmul": 2.5, "conv": 0.9}, {"matmul": 1.1, "conv": 1.9}]
)
def test_auto_keeps_fp32_unless_bf16_is_faster_at_both(monkeypatch, speedups) -> None:  # noqa: ANN001
    """Catches a decision on the matmul alone, on either probe, or with the comparison flipped."""
    fake_probe(monkeypatch, speedups)
    choice = precision.choose("auto", CPU)
    assert choice.dtype is None
    assert choice.reason.startswith(f"auto: bf16 matmul {speedups['matmul']:.2f}x")


def test_a_cpu_without_bf16_units_is_fp32_without_probing(monkeypatch) -> None:  # noqa: ANN001
    """Zen 3: no avx512_bf16/amx_bf16 flag, so nothing is timed (its bf16 matmul is emulated)."""
    probe = fake_probe(monkeypatch, FAST)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma"})
    choice = precision.choose("auto", CPU)
    assert (choice.dtype, choice.reason) == (None, "auto: no avx512_bf16 or amx_bf16 on this CPU")
    assert probe.calls == 0


def test_the_probe_runs_once_per_cpu_and_torch(monkeypatch, cache_home: Path) -> None:  # noqa: ANN001
    probe = fake_probe(monkeypatch, FAST)
    assert precision.choose("auto", CPU).dtype is torch.bfloat16
    assert precision.choose("auto", CPU).dtype is torch.bfloat16
    assert probe.calls == 1  # the second came from the cache file
    saved = json.loads((cache_home / "trainkit" / "precision-probe.json").read_text())
    info = runtime.cpu_info()
    key = precision.cache_key()
    assert f"family {info['cpu family']} model {info['model']}" in key  # Zen 3 and 4: "AMD EPYC"
    assert key.endswith(f"torch {torch.__version__}")
    assert saved == {"version": 1, "entries": {key: FAST}}
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # a new torch may bring new kernels
    precision.choose("auto", CPU)
    assert probe.calls == 2


@pytest.mark.parametrize(
    "damage",
    [b"{not json", b"\xff\xfe", b"[]", b'{"version": 1, "entries": []}',
     b'{"version": 1, "entries": {"KEY": {"matmul": "__import__(\'os\')", "conv": 1}}}'],
)  # fmt: skip
def test_a_damaged_cache_is_ignored_and_rewritten(monkeypatch, cache_home, damage) -> None:  # noqa: ANN001
    probe = fake_probe(monkeypatch, SLOW)
    path = cache_home / "trainkit" / "precision-probe.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(damage.replace(b"KEY", precision.cache_key().encode()))
    assert precision.choose("auto", CPU).dtype is None
    assert probe.calls == 1
    assert json.loads(path.read_text())["entries"] == {precision.cache_key(): SLOW}


def test_auto_on_cuda_is_bf16_where_the_gpu_has_it(monkeypatch) -> None:  # noqa: ANN001
    probe = fake_probe(monkeypatch, SLOW)  # a CPU probe must not decide for a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert precision.choose("auto", cuda).describe() == "bf16 (auto: CUDA with bf16)"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.choose("auto", cuda).describe() == "fp32 (auto: this GPU has no bf16)"
    assert probe.calls == 0


def test_precision_fp32_forces_fp32(monkeypatch) -> None:  # noqa: ANN001
    probe = fake_probe(monkeypatch, FAST)
    assert precision.choose("fp32", CPU).describe() == "fp32 (trainer.precision=fp32)"
    assert probe.calls == 0


def run_overrides(fmnist_slice: Path, setting: str, model: str = "mlp") -> list[str]:
    """A 2-step run: bf16 on this CPU is emulated, ~100x slower than fp32."""
    return [*small_overrides(fmnist_slice, model), "epochs=1", "trainer.max_steps_per_epoch=2",
            f"trainer.precision={setting}"]  # fmt: skip


def test_the_header_and_summary_say_which_precision_and_why(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    fake_probe(monkeypatch, FAST)
    summary = run(compose_config(run_overrides(fmnist_slice, "auto")), tmp_path / "fast")
    out = capsys.readouterr().out
    why = "auto: bf16 matmul 2.50x, conv 1.90x fp32 on this CPU"
    assert f"thread{'s' if torch.get_num_threads() > 1 else ''}), bf16 ({why})" in out
    assert summary.precision == {"dtype": "bf16", "reason": why}
    assert json.loads((tmp_path / "fast" / "summary.json").read_text())["precision"] == {
        "dtype": "bf16", "reason": why,
    }  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [[], *([f"experiment={preset}"] for preset in ("fmnist_speedrun", "fmnist_speedrun_90s",
                                                    "fmnist_accuracy"))],
)
def test_auto_is_the_default_and_the_presets(fmnist_slice: Path, extra: list[str]) -> None:
    cfg = compose_config([f"data.root={fmnist_slice}", *extra])
    assert cfg.trainer.precision == "auto"


def test_bf16_autocast_leaves_gradients_norms_loss_and_batch_norm_in_fp32(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """bf16 forced (the CPU's flags mocked), a 2-step CNN run with diagnostics on: the logits
    are bf16, but what the diagnostics and the NaN check read is fp32 and finite."""
    cfg = compose_config(run_overrides(fmnist_slice, "bf16", "cnn"))
    _, training = build(cfg)
    x, y = torch.randn(4, 1, 28, 28).to(memory_format=torch.channels_last), torch.arange(4)
    with training.precision_context(CPU):
        logits = training.forward(x)
        loss = training.loss_fn(logits, y)
    assert logits.dtype is torch.bfloat16  # the matmuls ran in bf16
    assert loss.dtype is torch.float32  # what PendingSteps' NaN check folds
    loss.backward()
    assert {p.grad.dtype for p in training.model.parameters()} == {torch.float32}

    run(cfg, tmp_path)
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["model"]
    stats = {k: v for k, v in saved.items() if k.endswith(("running_mean", "running_var"))}
    assert stats and {v.dtype for v in stats.values()} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in stats.values())
    assert any(k.endswith("running_mean") and v.abs().sum() > 0 for k, v in stats.items())
    assert {v.dtype for k, v in saved.items() if v.is_floating_point()} == {torch.float32}
    norms = scalars(tmp_path, "diagnostics/grad_norm/total")
    assert [step for step, _ in norms] == [1, 2] and all(math.isfinite(v) for _, v in norms)


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["trainer.epochs=0"]])
def test_help_cfg_and_preflight_never_probe(
    args: list[str], fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """On a bf16 CPU with nothing cached: --help, --cfg and a pre-flight error stop before any
    run builds, so the probe's fraction of a second is never paid (a planted call of
    choose() in cli.preflight fails the --cfg and pre-flight cases)."""
    from hydra.core.global_hydra import GlobalHydra

    from trainkit.cli import main

    def no_probe() -> dict[str, float]:
        raise AssertionError("probed")

    monkeypatch.setattr(precision, "probe", no_probe)
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["trainkit", f"data.root={fmnist_slice}", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, 2, None), capsys.readouterr()
    assert not (tmp_path / "outputs").exists()
