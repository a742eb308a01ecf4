"""Data-parallel training under torchrun: 2 CPU processes (gloo) on the Fashion-MNIST slice."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainkit.experiment import run

from .conftest import compose_config, small_overrides
from .test_resume import learning, scalars

TESTS = Path(__file__).parent
# torchrun itself; --standalone: a rendezvous on a free local port
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(cwd: Path, script: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    return subprocess.run([*TORCHRUN, *script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def ddp_args(fmnist_slice: Path) -> list[str]:
    return [
        *small_overrides(fmnist_slice),
        "hydra.run.dir=outputs/run",
        "trainer.log_every_n_steps=3",
    ]


@pytest.fixture(scope="module")
def ddp_run(fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two epochs of 10 steps (1000 samples, global batch 100) on two ranks, recorded."""
    work = tmp_path_factory.mktemp("ddp")
    out = work / "record"
    out.mkdir()
    done = torchrun(work, [str(TESTS / "ddp_worker.py"), str(out)], ddp_args(fmnist_slice))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"work": work, "run_dir": work / "outputs/run", "ranks": ranks, "stdout": done.stdout}


@pytest.mark.slow
def test_ranks_train_on_disjoint_shards_that_cover_each_epoch_once(ddp_run: dict) -> None:
    steps = [rank["steps"] for rank in ddp_run["ranks"]]
    assert len(steps[0]) == len(steps[1]) == 20  # 2 epochs x 10 global batches
    shards = {}
    for epoch in (1, 2):
        shard = [[i for s in rank if s["epoch"] == epoch for i in s["indices"]] for rank in steps]
        assert len(shard[0]) == len(shard[1]) == 500
        assert not set(shard[0]) & set(shard[1])
        assert sorted(shard[0] + shard[1]) == list(range(1000))  # the epoch, each sample once
        shards[epoch] = shard
    assert set(shards[1][0]) != set(shards[2][0])  # a different share every epoch
    for s0, s1 in zip(*steps, strict=True):  # each step: half of one global batch each
        assert len(s0["indices"]) == len(s1["indices"]) == 50


def test_weights_are_identical_on_both_ranks_after_every_step(ddp_run: dict) -> None:
    steps = [rank["steps"] for rank in ddp_run["ranks"]]
    fingerprints = [[s["weights"] for s in rank] for rank in steps]
    assert fingerprints[0] == fingerprints[1]
    assert len(set(fingerprints[0])) == 20  # and they did change at every step


def test_logged_loss_is_the_mean_over_both_ranks(ddp_run: dict) -> None:
    steps = [rank["steps"] for rank in ddp_run["ranks"]]
    rows = metrics_rows(ddp_run["run_dir"])
    assert len(rows) == 2
    for epoch, row in zip((1, 2), rows, strict=True):
        per_rank = [[s for s in rank if s["epoch"] == epoch] for rank in steps]
        local_means = [sum(s["loss"] for s in rank) / len(rank) for rank in per_rank]
        assert local_means[0] != pytest.approx(local_means[1], abs=1e-4)  # really different data
        assert float(row["train_loss"]) == pytest.approx(sum(local_means) / 2, rel=1e-5)
    # every rank decided on the same all-reduced metrics
    epochs = [rank["epochs"] for rank in ddp_run["ranks"]]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [e[key] for e in epochs[0]] == [e[key] for e in epochs[1]]


def test_only_rank_zero_writes_files_and_prints(ddp_run: dict) -> None:
    work, run_dir = ddp_run["work"], ddp_run["run_dir"]
    events = sorted(p.parent.relative_to(work).as_posix() for p in work.rglob("events.out.*"))
    # rank 0's run and its train/, validation/ and test/ curves (callbacks.TensorBoardLogger)
    assert events == ["outputs/run", "outputs/run/test", "outputs/run/train",
                      "outputs/run/validation"]  # fmt: skip
    checkpoints = sorted(p.relative_to(work).as_posix() for p in work.rglob("*.pt"))
    assert checkpoints == ["outputs/run/checkpoints/best.pt", "outputs/run/checkpoints/last.pt"]
    assert sorted(p.name for p in (work / "outputs").iterdir()) == ["run"]
    assert ddp_run["stdout"].count("epoch 2/2") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["distributed"] == {"world_size": 2, "backend": "gloo"}


@pytest.mark.slow
def test_a_stopped_ddp_run_resumes_to_the_same_numbers(
    ddp_run: dict, fmnist_slice: Path, tmp_path: Path
) -> None:
    args = ddp_args(fmnist_slice)
    # SIGTERM to rank 0 after step 13 (epoch 2): the ranks agree to stop at the next merge
    stopped = torchrun(tmp_path, [str(TESTS / "signal_at_step.py"), "TERM", "13"], args)
    assert stopped.returncode != 0
    assert "go on with: torchrun --nproc_per_node=2 -m trainkit resume=" in stopped.stderr
    assert stopped.stderr.count("SIGTERM: stopping after this step") == 1  # rank 0 speaks
    run_dir = tmp_path / "outputs/run"
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["status"] == "interrupted" and "epoch 2, step 14" in saved["stop_reason"]

    resumed = torchrun(tmp_path, ["-m", "trainkit", "resume=outputs/run"], [])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert learning(run_dir) == learning(ddp_run["run_dir"])
    # rank 0's event files only (one before the stop, one after), each epoch logged once
    folders = {run_dir, *(run_dir / split for split in ("train", "validation", "test"))}
    assert {p.parent for p in tmp_path.rglob("events.out.tfevents.*")} == folders
    steps = [step for step, _ in scalars(run_dir / "train", "curves/loss")]
    assert steps == [int(row["step"]) for row in csv.DictReader((run_dir / "metrics.csv").open())]


@pytest.mark.slow
def test_two_processes_reach_the_accuracy_of_one_with_the_same_global_batch(
    tmp_path: Path,
) -> None:
    """One epoch of the whole Fashion-MNIST training set, MLP, global batch 128."""
    args = ["model=mlp", "epochs=1", "batch_size=128", "diagnostics.pictures=false"]
    one = run(compose_config(args), tmp_path / "one")
    two = torchrun(tmp_path, ["-m", "trainkit"], [*args, "hydra.run.dir=two"])
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "two/summary.json").read_text())
    assert summary["dataset"]["train"] == one.dataset["train"] == 55_000
    assert summary["final"]["val_acc"] == pytest.approx(one.final["val_acc"], abs=0.005)
    assert one.final["val_acc"] > 0.8


@pytest.mark.parametrize("rank", ["0", "1"])
@pytest.mark.parametrize("command", ["study", "lr-find", "compare"])
def test_subcommands_are_refused_under_torchrun_in_one_line(
    command: str, rank: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainkit.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(sys, "argv", ["trainkit", command, "symmetry"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    expected = f"trainkit {command}: error: `trainkit {command}` does not run under torchrun"
    assert err.startswith(expected) if rank == "0" else err == ""  # rank 0 alone says it


def test_fewer_samples_than_processes_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from trainkit.errors import UserError
    from trainkit.loop import steps_per_epoch

    monkeypatch.setenv("WORLD_SIZE", "3")
    trainer = OmegaConf.create({"batch_size": 128, "max_steps_per_epoch": None})
    assert steps_per_epoch(3, trainer) == 1
    with pytest.raises(UserError, match="2 training samples cannot be shared between 3 proc"):
        steps_per_epoch(2, trainer)
