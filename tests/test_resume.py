"""A run survives being killed or interrupted: it resumes in its own folder and ends with the
numbers of a run that was never stopped; checkpoints never run code."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainkit import checkpoint
from trainkit.cli import main

from .conftest import small_overrides
from .test_cli import trainkit

SIGNAL_AT_STEP = Path(__file__).with_name("signal_at_step.py")
STEPS_PER_EPOCH, EPOCHS = 10, 3  # 1000 training samples of the slice, batch 100


def run_args(fmnist_slice: Path) -> list[str]:
    """Deterministic, with every random stream in play: dropout, augmentation, shuffling."""
    return [
        *small_overrides(fmnist_slice),
        f"epochs={EPOCHS}",
        "model.dropout=0.2",
        "augment=flip",
        "trainer.deterministic=true",
        "diagnostics.every_n_steps=4",
        "diagnostics.total_norm_every_n_steps=3",
        "trainer.checkpoint_every_n_epochs=2",
    ]


def run_with_signal(
    sig: str, step: int | str, args: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(SIGNAL_AT_STEP), sig, str(step), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def only_run_dir(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs").glob("*/*")
    return run_dir


def learning(run_dir: Path) -> list[list[str]]:
    """metrics.csv without its timing columns: what training computed, as written."""
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if not name.endswith(("_s", "samples_per_s"))]
    return [[row.split(",")[i] for i in keep] for row in lines]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(s.step, s.value) for s in events.Scalars(tag)]


@pytest.fixture(scope="module")
def uninterrupted(fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = trainkit(*run_args(fmnist_slice), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return only_run_dir(cwd)


def assert_same_run(resumed: Path, reference: Path) -> None:
    assert learning(resumed) == learning(reference)
    assert len(learning(resumed)) == 1 + EPOCHS
    ours, theirs = weights(resumed), weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    test = [json.loads((d / "summary.json").read_text())["test"] for d in (resumed, reference)]
    assert test[0] == test[1]
    assert checkpoint.load(resumed / "checkpoints" / "epoch_2.pt")["epoch"] == 2
    # TensorBoard: each curve once per step, no gaps, the same values.
    for split in ("train", "validation"):  # and the sibling runs' files too
        ours, theirs = (scalars(d / split, "curves/accuracy") for d in (resumed, reference))
        assert ours == theirs and len(ours) == EPOCHS
    steps = [step for step, _ in scalars(resumed, "diagnostics/grad_norm/total")]
    # step 1, then every 2 (a quarter of a 10-step epoch, below every_n_steps=4)
    assert steps == [1, *range(2, STEPS_PER_EPOCH * EPOCHS + 1, 2)]


@pytest.mark.parametrize("step", [5, 15])  # mid-epoch 1 (only last.pt of epoch 0), mid-epoch 2
@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_numbers(
    step: int, fmnist_slice: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    killed = run_with_signal("KILL", step, run_args(fmnist_slice), tmp_path)
    assert killed.returncode == -signal.SIGKILL
    run_dir = only_run_dir(tmp_path)
    csv_file = run_dir / "metrics.csv"  # a row per finished epoch, none yet in epoch 1
    rows = len(csv_file.read_text().splitlines()) - 1 if csv_file.exists() else 0
    assert rows == (step - 1) // STEPS_PER_EPOCH

    result = trainkit(f"resume={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run_dir} at epoch {(step - 1) // STEPS_PER_EPOCH}" in result.stdout
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir]  # the same folder, no new one
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.parametrize("sig, code", [("INT", 130), ("TERM", 143)])
@pytest.mark.slow
def test_a_signal_saves_the_step_flushes_the_logs_and_says_how_to_go_on(
    sig: str, code: int, fmnist_slice: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    result = run_with_signal(sig, 15, run_args(fmnist_slice), tmp_path)
    assert result.returncode == code, result.stderr
    run_dir = only_run_dir(tmp_path)
    saved = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (2, 15)
    assert saved["fit"]["progress"]["batches_done"] == 5  # mid-epoch: where to go on from
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["stop_reason"] == f"interrupted by SIG{sig} at epoch 2, step 15"
    assert f"saved {run_dir}/checkpoints/last.pt" in result.stdout
    assert "go on with" not in result.stdout  # said once, on stderr
    assert result.stderr.strip().endswith(f"go on with: trainkit resume={run_dir}")
    # The event file was flushed and closed: epoch 1 and the first 15 steps are readable.
    assert [step for step, _ in scalars(run_dir / "validation", "curves/loss")] == [10]
    assert [step for step, _ in scalars(run_dir, "diagnostics/grad_norm/total")][-1] == 14

    resumed = trainkit(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.parametrize("saved_layout", ["row-major", "before the option"])
@pytest.mark.slow
def test_a_run_resumed_in_another_weight_layout_matches_its_optimizer_state(
    saved_layout: str, fmnist_slice: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """A checkpoint whose weights and Adam state are laid out otherwise than the resumed run's
    (written on another device, or by a trainkit from before trainer.transposed_linear, which
    goes on row-major): the state is given its weights' layout, or torch's fused CPU Adam
    mixes up its elements. The run ends where the uninterrupted one did, up to rounding."""
    args = run_args(fmnist_slice)
    if saved_layout == "row-major":  # then resumed column-major, as a CPU run is
        args.append("trainer.transposed_linear=false")
    result = run_with_signal("TERM", 15, args, tmp_path)
    assert result.returncode == 143, result.stderr
    run_dir = only_run_dir(tmp_path)
    path = run_dir / "checkpoints" / "last.pt"
    saved = checkpoint.load(path)
    fc1 = saved["model"]["net.fc1.weight"]  # 784 -> 64: wide
    assert fc1.is_contiguous() == (saved_layout == "row-major")
    if saved_layout == "row-major":
        saved["config"]["trainer"]["transposed_linear"] = True
    else:
        del saved["config"]["trainer"]["transposed_linear"]
    torch.save(saved, path)

    resumed = trainkit(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = checkpoint.load(path)
    weight_strides = final["model"]["net.fc1.weight"].stride()
    assert weight_strides == ((1, 64) if saved_layout == "row-major" else (784, 1))
    fc1_state = final["optimizer"]["state"][0]  # the state of the first parameter, fc1's weight
    assert fc1_state["exp_avg"].stride() == fc1_state["exp_avg_sq"].stride() == weight_strides
    reference = weights(uninterrupted)
    for name, value in weights(run_dir).items():
        torch.testing.assert_close(value, reference[name], atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once(fmnist_slice: Path, tmp_path: Path) -> None:
    result = run_with_signal("INT2", 15, run_args(fmnist_slice), tmp_path)
    assert result.returncode == 130
    assert result.stderr.strip().endswith(
        "trainkit: stopped at once; checkpoints already written are intact "
        "(trainkit resume=<run dir> goes on from the last one)"
    )
    assert "Traceback" not in result.stderr
    saved = checkpoint.load(only_run_dir(tmp_path) / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["fit"]["progress"]) == (1, None)  # epoch 1's, untouched


@pytest.mark.slow
def test_a_signal_stops_a_sweep_reports_its_jobs_and_the_stopped_job_resumes(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    args = ["-m", "seed=0,1,2", *small_overrides(fmnist_slice), "epochs=1"]
    result = run_with_signal("TERM", "5*2", args, tmp_path)  # step 5 of the second job
    assert result.returncode == 143, result.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name.rpartition(",")[2] for p in jobs] == ["seed=0", "seed=1"]  # seed=2 never ran
    with (sweep_dir / "summary.csv").open() as f:
        status = {row["seed"]: row["status"] for row in csv.DictReader(f)}
    assert status == {"0": "completed", "1": "interrupted"}
    stopped = jobs[1]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "trainkit: interrupted by SIGTERM at epoch 1, step 5; go on with: "
        f"trainkit resume={stopped}; the sweep stopped after 2 job(s)"
    )
    assert "stopped at once" not in result.stderr and "Traceback" not in result.stderr
    assert "interrupted by SIGTERM" in (stopped / "trainkit.log").read_text()

    resumed = trainkit(f"resume={stopped}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((stopped / "summary.json").read_text())["status"] == "completed"
    assert "resumed from" in (stopped / "trainkit.log").read_text()


class Payload:
    """Unpickling this runs code: it creates the file named `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_a_checkpoint_that_runs_code_is_refused_without_running_it(
    fmt: str, fmnist_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Through main(), in-process: if the refusal failed, the payload would run right here."""
    marker = tmp_path / "payload-ran"
    run_dir = tmp_path / "run"
    path = run_dir / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    ckpt = {"model": {}, "fit": {}, "config": {}, "payload": Payload(marker)}
    if fmt == "torch.save":
        torch.save(ckpt, path)
    else:
        path.write_bytes(pickle.dumps(ckpt, protocol=2))  # torch.load's own protocol
    pickle.loads(pickle.dumps(Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()  # a working exploit: plain unpickling runs it
    monkeypatch.chdir(tmp_path)
    for args in (
        [f"resume={run_dir}"],
        ["evaluate", f"ckpt={path}", f"data.root={fmnist_slice}"],
        [*small_overrides(fmnist_slice), f"model.from_checkpoint={path}"],
    ):
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", ["trainkit", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2, err
        assert f"checkpoint {path} is refused: loading it would run code" in err
        assert "Traceback" not in err and "weights_only" not in err
        assert not marker.exists()  # refused before anything ran


def test_resume_accepts_the_original_command_when_every_value_is_the_saved_one(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """`trainkit <the run's own overrides> resume=<dir>`: the repeats are compared, not refused;
    a value that differs is. Planted bug caught: every override but data.root refused."""
    from trainkit import resume
    from trainkit.config import compose_config, expand_aliases
    from trainkit.errors import UserError
    from trainkit.experiment import run

    # as the command line reaches resume.load: the short names expanded
    original = expand_aliases([*small_overrides(fmnist_slice), "lr=3e-3", "scheduler=onecycle",
                               "trainer.checkpoint_every_n_epochs=1"])  # fmt: skip
    run(compose_config(original), tmp_path / "run")
    target = str(tmp_path / "run" / "checkpoints" / "epoch_1.pt")  # 1 of 2 epochs: resumable
    cfg, run_dir, saved = resume.load(target, original)
    assert run_dir == tmp_path / "run" and saved["epoch"] == 1
    assert cfg.optimizer.lr == 3e-3 and cfg.data.root == str(fmnist_slice)
    with pytest.raises(UserError, match=r"^lr=0\.1: a resumed run keeps its config, and it was "
                                        r"saved with lr=0\.003"):  # fmt: skip
        resume.load(target, [*(o for o in original if "lr=" not in o), "optimizer.lr=0.1"])
    GlobalHydra.instance().clear()


def test_a_run_saved_before_a_key_existed_resumes_with_its_group_repeated() -> None:
    """A run saved before augment.erase (and tta_shift) existed, resumed with its own
    `augment=standard`: today's composition adds the new keys at their defaults, and so does
    reading the checkpoint's config (checkpoint.config_of, as resume.load does): no change; a
    value other than the default is one."""
    from omegaconf import OmegaConf

    from trainkit.checkpoint import config_of
    from trainkit.config import compose_config
    from trainkit.errors import UserError
    from trainkit.resume import refuse_changes

    composed = compose_config(["augment=standard"])
    old = OmegaConf.to_container(composed)
    for key in ("erase", "erase_area", "tta_shift"):
        del old["augment"][key]
    saved = config_of({"config": old}, Path("last.pt"))
    refuse_changes(["augment=standard"], composed, saved)
    erasing = compose_config(["augment=standard", "augment.erase=0.5"])
    with pytest.raises(UserError, match=r"^augment=standard: a resumed run keeps its config, "
                                        r"and it was saved with another augment"):  # fmt: skip
        refuse_changes(["augment=standard"], erasing, saved)
