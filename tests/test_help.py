"""The command line explains itself: `trainkit --help` on one screen, every command's own
--help, "did you mean", tab completion, alias conflicts and `~` in paths. The process is run
where the exit code and stderr are the behaviour; the rest is called in-process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from trainkit.commands import COMMANDS, did_you_mean, expand_home, quote_existing_paths
from trainkit.completion import study_names
from trainkit.config import ALIASES, alias_conflicts, config_groups

TRAINKIT = shutil.which("trainkit", path=str(Path(sys.executable).parent)) or "trainkit"


def trainkit(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [TRAINKIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


HELP_CALLS = [[name, "--help"] for name in COMMANDS] + [
    ["evaluate", "-h"],
    ["resume=outputs/x", "--help"],  # resume is written as a key
    ["--help", "study"],
]


@pytest.mark.parametrize("args", HELP_CALLS, ids=" ".join)
def test_every_command_answers_help_with_its_own_arguments(args: list[str], tmp_path: Path) -> None:
    result = trainkit(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "Traceback" not in result.stdout
    name = next(a for a in args if a not in ("--help", "-h")).partition("=")[0]
    command = COMMANDS[name]
    assert result.stdout.startswith(f"usage: {command.usage}\n")
    for spelling, _ in command.own:
        assert f"\n  {spelling}" in result.stdout
    assert "examples:\n  trainkit " in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_help_does_not_load_torch() -> None:
    """Help comes back in well under a second: torch (two seconds to import) stays unloaded."""
    program = """
import sys
from trainkit import cli
for args in (["--help"], ["lr-find", "--help"], ["study", "--help"]):
    sys.argv = ["trainkit", *args]
    try:
        cli.dispatch()
    except SystemExit as e:
        assert e.code == 0, e.code
print("torch loaded" if "torch" in sys.modules else "torch not loaded", file=sys.stderr)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "torch not loaded"


def test_main_help_is_one_screen_with_every_command_group_and_alias(tmp_path: Path) -> None:
    result = trainkit("--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) <= 45 and max(map(len, lines)) <= 100
    for name, command in COMMANDS.items():
        assert f"  {name:<16}{command.summary}" in lines
    for group, options in config_groups().items():  # wrapped lines continue under the first
        first = next(i for i, ln in enumerate(lines) if ln.startswith(f"  {group} "))
        text = lines[first][18:]
        for line in lines[first + 1 :]:
            if not line.startswith(" " * 18):
                break
            text += " " + line.strip()
        assert sorted(text.replace("*", "").split(", ")) == options
    assert "  optimizer       adam*, adagrad, adamw, momentum, nesterov, rmsprop, sgd" in lines
    assert not any(re.match(r"\s*hydra:?\s*$", ln) for ln in lines)  # no empty group
    assert "schema" not in result.stdout and "_target_" not in result.stdout
    assert "lr = optimizer.lr; epochs, batch_size, seed, device = trainer.<name>" in result.stdout
    assert "--cfg job" in result.stdout and "--help --verbose" in result.stdout


@pytest.mark.slow
def test_help_verbose_is_hydras_with_every_key(tmp_path: Path) -> None:
    result = trainkit("--help", "--verbose", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hydra/launcher: parallel, slurm" in result.stdout
    assert "\nhydra: \n" not in result.stdout and "schema" not in result.stdout
    assert "  weight_decay: " in result.stdout  # the composed config: every key


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("evalute", "no command 'evalute'; did you mean evaluate?"),
        ("lrfind", "no command 'lrfind'; did you mean lr-find?"),
        ("resum", "no command 'resum'; did you mean resume=<run dir>?"),
        ("mlp", "no command 'mlp'; did you mean model=mlp?"),
        ("torchvision", "no command 'torchvision'; did you mean data=torchvision or "
                        "model=torchvision?"),  # fmt: skip
        ("xyzzy", None),  # Hydra's grammar check names it: write key=value
        ("lr=0.1", None),
        ("-m", None),
        ("evaluate", None),
    ],
)
def test_did_you_mean(word: str, message: str | None) -> None:
    assert did_you_mean(word) == message


def test_a_misspelled_command_exits_2_with_one_line(tmp_path: Path) -> None:
    result = trainkit("evalute", "ckpt=outputs/x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "trainkit: error: no command 'evalute'; did you mean evaluate?\n"
    result = trainkit("resume", "outputs/x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("trainkit: error: resume takes the run as resume=<run dir>: "
                             "trainkit resume=outputs/<date>/<time>\n")  # fmt: skip


def complete(line: str, tmp_path: Path, shell: str = "bash") -> list[str]:
    """What Hydra's completion script gets back from trainkit for COMP_LINE `line`."""
    env = {"COMP_LINE": line, "COMP_POINT": str(len(line))}
    result = trainkit("-sc", f"query={shell}", cwd=tmp_path, env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout.split()


@pytest.mark.slow
def test_completion_offers_commands_and_aliases_not_internals(tmp_path: Path) -> None:
    words = complete("trainkit ", tmp_path)
    assert {f"{alias}=" for alias in ALIASES} <= set(words)
    assert {"evaluate", "lr-find", "study", "compare", "resume="} <= set(words)
    assert {"optimizer=", "optimizer.", "model="} <= set(words)  # Hydra's own answer
    assert not [w for w in words if "schema" in w or "_target_" in w]
    keys = complete("trainkit optimizer=sgd optimizer.", tmp_path)
    assert "optimizer.momentum=" in keys and "optimizer.lr=" in keys
    assert not [w for w in keys if re.search(r"\._\w+_=", w)]  # _target_, _partial_, ...
    assert complete("trainkit l", tmp_path) == ["learning-curve", "loss.", "loss=", "lr-find",
                                                 "lr="]  # fmt: skip
    assert complete("trainkit lr=", tmp_path) == ["lr=0.001"]  # Adam's, through optimizer.lr
    assert complete("trainkit lr=0.1 optimizer=sgd optimizer.mom", tmp_path) == [
        "optimizer.momentum="
    ]


@pytest.mark.slow
def test_completion_of_commands_arguments(tmp_path: Path) -> None:
    (tmp_path / "outputs" / "run").mkdir(parents=True)
    assert "ckpt=" in complete("trainkit evaluate ", tmp_path)
    assert complete("trainkit evaluate split=", tmp_path) == ["split=test", "split=val"]
    assert complete("trainkit evaluate ckpt=out", tmp_path) == ["ckpt=outputs/"]
    assert complete("trainkit resume=outputs/r", tmp_path) == ["resume=outputs/run/"]
    assert complete("trainkit study sy", tmp_path) == ["symmetry"]
    assert complete("trainkit compare outputs/run ", tmp_path) == ["rank_by="]
    assert complete("trainkit o", tmp_path, shell="fish") == ["optimizer.", "optimizer="]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_end_to_end(tmp_path: Path) -> None:
    """The script `trainkit -sc install=bash` installs, asked as bash asks on a tab press."""
    script = """eval "$(trainkit -sc install=bash)"
COMP_LINE="trainkit lr-f"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=1
hydra_bash_completion; echo "${COMPREPLY[@]}"
"""
    env = {**os.environ, "PATH": f"{Path(TRAINKIT).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.stdout.split() == ["lr-find"], result.stderr


def test_completion_knows_every_study() -> None:
    from trainkit.studies import STUDIES

    assert study_names() == list(STUDIES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lr=1e-3", "optimizer.lr=1e-2"],
         "lr=1e-3 and optimizer.lr=1e-2 both set optimizer.lr (lr is short for it): give it once"),
        (["trainer.epochs=3", "epochs=2"],
         "trainer.epochs=3 and epochs=2 both set trainer.epochs (epochs is short for it): give "
         "it once"),
        (["+optimizer.lr=1", "lr=3"],
         "+optimizer.lr=1 and lr=3 both set optimizer.lr (lr is short for it): give it once"),
        (["lr=0.1", "lr=0.2"], None),  # one spelling twice: Hydra's last-wins, as documented
        (["lr=0.1", "trainer.epochs=2", "seed=1"], None),
    ],
)  # fmt: skip
def test_an_alias_and_its_full_key_conflict(args: list[str], message: str | None) -> None:
    assert alias_conflicts(args) == ([message] if message else [])


@pytest.mark.parametrize("command", [[], ["lr-find"], ["-m"]])
def test_an_alias_conflict_exits_2_with_one_line(command: list[str], tmp_path: Path) -> None:
    result = trainkit(*command, "lr=1e-3", "optimizer.lr=1e-2", cwd=tmp_path)
    assert result.returncode == 2
    prefix = "trainkit lr-find" if command == ["lr-find"] else "trainkit"
    assert result.stderr == (f"{prefix}: error: lr=1e-3 and optimizer.lr=1e-2 both set "
                             "optimizer.lr (lr is short for it): give it once\n")  # fmt: skip
    assert not (tmp_path / "outputs").exists()


def test_home_is_expanded_in_path_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ada")
    assert expand_home(["data.root=~/data", "hydra.run.dir=~", "model.from_checkpoint=~/r"]) == [
        "data.root=/home/ada/data", "hydra.run.dir=/home/ada", "model.from_checkpoint=/home/ada/r"
    ]  # fmt: skip
    assert expand_home(["data.root=~/a,~/b", "x=[~/a,~/b]"]) == [
        "data.root=/home/ada/a,/home/ada/b", "x=[/home/ada/a,/home/ada/b]"
    ]  # fmt: skip
    untouched = ["~data.root", "a=b~c", "data.root='~/quoted'", "-m", "lr=0.1"]
    assert expand_home(untouched) == untouched
    monkeypatch.setenv("HOME", "/home/ada lovelace")  # quoted for Hydra, not for own arguments
    assert expand_home(["data.root=~/d", "ckpt=~/r", "resume=~/r"], ("ckpt",)) == [
        "data.root='/home/ada lovelace/d'", "ckpt=/home/ada lovelace/r",
        "resume=/home/ada lovelace/r",
    ]  # fmt: skip


@pytest.mark.slow
def test_home_in_a_path_reaches_the_run(tmp_path: Path) -> None:
    """bash leaves `~` after `data.root=` as it is: trainkit looks in $HOME/data, and says so."""
    home = tmp_path / "home"
    home.mkdir()
    result = trainkit("data.root=~/data", "data.download=false", cwd=tmp_path,
                      env={"HOME": str(home)})  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"trainkit: error: fashion_mnist not found in {home}/data:")
    result = trainkit("evaluate", "ckpt=~/nothing", cwd=tmp_path, env={"HOME": str(home)})
    assert result.returncode == 2
    assert result.stderr.startswith(f"trainkit evaluate: error: checkpoint {home}/nothing does")


def test_the_command_table_names_each_jobs_own_arguments() -> None:
    """An argument a job function takes but the table leaves out would reach Hydra as an
    unknown key (keep=epochs: no such config key), and its help would not name it."""
    import inspect

    from trainkit.cli import load

    for command in COMMANDS.values():
        if not command.handler:
            parameters = list(inspect.signature(load(command.target)).parameters)[2:]
            assert tuple(parameters) == command.own_keys, command.name


def test_an_existing_folder_named_by_its_overrides_is_one_value(tmp_path: Path) -> None:
    """Run folders hold '=' and ',' (13-05-22_lr=0.01,epochs=3), which Hydra's grammar reads
    as a sweep or refuses: an existing path is quoted; a sweep over data.root is not."""
    run = tmp_path / "13-05-22_lr=0.01,epochs=3"
    run.mkdir()
    args = [f"model.from_checkpoint={run}", "data.root=a,b", "lr=0.1", f"ckpt={run}"]
    quoted = quote_existing_paths(args, own_keys=("ckpt",))
    assert quoted[1:] == args[1:]  # a sweep, a number and a command's own argument as typed
    (parsed,) = OverridesParser.create().parse_overrides([quoted[0]])
    assert parsed.value() == str(run) and not parsed.is_sweep_override()
