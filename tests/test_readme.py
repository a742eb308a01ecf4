"""The README's commands, run as a user would copy them: every line of every ```bash block,
in order, each block in a fresh folder of its own, shrunk to a few steps on small data.

How a line is run (`plan`):
- `trainkit ...` as a subprocess of this venv's `trainkit`, with small-data overrides appended for
  keys the line does not set (SHRINK); exit 0 expected, and no traceback. A training line that a
  later `resume=` in its block goes on from is stopped with SIGINT in its second epoch
  (tests/signal_at_step.py: the README's "Ctrl-C"), exit 130 expected.
- `outputs/<date>/<time>` and `outputs/multirun/<date>/<time>` become the folder that an earlier
  line of the same block made (the latest such).
- `data.root=~/...`: HOME is the block's folder, and the dataset named by `data=` is generated
  there (tests/conftest.py's writers).
- `tensorboard --logdir DIR`: no server; DIR must hold event files with scalars in them.
- `torchrun ... -m trainkit ...`: run as written (this venv's torchrun), shrunk the same way.
- `mkdir`, `printf ... > file`, `export NAME=VALUE`: shell set-up, run in the block's folder.
- The install lines (`scripts/train`, `scripts/test`, `pip install .`) are checked, not run:
  they set up a machine (CI runs `scripts/test` itself; tests/test_package.py installs the wheel).
Any other line fails the test with a message saying it is not mapped: an example nobody runs is
an example that goes stale.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import SLICE_TRAIN, write_cifar10

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
TRAINKIT = shutil.which("trainkit", path=str(BIN)) or "trainkit"
TORCHRUN = shutil.which("torchrun", path=str(BIN)) or "torchrun"
SIGNAL_AT_STEP = Path(__file__).parent / "signal_at_step.py"

RUN_DIR = "outputs/<date>/<time>"
SWEEP_DIR = "outputs/multirun/<date>/<time>"
TOOLS = ("lr-find", "init-report", "learning-curve", "evaluate")
# Set-up lines, checked rather than run (see the module docstring)
INSTALL = {"scripts/train", "scripts/test", "pip install ."}
STEPS = 3  # trainer.max_steps_per_epoch: a run is a few steps, each epoch
STOP_AT_STEP = STEPS + 1  # the first step of epoch 2: epoch 1's best.pt exists by then
SMALL_DATA = {  # data= option -> (files generated under data.root, validation size)
    "fashion_mnist": (None, 200),  # the slice from conftest (1200 train, 400 test)
    "cifar10": (write_cifar10, 50),  # 200 train, 30 test
}


class Unmapped(Exception):
    """A README line this test does not know how to run."""


@dataclass
class Block:
    heading: str
    lines: list[str]  # commands, comments removed


@dataclass
class Step:
    kind: str  # shell, export, install, tensorboard, trainkit
    argv: list[str] = field(default_factory=list)
    expect: int = 0  # 130 for a run stopped with SIGINT in epoch 2, for a later resume=


def readme_blocks(text: str) -> list[Block]:
    """Every ```bash block, with the heading above it (fenced blocks are skipped whole, so a
    `# comment` in one is not a heading)."""
    blocks, heading = [], ""
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$|^(#+ [^\n]*)$", text, re.M | re.S):
        if match.group(3):
            heading = match.group(3).lstrip("# ").strip()
        elif match.group(1) == "bash":
            lines = [command_part(raw) for raw in match.group(2).splitlines()]
            blocks.append(Block(heading, [line for line in lines if line]))
    return blocks


def command_part(raw: str) -> str:
    """'cmd   # note' -> 'cmd'; a whole-line comment -> ''."""
    return re.sub(r"(^|\s+)#(\s.*)?$", "", raw.strip()).strip()


def readme_files(text: str) -> dict[str, str]:
    """```python blocks that open with `# <name>.py`: files the bash blocks use."""
    files = {}
    for body in re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S):
        first = body.splitlines()[0]
        if re.fullmatch(r"# [\w/]+\.py", first):
            files[first[2:]] = body
    return files


def option(args: list[str], key: str) -> str | None:
    """The last value the line gives `key` (a group or a key), if any."""
    values = [a.partition("=")[2] for a in args if a.partition("=")[0] == key]
    return values[-1] if values else None


def sets(args: list[str], *keys: str) -> bool:
    return any(a.partition("=")[0] in keys for a in args)


def shrink(args: list[str], home: Path, slice_root: Path, kind: str) -> list[str]:
    """Small-data overrides for the keys a line leaves alone. `kind`: train, tool or study."""
    data = option(args, "data") or "fashion_mnist"
    if data not in SMALL_DATA:
        raise Unmapped(f"data={data}: no small files for it in tests/test_readme.py SMALL_DATA")
    write, val_size = SMALL_DATA[data]
    extra = []
    root = option(args, "data.root")
    if root is None:
        if write is not None:
            raise Unmapped(f"data={data} without data.root=: nothing to generate it into")
        sizes = option(args, "sizes")
        big = sizes and any(float(s) > SLICE_TRAIN for s in sizes.split(","))
        if not big:  # else the full Fashion-MNIST from its default place
            extra.append(f"data.root={slice_root}")
        else:
            extra.append("data.test_size=200")
    elif root.startswith("~/"):
        if write is None:
            raise Unmapped(f"data.root={root} with data={data}: no generated files for it")
        write(home / root[2:])
    else:
        raise Unmapped(f"data.root={root}: only ~/... is mapped (generated files)")
    extra += [f"data.val_size={val_size}", "data.download=false", "diagnostics.pictures=false"]
    if not sets(args, "trainer.max_steps_per_epoch"):
        extra.append(f"trainer.max_steps_per_epoch={STEPS}")
    if not sets(args, "threads", "trainer.threads"):
        extra.append("trainer.threads=1")
    if kind == "train" and not sets(args, "epochs", "trainer.epochs", "trainer", "experiment"):
        extra.append("trainer.epochs=2")
    if kind == "tool" and (option(args, "model") or "cnn") == "cnn":  # lr-find: ~180 steps
        extra += ["batch_size=32", "model.channels=[8,16]", "model.hidden=32"]
    if kind == "study":  # one seed: a study runs 3 by default, 3x the runs
        extra.append("seeds=1")
    extra = [a for a in extra if not sets(args, a.partition("=")[0])]
    if kind == "train":  # run folders named as the user's would be: without these keys
        keys = ",".join(["data.root", *(a.partition("=")[0] for a in extra)])
        extra.append(f"hydra.job.config.override_dirname.exclude_keys=[{keys}]")
    return extra


def trainkit_kind(args: list[str]) -> str:
    """info, compare, study, tool, resume, sweep or train, from `trainkit ARGS`."""
    words = list(args)
    while words[:1] in (["--config-dir"], ["-cd"]):
        words = words[2:]
    first = words[0] if words else ""
    if first in ("--help", "--cfg"):
        return "info"
    if first in ("compare", "study", *TOOLS):
        return {"compare": "compare", "study": "study"}.get(first, "tool")
    if any(a.startswith("resume=") for a in args):
        return "resume"
    if first and not first.startswith("-") and "=" not in first:
        raise Unmapped(f"`trainkit {first}`: not a subcommand tests/test_readme.py knows")
    return "sweep" if "-m" in args or "--multirun" in args else "train"


def plan(block: Block, home: Path, slice_root: Path) -> list[Step]:
    """How to run each line of a block; raises Unmapped for a line it cannot run."""
    steps = []
    for line in block.lines:
        words = shlex.split(line)
        if line in INSTALL:
            steps.append(Step("install", words))
        elif words[0] in ("mkdir", "printf"):
            steps.append(Step("shell", [line]))
        elif words[0] == "export" and len(words) == 2 and "=" in words[1]:
            steps.append(Step("export", words[1:]))
        elif words[:2] == ["tensorboard", "--logdir"] and len(words) == 3:
            steps.append(Step("tensorboard", words[2:]))
        elif words[0] == "trainkit" or (words[0] == "torchrun" and "trainkit" in words):
            at = words.index("trainkit")
            args = words[at + 1 :]
            kind = trainkit_kind(args)
            if kind in ("train", "sweep", "study", "tool") and not (
                kind == "tool" and args[0] == "evaluate"
            ):
                shrink_kind = {"sweep": "train", "study": "study"}.get(kind, kind)
                if not (kind == "study" and args[1:2] == ["list"]):
                    args = args + shrink(args, home, slice_root, shrink_kind)
            elif kind == "resume":
                args = args + (["trainer.threads=1"] if not sets(args, "trainer.threads") else [])
            command = [TRAINKIT] if words[0] == "trainkit" else [TORCHRUN, *words[1:at], "trainkit"]
            steps.append(Step(kind, [*command, *args]))
        else:
            raise Unmapped(f"{line!r}: no mapping for it in tests/test_readme.py (plan): map it "
                           "there, or keep it out of the README's bash blocks")  # fmt: skip
    # A line another line resumes must be stopped first: the last run-making line before it.
    for i, line in enumerate(block.lines):
        if "resume=" + RUN_DIR in line:
            makers = [j for j in range(i) if steps[j].kind == "train"]
            if not makers:
                raise Unmapped(f"{line!r}: no earlier line in its block makes the run it resumes")
            stopped = steps[makers[-1]]
            if stopped.argv[0] != TRAINKIT:
                raise Unmapped(f"{line!r}: only a plain trainkit run is stopped for resume")
            stopped.expect = 130
            stopped.argv = [sys.executable, str(SIGNAL_AT_STEP), "INT", str(STOP_AT_STEP),
                            *stopped.argv[1:]]  # fmt: skip
    return steps


def new_dirs(cwd: Path, pattern: str, before: set[Path]) -> list[Path]:
    found = [p for p in cwd.glob(pattern) if p.is_dir() and p not in before]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def check_install(words: list[str]) -> None:
    """What the install lines stand on, without setting up a machine from a test."""
    if words[0].startswith("scripts/"):
        script = ROOT / words[0]
        assert script.is_file() and os.access(script, os.X_OK), f"{script} is not executable"
        assert "scripts/setup.sh" in script.read_text()
        if words[0] == "scripts/test":
            assert "exec scripts/test" in (ROOT / ".ci" / "run").read_text()
    else:
        assert 'trainkit = "trainkit.cli:entry"' in (ROOT / "pyproject.toml").read_text()


def check_tensorboard(logdir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(logdir.rglob("events.out.tfevents.*"))
    assert events, f"tensorboard --logdir {logdir}: no event files there"
    folders = {p.parent for p in events}
    scalars = set()
    for folder in folders:
        scalars |= set(EventAccumulator(str(folder)).Reload().Tags()["scalars"])
    assert scalars, f"tensorboard --logdir {logdir}: event files without scalars"


def run_block(block: Block, files: dict[str, str], cwd: Path, slice_root: Path) -> None:
    """Run a block's lines in order in cwd, each checked as it ends."""
    home = cwd
    for name, body in files.items():
        (cwd / name).write_text(body)
    steps = plan(block, home, slice_root)
    env = {**os.environ, "HOME": str(home), "PYTHONWARNINGS": "ignore"}
    env.pop("TRAINKIT_DEBUG", None)
    latest: dict[str, Path] = {}
    for line, step in zip(block.lines, steps, strict=True):
        if step.kind == "install":
            check_install(step.argv)
            continue
        if step.kind == "export":
            name, _, value = step.argv[0].partition("=")
            env[name] = value.replace("$PWD", str(cwd))
            continue
        argv = []
        for arg in step.argv:
            for placeholder in (SWEEP_DIR, RUN_DIR):  # the longer one first
                if placeholder in arg:
                    if placeholder not in latest:
                        pytest.fail(f"{line!r}: no earlier line in its block made {placeholder}")
                    arg = arg.replace(placeholder, str(latest[placeholder].relative_to(cwd)))
            argv.append(arg)
        if step.kind == "tensorboard":
            check_tensorboard(cwd / argv[0])
            continue
        runs = set(cwd.glob("outputs/[0-9]*/*"))
        sweeps = set(cwd.glob("outputs/multirun/*/*"))
        if step.kind == "shell":
            result = subprocess.run(["bash", "-c", argv[0]], cwd=cwd, env=env,
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
        else:
            result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                    timeout=300)  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == step.expect, (
            f"README line {line!r} ran as {shlex.join(argv)} in {cwd}: exit {result.returncode}, "
            f"expected {step.expect}\n{output[-3000:]}"
        )
        assert "Traceback" not in output, f"README line {line!r}: a traceback\n{output[-3000:]}"
        if made := new_dirs(cwd, "outputs/[0-9]*/*", runs):
            latest[RUN_DIR] = made[-1]
        if made := new_dirs(cwd, "outputs/multirun/*/*", sweeps):
            latest[SWEEP_DIR] = made[-1]


TEXT = README.read_text()
BLOCKS = readme_blocks(TEXT)


def block_id(block: Block) -> str:
    same = [b for b in BLOCKS if b.heading == block.heading]
    suffix = f"-{same.index(block) + 1}" if len(same) > 1 else ""
    return re.sub(r"\W+", "-", block.heading.lower()).strip("-") + suffix


def test_the_readme_has_its_bash_blocks_and_each_line_is_mapped(tmp_path: Path) -> None:
    runs = sum(line.startswith(("trainkit", "torchrun")) for b in BLOCKS for line in b.lines)
    assert len(BLOCKS) >= 6 and runs >= 15, f"{len(BLOCKS)} bash blocks, {runs} trainkit lines"
    for block in BLOCKS:
        plan(block, tmp_path, tmp_path)  # raises Unmapped: a line nobody would run


@pytest.mark.parametrize(
    "line",
    ["curl -O https://example.org/data.tgz", "trainkit frobnicate", "python train.py",
     "trainkit data=svhn data.root=~/data", "trainkit resume=outputs/<date>/<time>"],
)  # fmt: skip
def test_a_line_it_cannot_run_fails_with_a_message_saying_so(line: str, tmp_path: Path) -> None:
    with pytest.raises(Unmapped, match="test_readme|earlier line|not a subcommand"):
        plan(Block("Example", [line]), tmp_path, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=block_id)
def test_readme_block_runs(block: Block, fmnist_slice: Path, tmp_path: Path) -> None:
    run_block(block, readme_files(TEXT), tmp_path, fmnist_slice)
