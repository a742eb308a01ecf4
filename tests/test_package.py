"""trainkit as a user installs it: a wheel built from this checkout, installed into a fresh
venv, run from a folder that is not the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import small_overrides

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str | Path, cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env | {"PYTHONWARNINGS": "ignore"},
                          capture_output=True, text=True, timeout=300, **kw)  # fmt: skip


@pytest.mark.slow
def test_the_wheel_installs_and_trains_from_another_folder(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    # Build from a copy, so that the checkout gets no build/ folder.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for name in ("trainkit", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                "-w", tmp_path / "dist", source, cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("torch_trainkit-*.whl")

    # A fresh venv: the wheel, and the dependencies this one has (torch takes minutes to
    # install), reached through a .pth file. The checkout is on no path of it.
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path).returncode == 0
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "dependencies.pth").write_text(str(Path(torch.__file__).parent.parent) + "\n")
    installed = run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
                    "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)  # fmt: skip
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(venv / "bin" / "python", "-c", "import trainkit.config as c; print(c.CONF_DIR)",
                cwd=elsewhere)  # fmt: skip
    assert where.stdout.strip() == str(site / "trainkit" / "conf"), where.stderr
    trainkit = venv / "bin" / "trainkit"
    help_ = run(trainkit, "--help", cwd=elsewhere)
    assert help_.returncode == 0 and "Traceback" not in help_.stderr, help_.stderr
    # the config tree came with the wheel: every group's options, the default starred
    assert "optimizer       adam*, adagrad, adamw, momentum, nesterov, rmsprop, sgd" in help_.stdout
    trained = run(trainkit, *small_overrides(fmnist_slice), "epochs=1", cwd=elsewhere)
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = (elsewhere / "outputs").glob("*/*")
    assert (run_dir / "checkpoints" / "best.pt").is_file()
