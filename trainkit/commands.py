"""trainkit's subcommands in one table, and the help the command line prints about itself.

`trainkit --help`, `trainkit <command> --help` and "did you mean" read the table below;
cli.py dispatches on it. Nothing here imports torch or Hydra: help comes back in a fraction of
a second.
"""

from __future__ import annotations

import difflib
import os
import re
import textwrap
from dataclasses import dataclass

from trainkit.config import ALIASES, CONF_DIR, config_groups

WIDTH = 96  # help lines wrap here


@dataclass(frozen=True)
class Command:
    """`trainkit <name> ...`. A `job` target is `(cfg, out_dir, **own) -> dict` and runs on the
    composed config (cli.run_subcommand); a `handler` takes the arguments and returns the exit
    status. `own` are its `key=value` arguments, not config keys (a value a,b,c: a list)."""

    name: str
    target: str  # "module:function"
    summary: str  # one line in `trainkit --help`
    usage: str
    about: str  # a paragraph in `trainkit <name> --help`
    own: tuple[tuple[str, str], ...] = ()  # (argument as written, what it does)
    examples: tuple[str, ...] = ()
    handler: bool = False
    outputs: str = ""

    @property
    def own_keys(self) -> tuple[str, ...]:
        return tuple(spelling.partition("=")[0] for spelling, _ in self.own if "=" in spelling)


OVERRIDES = ("[overrides]", "config overrides, as for a run: group=option, key=value, aliases")

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command(
        "evaluate", "trainkit.evaluation:evaluate_checkpoint",
        "score a run's checkpoint on the test set (or val)",
        "trainkit evaluate ckpt=<run dir or .pt> [split=test|val] [weights=last|best] [overrides]",
        "Rebuilds the model, data split, normalization and loss from the checkpoint's own config "
        "and scores it; prints loss, accuracy and the confusion matrix. Only data.root, "
        "data.download, device and trainer.eval_batch_size are taken from the command line.",
        (("ckpt=PATH", "a run folder or a checkpoint file"),
         ("split=test|val", "the split to score (default test, with the run's test-time views)"),
         ("weights=last|best", "of a run folder: last.pt, the weights of the run's own test "
          "score (default), or best.pt, the epoch with the best trainer.monitor"),
         ("[overrides]", "data.root=DIR, device=cpu, trainer.eval_batch_size=N")),
        ("trainkit evaluate ckpt=outputs/2024-05-01/12-00-00",
         "trainkit evaluate ckpt=outputs/2024-05-01/12-00-00 weights=best split=val"),
        outputs="outputs/evaluate/<date>/<time>/evaluation.json",
    ),
    Command(
        "resume", "trainkit.cli:resume",
        "go on with a stopped run, in its own folder: trainkit resume=<run dir>",
        "trainkit resume=<run dir or .pt> [data.root=DIR] [device=...] [trainer.threads=N]",
        "Continues a run stopped by Ctrl-C, SIGTERM or a crash from last.pt (or the checkpoint "
        "named), in the run's own folder: weights, optimizer, schedule, RNGs and the batch "
        "order. The run keeps its config; only data.root, data.download, device and "
        "trainer.threads may change.",
        (("resume=PATH", "the run folder (its checkpoints/last.pt) or a checkpoint file"),
         ("[overrides]", "data.root=DIR, data.download=false, device=cpu, trainer.threads=N")),
        ("trainkit resume=outputs/2024-05-01/12-00-00",
         "trainkit resume=outputs/2024-05-01/12-00-00 device=cpu"),
        handler=True,
    ),
    Command(
        "lr-find", "trainkit.lr_finder:lr_find",
        "learning-rate range test on the real training step; suggests lr=",
        "trainkit lr-find [overrides]",
        "Trains with the lr growing from 1e-7 to 10 over 200 steps, stops when the smoothed loss "
        "passes 4x its minimum, and suggests a tenth of the lr with the lowest smoothed loss. "
        "The model, data, loss and optimizer are the run's: choose them with overrides.",
        (OVERRIDES,),
        ("trainkit lr-find", "trainkit lr-find model=mlp optimizer=sgd"),
        outputs="outputs/lr-find/<date>/<time>/ (lr_find.png, lr_find.csv, TensorBoard)",
    ),
    Command(
        "init-report", "trainkit.init_report:init_report",
        "initializers compared at step 0: activation and gradient std per layer",
        "trainkit init-report [schemes=a,b,...] [overrides]",
        "For one batch at step 0, each layer's activation std and input-gradient std under each "
        "initializer, next to the variance-propagation prediction; a layer whose std halves or "
        "doubles from the previous one is flagged.",
        (("schemes=a,b", "init options to compare (default: default, normal, uniform_fan_in, "
          "xavier_normal, he_normal, orthogonal)"), OVERRIDES),
        ("trainkit init-report model=mlp model.activation=tanh",
         "trainkit init-report schemes=xavier_normal,he_normal model=mlp"),
        outputs="outputs/init-report/<date>/<time>/",
    ),
    Command(
        "learning-curve", "trainkit.learning_curve:learning_curve",
        "one run per training-set size: loss vs size, with a verdict",
        "trainkit learning-curve [sizes=a,b,...] [keep=steps|epochs] [steps=N] [overrides]",
        "Trains once per training-set size, plots final train and val loss against size "
        "(learning_curve.png) and says whether more data would still help.",
        (("sizes=a,b", "counts (> 1) or fractions (<= 1) of the training set "
          "(default 0.05,0.1,0.25,0.5,1.0)"),
         ("keep=steps|epochs", "steps (default): every size trains the same number of optimizer "
          "steps; epochs: trainer.epochs for every size (cheaper; small sizes train less)"),
         ("steps=N", "the steps each size trains (default: those of the largest size)"),
         OVERRIDES),
        ("trainkit learning-curve sizes=1000,4000,16000",
         "trainkit learning-curve model=mlp epochs=3"),
        outputs="outputs/learning-curve/<date>/<time>/",
    ),
    Command(
        "study", "trainkit.cli:study",
        "the course's claims about training, measured (trainkit study list)",
        "trainkit study <name|all|list> [seeds=N] [overrides]",
        "A study is a few ordinary runs that differ in one choice, plus a measurement that "
        "answers the claim: a one-line result, a figure and result.json. Overrides apply to "
        "every run of the study, before its own settings.",
        (("<name>", "one study; `trainkit study list` names them with their claims"),
         ("all", "every study in turn, 3 seeds each (about 45 minutes on 2 cores)"),
         ("list", "the studies and their claims"),
         ("seeds=N", "run every variant with trainer.seed 0..N-1 (default 3): mean ± std"),
         OVERRIDES),
        ("trainkit study list", "trainkit study symmetry",
         "trainkit study dropout data.train_size=0.05 epochs=2"),
        handler=True,
        outputs="outputs/studies/<name>/<date>/<time>/",
    ),
    Command(
        "compare", "trainkit.cli:compare",
        "a sweep's ranked report again, from its folder",
        "trainkit compare <sweep dir> [rank_by=METRIC]",
        "Rebuilds a sweep's report from its jobs' files and rewrites summary.csv, "
        "summary_by_config.csv and comparison.png: for a sweep that ran on a cluster, was "
        "stopped, or had a job resumed since. Ranked by another metric, it only prints.",
        (("<sweep dir>", "a folder under outputs/multirun/ holding the sweep's jobs"),
         ("rank_by=METRIC", "val_acc, val_loss, train_acc or train_loss "
          "(default: the sweep's trainer.monitor)")),
        ("trainkit compare outputs/multirun/2024-05-01/12-00-00",
         "trainkit compare outputs/multirun/2024-05-01/12-00-00 rank_by=val_loss"),
        handler=True,
    ),
)}

HELP_FLAGS = ("--help", "-h")


def wants_help(args: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in args)


def command_help(name: str) -> str:
    """`trainkit <name> --help`: usage, what it does, its own arguments, examples."""
    c = COMMANDS[name]
    width = max(len(spelling) for spelling, _ in c.own) + 2
    lines = [f"usage: {c.usage}", "", *textwrap.wrap(c.about, WIDTH), "", "arguments:"]
    for spelling, meaning in c.own:
        wrapped = textwrap.wrap(meaning, WIDTH - width - 2) or [""]
        lines.append(f"  {spelling:<{width}}{wrapped[0]}")
        lines += [f"  {'':<{width}}{more}" for more in wrapped[1:]]
    lines += ["", "examples:", *(f"  {e}" for e in c.examples)]
    if c.outputs:
        lines += ["", f"writes: {c.outputs}"]
    return "\n".join(lines)


def main_help() -> str:
    """`trainkit --help`: one screen. Every key: `--cfg job`; Hydra's help: `--help --verbose`."""
    lines = [
        "usage: trainkit [group=option ...] [key=value ...]  one run (Fashion-MNIST, CNN, Adam)",
        "       trainkit -m key=a,b [key=c,d ...]            a sweep: one run per combination",
        "       trainkit <command> [arguments] [overrides]   another job on the same config",
        "       trainkit <command> --help                    its arguments and examples",
        "",
        "commands:",
        *(f"  {c.name:<16}{c.summary}" for c in COMMANDS.values()),
        "",
        "config groups (group=option; * the default):",
        *group_lines(),
        "",
        f"aliases: {alias_line()}",
        "every key and its value: trainkit [group=option ...] --cfg job  "
        "(e.g. model=mlp --cfg job)",
        "flags: -m (sweep), --cfg job|hydra|all, --config-dir DIR (your own options), --info,",
        "       --help --verbose (Hydra's help: every key), --hydra-help (Hydra's own flags),",
        "       --shell-completion install=bash (tab completion: "
        'eval "$(trainkit -sc install=bash)")',
    ]
    return "\n".join(lines)


def alias_line() -> str:
    """`lr = optimizer.lr; epochs, batch_size, seed, device = trainer.<name>`."""
    by_node: dict[str, list[str]] = {}
    for short, full in ALIASES.items():
        node, _, leaf = full.rpartition(".")
        by_node.setdefault(f"{node}.<name>" if leaf == short else full, []).append(short)
    return "; ".join(
        f"{', '.join(shorts)} = {full}"
        if len(shorts) > 1
        else f"{shorts[0]} = {full.replace('<name>', shorts[0])}"
        for full, shorts in by_node.items()
    )


def group_lines() -> list[str]:
    """`  optimizer       adam*, adagrad, ...`, wrapped: the groups of conf/ and conf/hydra/."""
    defaults = default_options()
    lines = []
    for group, options in config_groups().items():
        chosen = defaults.get(group)
        ordered = [f"{chosen}*"] * (chosen in options) + [o for o in options if o != chosen]
        text = textwrap.wrap(", ".join(ordered), WIDTH - 18)
        lines.append(f"  {group:<16}{text[0]}")
        lines += [f"  {'':<16}{more}" for more in text[1:]]
    return lines


def default_options() -> dict[str, str]:
    """`group: option` lines of config.yaml's defaults list (read as text: no YAML needed)."""
    text = (CONF_DIR / "config.yaml").read_text()
    return dict(re.findall(r"^\s+-\s+([\w/]+):\s+(\w+)", text, re.MULTILINE))


def did_you_mean(word: str) -> str | None:
    """The error for a first argument that is no command and no key=value but looks like a
    command's name (difflib: `trainkit evalute`) or is a group's option (`trainkit mlp`);
    None for anything else, which Hydra's grammar check then names."""
    if "=" in word or word.startswith(("-", "+", "~")) or word in COMMANDS:
        return None
    close = difflib.get_close_matches(word, list(COMMANDS), n=1, cutoff=0.6)
    if close:
        name = "resume=<run dir>" if close[0] == "resume" else close[0]  # resume is a key
        return f"no command '{word}'; did you mean {name}?"
    options = [f"{group}={word}" for group, names in config_groups().items() if word in names]
    return f"no command '{word}'; did you mean {' or '.join(options)}?" if options else None


def expand_home(args: list[str], own_keys: tuple[str, ...] = ()) -> list[str]:
    """`key=~/data` with the home folder in place of `~`: a shell leaves a `~` after `=` as it
    is, and Hydra cannot read a value that starts with one. In sweep lists too
    (`data.root=~/a,~/b`). An `own_keys` value (ckpt=, resume=) is a plain path, not Hydra's."""
    home = os.path.expanduser("~")
    expanded = []
    for text in args:
        key, sep, value = text.partition("=")
        if not sep or text.startswith("-") or "~" not in value:
            expanded.append(text)
            continue
        if key in own_keys or key == "resume":
            expanded.append(f"{key}={os.path.expanduser(value)}")
            continue
        single = re.fullmatch(r"~(/[^,\[\]'\"]*)?", value)
        if single:  # a path of its own: quoted if Hydra needs it so (a space in $HOME)
            from trainkit.run_dirs import hydra_value

            expanded.append(f"{key}={hydra_value(home + (single.group(1) or ''))}")
            continue
        value = re.sub(r"(?:^|(?<=[,\[]))~(?=/|,|]|$)", lambda _: home, value)
        expanded.append(f"{key}={value}")
    return expanded


def quote_existing_paths(args: list[str], own_keys: tuple[str, ...] = ()) -> list[str]:
    """`key=<a file or folder that exists>` quoted for Hydra when its name holds what Hydra's
    grammar reads otherwise: '=' and ',' in run folders named by their overrides
    (model.from_checkpoint=outputs/2026-12-07/13-05-22_lr=0.01,epochs=3). A value that is no
    existing path, such as a sweep data.root=a,b, is left to Hydra."""
    quoted = []
    for text in args:
        key, sep, value = text.partition("=")
        plain = re.fullmatch(r"[A-Za-z0-9_./\-+@%:~]*", value) is not None
        if not sep or plain or text.startswith("-") or key in own_keys or key == "resume" \
                or value[:1] in ("'", '"') or not os.path.exists(value):
            quoted.append(text)
            continue
        from trainkit.run_dirs import hydra_value

        quoted.append(f"{key}={hydra_value(value)}")
    return quoted
