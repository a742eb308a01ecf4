"""Your own parts, the Hydra way: a model and an optimizer class from a module on PYTHONPATH,
each picked by a YAML in a config dir of yours (--config-dir), trained, resumed and evaluated;
a class of the wrong kind gets one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainkit import checkpoint

from .conftest import small_overrides
from .test_cli import TRAINKIT

SIGNAL_AT_STEP = Path(__file__).with_name("signal_at_step.py")

USER_MODULE = '''
import math
import torch
from torch import nn


class Net(nn.Module):
    """trainkit passes input_shape and num_classes; the rest comes from the YAML."""

    def __init__(self, input_shape, num_classes, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden),
                                  nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
'''


@pytest.fixture
def user(tmp_path: Path) -> Path:
    """A user's folder: mynet.py, and conf/ with one model and one optimizer option."""
    (tmp_path / "mynet.py").write_text(USER_MODULE)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "optimizer").mkdir()
    (tmp_path / "conf" / "model" / "my_net.yaml").write_text("_target_: mynet.Net\nhidden: 48\n")
    (tmp_path / "conf" / "optimizer" / "sign_sgd.yaml").write_text(
        "_target_: mynet.SignSGD\n_partial_: true\nlr: 1.0e-3\n"
    )
    return tmp_path


def trainkit(*args: str, cwd: Path, signal_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(cwd)}
    command = [TRAINKIT] if signal_at is None else [sys.executable, str(SIGNAL_AT_STEP),
                                                    "INT", signal_at]  # fmt: skip
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.slow
def test_a_users_model_trains_resumes_and_evaluates_from_their_config_dir(
    user: Path, fmnist_slice: Path
) -> None:
    small = [o for o in small_overrides(fmnist_slice) if not o.startswith("model")]
    mine = ["--config-dir", "conf", "model=my_net", "optimizer=sign_sgd"]
    stopped = trainkit(*mine, *small, "hydra.run.dir=run", cwd=user, signal_at="15")
    assert stopped.returncode == 130, stopped.stderr  # stopped in epoch 2 of 2
    saved = checkpoint.load(user / "run" / "checkpoints" / "last.pt", trusted={
        ("model", "mynet.Net"), ("optimizer", "mynet.SignSGD")})  # fmt: skip
    assert saved["config"]["model"] == {"_target_": "mynet.Net", "hidden": 48}
    assert saved["model"]["body.1.weight"].shape == (48, 784)
    assert set(saved["optimizer"]["param_groups"][0]) >= {"lr"}
    assert "betas" not in saved["optimizer"]["param_groups"][0]  # SignSGD's, not Adam's

    # A checkpoint alone never chooses what code runs: the user names their class.
    alone = trainkit("evaluate", "ckpt=run", cwd=user)
    assert alone.returncode == 2 and len(alone.stderr.splitlines()) == 1
    assert "model._target_=mynet.Net" in alone.stderr and "name it yourself" in alone.stderr

    resumed = trainkit(f"resume={user / 'run'}", *mine, cwd=user)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(user / "run" / "checkpoints" / "last.pt",
                           trusted={("model", "mynet.Net"), ("optimizer", "mynet.SignSGD")}
                           )["epoch"] == 2  # fmt: skip
    evaluated = trainkit("evaluate", "ckpt=run", *mine, cwd=user)
    assert evaluated.returncode == 0, evaluated.stderr
    (result,) = (user / "outputs" / "evaluate").glob("*/*/evaluation.json")
    assert json.loads(result.read_text())["samples"] == 400


@pytest.mark.slow
def test_a_schedule_is_one_yaml_file(user: Path, fmnist_slice: Path) -> None:
    """torch's StepLR, named by a YAML in the user's config dir: nothing else to add."""
    (user / "conf" / "scheduler").mkdir()
    (user / "conf" / "scheduler" / "tenfold.yaml").write_text(
        "_target_: torch.optim.lr_scheduler.StepLR\n_partial_: true\n"
        "interval: epoch\nstep_size: 1\ngamma: 0.1\n"
    )
    args = ["--config-dir", "conf", "scheduler=tenfold", "epochs=3", "hydra.run.dir=run"]
    result = trainkit(*small_overrides(fmnist_slice), *args, cwd=user)
    assert result.returncode == 0, result.stderr
    rows = (user / "run" / "metrics.csv").read_text().splitlines()
    lr = [float(row.split(",")[2]) for row in rows[1:]]  # the lr each epoch began with
    assert lr == pytest.approx([1e-3, 1e-4, 1e-5])
    (user / "conf" / "scheduler" / "wrong.yaml").write_text("_target_: builtins.str\n")
    wrong = trainkit(*small_overrides(fmnist_slice), "--config-dir", "conf", "scheduler=wrong",
                     "hydra.run.dir=wrong", cwd=user)  # fmt: skip
    assert wrong.returncode == 2 and wrong.stderr == (
        "trainkit: error: scheduler._target_=builtins.str gave a str, not a torch LRScheduler: "
        "name a scheduler class (with _partial_: true)\n"
    )
    assert not (user / "wrong").exists()  # found before the run started


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model._target_=collections.OrderedDict",
         "model._target_=collections.OrderedDict gave a OrderedDict, not a torch nn.Module"),
        ("optimizer._target_=collections.OrderedDict",
         "optimizer._target_=collections.OrderedDict gave a OrderedDict, not a "
         "torch.optim.Optimizer"),
        ("model._target_=mynet.Nett",
         "model cannot be built: Error loading 'mynet.Nett': Are you sure that 'Nett' is "
         "importable"),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_a_class_of_the_wrong_kind_gets_one_line(
    override: str, message: str, user: Path, fmnist_slice: Path
) -> None:
    result = trainkit(*small_overrides(fmnist_slice), override, cwd=user)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert not (user / "outputs").exists()
