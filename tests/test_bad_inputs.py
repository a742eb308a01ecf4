"""Every kind of bad input, through `trainkit`'s real entry point (main(), in-process: a second
each instead of a process start): one line that says what to change, a non-zero exit, no
traceback, and the outputs of an earlier run left exactly as they were."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from trainkit import checkpoint
from trainkit.cli import main
from trainkit.errors import UserError
from trainkit.experiment import run

from .conftest import compose_config, small_overrides
from .test_cli import BAD_INPUTS, trainkit


@pytest.fixture(scope="module")
def workdir(fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one finished run in outputs/, a truncated copy of the slice and a file."""
    cwd = tmp_path_factory.mktemp("bad_inputs")
    result = trainkit(*small_overrides(fmnist_slice), cwd=cwd)
    assert result.returncode == 0, result.stderr
    broken = cwd / "broken_data"
    shutil.copytree(fmnist_slice, broken)
    victim = broken / "train-images-idx3-ubyte.gz"
    victim.write_bytes(gzip.compress(gzip.decompress(victim.read_bytes())[:5000]))
    (cwd / "a_file").write_text("not a folder\n")
    (run_dir,) = (cwd / "outputs").glob("2*/*")
    diverged = shutil.copytree(run_dir, cwd / "other" / "diverged")  # as a NaN run leaves it
    summary = json.loads((diverged / "summary.json").read_text())
    summary |= {"status": "failed", "stop_reason": "the loss became NaN/Inf at step 4 (lr 10)"}
    (diverged / "summary.json").write_text(json.dumps(summary))
    return cwd


def earlier_run(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs").glob("2*/*")
    return run_dir


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def more_bad_inputs(cwd: Path, fmnist_slice: Path) -> list[tuple[list[str], str]]:
    """Beyond the config keys and values: files, folders, checkpoints and the other commands."""
    run_dir = earlier_run(cwd)
    small = small_overrides(fmnist_slice)
    broken = [
        f"data.root={cwd / 'broken_data'}" if o.startswith("data.root=") else o for o in small
    ]
    return [
        (broken, "train-images-idx3-ubyte.gz is truncated or corrupt"),
        (["hydra.run.dir=a_file/run"], "cannot write the run's outputs: a_file is a file"),
        (["-m", "hydra.sweep.dir=a_file/sweep", "seed=0,1"], "cannot write the run's outputs"),
        ([*small_overrides(fmnist_slice, "cnn"), f"model.from_checkpoint={run_dir}"],
         "use the model settings the checkpoint was trained with"),
        (["-m", "hydra/sweeper=optuna"], "hydra.sweeper.direction=minimize, but each trial"),
        (["-m", "hydra/launcher=paralel"], "hydra/launcher=paralel: no such option"),
        (["-m", "hydra.callbacks.sweep_summary.rank_by=acc", "seed=0,1"],
         "rank_by=acc: choose one of val_acc, val_loss"),
        ([f"resume={cwd / 'nowhere'}"], "no such run dir or checkpoint: check the path"),
        ([f"resume={cwd}"], "no checkpoints/last.pt there"),
        ([f"resume={cwd / 'a_file'}"], "a resumed run goes on in its own run dir"),
        ([f"resume={run_dir}"], "finished all 2 epochs: nothing to resume"),
        ([f"resume={run_dir}", "model=cnn"], "model=cnn: a resumed run keeps its config"),
        (["evaluate", f"ckpt={cwd / 'none.pt'}"], "does not exist: check the path"),
        (["evaluate", f"ckpt={run_dir}", "split=train"], "split=train: choose test or val"),
        (["compare", str(cwd)], "holds no sweep jobs"),
        (["lr-find", "lr=-1"], "lr=-1.0: the learning rate must be > 0"),
        (["init-report", "schemes=bogus"], "schemes: bogus unknown"),
        (["evaluate", f"ckpt={cwd / 'a_file'}"], "is not a trainkit checkpoint or is damaged"),
        (["evaluate", "ckpt="], "evaluate needs ckpt=<run dir or checkpoint .pt>, e.g. "),
        (["--epochs", "3"], "--epochs: not an option; trainkit's settings are overrides"),
        ([f"resume={cwd / 'other' / 'diverged'}"],
         "failed (the loss became NaN/Inf at step 4 (lr 10)) and would fail again the same way"),
        (["compare", str(cwd), "foo=1"], "foo=: compare takes a sweep dir and rank_by="),
        (["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=0", "seed=0,1"],
         "hydra.launcher.n_jobs=0: choose how many jobs run at once"),
        (["-m", "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=0"],
         "hydra.sweeper.n_trials=0: choose 1 or more"),
    ]  # fmt: skip


@pytest.mark.slow
def test_each_bad_input_gets_one_line_an_exit_code_and_damages_nothing(
    workdir: Path, fmnist_slice: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(workdir)
    run_dir = earlier_run(workdir)
    before = fingerprint(run_dir)
    cases = BAD_INPUTS + more_bad_inputs(workdir, fmnist_slice)
    assert len(cases) >= 25
    for args, message in cases:
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", ["trainkit", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert exit_.value.code == 2, (args, err)
        assert len(lines) == 1 and ": error: " in lines[0] and message in lines[0], (args, err)
        assert "Traceback" not in err
        assert fingerprint(run_dir) == before, args  # the earlier run is untouched
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 2
    # The commands that failed left no folder behind (each held only its lock)
    assert sorted(p.name for p in (workdir / "outputs").iterdir()) == [run_dir.parent.name]


def test_debug_flag_adds_the_traceback(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TRAINKIT_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["trainkit", "evaluate", f"ckpt={workdir / 'none.pt'}"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1].startswith("trainkit evaluate: error: checkpoint ")


def test_a_full_disk_keeps_the_previous_checkpoint(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up while epoch 2's checkpoint is written: the run stops with one line,
    and last.pt still holds epoch 1, whole and loadable."""
    real_save = torch.save
    saves = []

    def save_until_full(obj: object, f: object) -> None:
        saves.append(obj)
        if len(saves) <= 3:  # epoch 0 and epoch 1 (last.pt and best.pt)
            return real_save(obj, f)
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    cfg = compose_config([*small_overrides(fmnist_slice), "epochs=3"])
    with pytest.raises(UserError) as error:
        run(cfg, tmp_path)
    folder = tmp_path / "checkpoints"
    assert str(error.value) == (
        f"no space left on the device to write {folder / 'last.pt'}: free some space and resume "
        "the run (the previous last.pt is intact)"
    )
    assert checkpoint.load(folder / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]  # no temp files
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3  # epochs 1 and 2
