"""The `trainkit` command as a user runs it: a run's folder, a 4-job sweep, and one clear line
with exit code 2 for each kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainkit.cli import preflight
from trainkit.config import expand_aliases

from .conftest import small_overrides
from .tensorboard_events import scalar_tags, scalars

TRAINKIT = shutil.which("trainkit", path=str(Path(sys.executable).parent)) or "trainkit"


def trainkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [TRAINKIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_run_writes_its_folder_and_prints_one_line_per_epoch(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    result = trainkit(*small_overrides(fmnist_slice), "lr=0.002", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")  # outputs/<date>/<time>_<overrides>
    assert run_dir.name.endswith(",lr=0.002") and ",epochs=2," in run_dir.name
    assert "data.root" not in run_dir.name  # a path would nest folders
    names = {p.name for p in run_dir.iterdir()}
    assert {".hydra", "metrics.csv", "summary.json", "checkpoints", "trainkit.log"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    # Not a terminal: plain lines, no progress-bar redraws.
    epoch_lines = [ln for ln in result.stdout.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epoch_lines] == ["1/2", "2/2"]
    assert "\r" not in result.stdout and "│ test " in result.stdout
    # A short header, not the config tree: the folder, what was asked, data, model, device
    lines = result.stdout.splitlines()
    header = lines[: lines.index(epoch_lines[0])]
    assert len(header) <= 15 and "_target_" not in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert header[0] == f"trainkit run in {run_dir.relative_to(tmp_path)}"
    assert header[1].split("overrides: ")[1].endswith("model=mlp model.hidden=[64] lr=0.002")
    assert f"{summary['parameters']:,} parameters" in header[3]
    assert "1,000 train / 200 val / 400 test images of 1x28x28, 10 classes" in header[2]
    assert "2 epochs of 10 steps (batch 100) on cpu" in header[4]
    assert sum("verdict:" in line for line in lines) == 1
    assert "completed 2 epochs in " in result.stdout


@pytest.mark.slow
def test_sweep_jobs_are_named_by_their_overrides(fmnist_slice: Path, tmp_path: Path) -> None:
    # Not lr=0.1: Adam diverges at it (test_untrusted.py)
    args = ["-m", "optimizer=sgd,adam", "lr=0.01,0.001", *small_overrides(fmnist_slice)]
    result = trainkit(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # 4 jobs of 2 epochs: a few lines each, then the table that compares them
    assert len((result.stdout + result.stderr).splitlines()) <= 100
    assert result.stdout.count("verdict: ") == 4 and "│ test " not in result.stdout
    jobs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    # The swept keys alone, in the order typed (the keys every job shares are left out)
    assert [p.name for p in jobs] == [
        "optimizer=adam,lr=0.001",
        "optimizer=adam,lr=0.01",
        "optimizer=sgd,lr=0.001",
        "optimizer=sgd,lr=0.01",
    ]
    for job in jobs:
        assert (job / "metrics.csv").is_file() and (job / "summary.json").is_file()
        assert "curves/loss" in scalar_tags(job / "validation")  # beside train/, one chart
        lr = float(job.name.split("lr=")[1].split(",")[0])
        assert scalars(job, "schedule/lr")[0] == (1, pytest.approx(lr))  # the lr step 1 used


BAD_INPUTS = [
    (["foo=1"], "foo: no such config key (`trainkit --cfg job` lists them all)"),
    (["+foo=1"], "+foo=1: trainkit declares every key and foo is not one"),
    (["optimizer.lrr=0.1"], "optimizer.lrr: no such key; did you mean optimizer.lr?"),
    (["trainer.epoch=3"], "trainer.epoch: no such key; did you mean trainer.epochs?"),
    (["optimzer=sgd"], "optimzer: no such config key; did you mean optimizer=...?"),
    (
        ["optimizer.momentum=0.9"],
        "optimizer.momentum: no such key in optimizer=adam; its keys are lr, betas, eps, "
        "weight_decay, amsgrad",
    ),
    # was OmegaConf's "value 'abc' of type 'str' could not be converted to Float"
    (["lr=abc"], "lr=abc: lr takes a number, e.g. lr=0.01"),
    (["epochs=1.5"], "epochs=1.5: epochs takes a whole number, e.g. epochs=10"),
    (["batch_size=[64,128]"], "batch_size=[64,128]: batch_size takes a whole number, e.g. "),
    (["trainer.deterministic=maybe"], "trainer.deterministic=maybe: trainer.deterministic takes "
                                      "true or false"),  # fmt: skip
    # was accepted, then killed by the kernel's OOM killer with nothing said (exit 137)
    (["batch_size=100000"], "batch_size=100000: more than the 55,000 training images: choose at "
                            "most 55,000"),  # fmt: skip
    (["lr==0.1"], "cannot read the override 'lr==0.1': write key=value, e.g. lr=0.01"),
    (["lr=0"], "lr=0.0: the learning rate must be > 0"),
    (["lr=-0.1"], "lr=-0.1: the learning rate must be > 0"),
    (["batch_size=0"], "batch_size=0: use a batch size >= 1"),
    (["seed=-1"], "seed=-1: use a seed in 0..2**32-1"),
    (
        ["optimizer=lbfgs"],
        "optimizer=lbfgs: no such option; choose one of adagrad, adam, adamw, momentum, "
        "nesterov, rmsprop, sgd",
    ),
    (["model=transformer"], "model=transformer: no such option; choose one of cnn, mlp"),
    (  # the group was optional: a misspelled preset trained the default experiment, exit 0
        ["experiment=fmnist_speedrun_9s"],
        "experiment=fmnist_speedrun_9s: no such option; choose one of fmnist_accuracy, "
        "fmnist_speedrun, fmnist_speedrun_90s",
    ),
    (["model.activation=swish"], "model.activation=swish: choose one of"),
    (["model.channels=[8,8,8,8,8]"], "model.channels has 5 pooling stages"),
    (
        ["optimizer=sgd", "optimizer.nesterov=true"],
        "optimizer: Nesterov momentum requires a momentum",
    ),
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: give two values in [0, 1)"),
    (["data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"], "data.mean has 3 values but"),
    (["data.name=mnist3"], "data.name=mnist3: choose one of fashion_mnist, cifar10, mnist, kmnist"),
    (["model.from_checkpoint=/nowhere/best.pt"], "checkpoint /nowhere/best.pt does not exist"),
    (["model=mlp", "model.freeze=[net.fc9]"], "model.freeze: net.fc9 names no parameter"),
    (["model=torchvision", "model.arch=vit_b_16"], "model.arch=vit_b_16: use a torchvision"),
    (["scheduler=plateau", "scheduler.interval=step"], "scheduler=plateau watches the validation"),
    (["augment.zoom=[1.2,0.8]"], "augment.zoom is a range [low, high]"),
    (
        ["experiment=fmnist_speedrun", "model=mlp"],
        "experiment=fmnist_speedrun sets model.channels, which model=mlp does not have: drop",
    ),
    (["init._target_=torch.nn.init.kaiming"],
     "init._target_=torch.nn.init.kaiming: Error loading 'torch.nn.init.kaiming': Are you sure"),
    (
        ["model=torchvision", "model.pretrained=true", "init=he_normal"],
        "init (torch.nn.init.kaiming_normal_) would overwrite the pretrained weights: keep "
        "init=default",
    ),
    (["device=tpu"], "device=tpu: choose auto, cpu, cuda or cuda:N"),
    (["lr=0.1,0.01"], "lr=0.1,0.01 lists several values: add -m to sweep them"),
    (["-m", "lr=0.1,-1"], "lr=-1.0: the learning rate must be > 0"),
    (  # was Hydra's "Could not override 'hydra.sweeper.direction'.", saying no fix
        ["-m", "lr=0.1,0.01", "hydra.sweeper.direction=minimize"],
        "hydra.sweeper.direction: no such key in hydra/sweeper=basic; its keys are",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_named_with_the_fix(args: list[str], message: str) -> None:
    """The pre-flight check main() runs before Hydra, called in-process (seconds, not minutes)."""
    multirun = args[0] == "-m"
    errors = preflight(expand_aliases(args[1:] if multirun else args), multirun)
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_an_unknown_flag_says_how_to_write_it_as_an_override() -> None:
    """`trainkit --epochs 3` printed argparse's 7-line usage block."""
    from trainkit.cli import unknown_flag_message

    expected = "not an option; trainkit's settings are overrides, written key=value: "
    assert unknown_flag_message(["--epochs", "3"]) == f"--epochs: {expected}epochs=3"
    assert unknown_flag_message(["lr=0.1", "--seed=2"]) == f"--seed=2: {expected}seed=2"
    assert unknown_flag_message(["--lr", "-m"]) == f"--lr: {expected}lr=<value>"
    for fine in (["-m", "lr=0.1,0.01"], ["--cfg", "job"], ["--help"], ["lr=-1"], []):
        assert unknown_flag_message(fine) is None, fine


@pytest.mark.slow
def test_an_unknown_flag_exits_2_with_one_line(tmp_path: Path) -> None:
    result = trainkit("--epochs", "3", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, (
        "trainkit: error: --epochs: not an option; trainkit's settings are overrides, written "
        "key=value: epochs=3\n"
    ))  # fmt: skip
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "args", [["foo=1"], ["lr=-1", "batch_size=0"], ["optimizer=lbfgs"], ["-m", "lr=abc,0.1"]]
)
@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_per_problem_and_no_run(
    args: list[str], tmp_path: Path
) -> None:
    result = trainkit(*args, cwd=tmp_path)
    assert result.returncode == 2
    multirun = args[0] == "-m"
    expected = preflight(expand_aliases(args[1:] if multirun else args), multirun)
    assert result.stderr.splitlines() == [f"trainkit: error: {line}" for line in expected]
    assert len(expected) == len([a for a in args if a != "-m"])
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists()  # nothing started, nothing written


@pytest.mark.slow
def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    result = trainkit(f"data.root={tmp_path}", "data.download=false", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"trainkit: error: fashion_mnist not found in {tmp_path}: run "
        "`apt-get install dataset-fashion-mnist`, or set data.root=DIR holding "
        "the four idx .gz files\n"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.slow
def test_cuda_without_a_gpu_says_what_to_use(tmp_path: Path) -> None:
    result = trainkit("device=cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "trainkit: error: device=cuda but CUDA is not available here: use device=cpu or auto\n"
    )


@pytest.mark.slow
def test_hydras_help_lists_the_groups_and_their_options(tmp_path: Path) -> None:
    result = trainkit("--help", "--verbose", cwd=tmp_path)  # plain --help: test_help.py
    assert result.returncode == 0
    assert "optimizer: adagrad, adam, adamw, momentum, nesterov, rmsprop, sgd" in result.stdout
    assert (
        "scheduler: cosine, exponential, multistep, none, onecycle, plateau, step, warmup_cosine"
        in result.stdout
    )
    assert "schema" not in result.stdout


@pytest.mark.parametrize(
    ("exit_with", "status", "printed"),
    [("None", 0, ""), ("2", 2, ""), ("'bad value: use x'", 1, "bad value: use x\n")],
)
def test_the_command_exits_with_mains_status_after_the_exit_handlers(
    exit_with: str, status: int, printed: str
) -> None:
    # In a process of its own: entry() ends the process it runs in.
    program = f"""
import atexit, sys
from trainkit import cli
def main():
    atexit.register(print, "exit handler ran")
    print("main ran", end=" ")
    code = {exit_with}
    if code is not None:
        sys.exit(code)
cli.main = main
cli.entry()
print("not reached")
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == status
    assert result.stdout == "main ran exit handler ran\n"
    assert result.stderr == printed


def test_the_command_waits_for_threads_still_running_as_python_does() -> None:
    program = """
import sys, threading, time
from trainkit import cli
def late():
    time.sleep(0.3)
    print("thread finished", flush=True)
def main():
    threading.Thread(target=late).start()
    sys.exit(3)
cli.main = main
cli.entry()
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (3, "thread finished\n")
