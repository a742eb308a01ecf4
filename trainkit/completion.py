"""Tab completion (`eval "$(trainkit -sc install=bash)"`): Hydra's own answer, with trainkit's
commands, their arguments and the aliases added, and the internal schema/ group and the
`_target_`-style keys taken out.

Hydra's completion plugins (bash, zsh, fish) stay in charge: the shell's query
(`trainkit -sc query=bash` with COMP_LINE set) goes to Hydra with the line rewritten into what
Hydra understands (aliases expanded, the command word and its own arguments left out), and its
printed suggestions are filtered here.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainkit.commands import COMMANDS
from trainkit.config import ALIASES, shorten_aliases

PATH_ARGS = ("ckpt", "resume")  # own arguments whose value is a file or folder


def answer(overrides: list[str], app: Callable[[], Any]) -> int:
    """Print the suggestions for the shell's COMP_LINE; `app` is Hydra's app, which answers
    `-sc query=<shell>` (sys.argv) itself."""
    shell = next(o for o in overrides if o.startswith("query=")).partition("=")[2]
    line = os.environ.get("COMP_LINE", "")
    words = line.split()[1:]  # the first word is the program: trainkit, or a path to it
    current = "" if not words or line.endswith(" ") else words.pop()
    command = "resume" if any(w.startswith("resume=") for w in words) else ""
    command = words[0] if words and words[0] in COMMANDS else command
    suggestions = own_suggestions(command, words, current)
    if suggestions is None:  # a config key or value: Hydra's answer
        found = hydra_words(app, command, words, current)
        if current.partition("=")[0] in ALIASES:  # lr=: Hydra answered for optimizer.lr=
            found = [shorten_aliases(word) for word in found]
        suggestions = trainkit_words(command, words, current) + found
    print(("\n" if shell == "fish" else " ").join(sorted(set(suggestions))))
    return 0


def own_suggestions(command: str, words: list[str], current: str) -> list[str] | None:
    """Values of a command's own arguments (ckpt=<path>, split=test|val, a study's name);
    None where Hydra answers."""
    key, sep, value = current.partition("=")
    if sep and key in PATH_ARGS:
        return [f"{key}={path}" for path in paths(value)]
    if sep and command and key in COMMANDS[command].own_keys:
        spellings = dict(s.partition("=")[::2] for s, _ in COMMANDS[command].own)
        choices = spellings[key].split("|")  # split=test|val; sizes=a,b: no choices
        return [f"{key}={c}" for c in choices if len(choices) > 1 and c.startswith(value)]
    if command == "study" and len(words) == 1:
        return [n for n in ["list", "all", *study_names()] if n.startswith(current)]
    if command == "compare":  # the sweep's folder (none offered: the shell completes file
        # names), then rank_by=; no config overrides
        return [w for w in ["rank_by="] if w.startswith(current) and len(words) > 1]
    return None


def trainkit_words(command: str, words: list[str], current: str) -> list[str]:
    """The commands (as the first word), a command's own arguments and the aliases."""
    if "=" in current or current.startswith(("+", "~", "-")):
        return []
    found = [f"{alias}=" for alias in ALIASES]
    if command:
        found += [f"{key}=" for key in COMMANDS[command].own_keys]
    elif not words:
        found += [*(name for name in COMMANDS if name != "resume"), "resume="]
    return [word for word in found if word.startswith(current)]


def hydra_words(app: Callable[[], Any], command: str, words: list[str], current: str) -> list[str]:
    """What Hydra suggests for the line (aliases expanded, the command's own words left out),
    less the schema/ group and the _target_-style keys."""
    own = (*COMMANDS[command].own_keys, "resume") if command else ()
    given = [expand(w) for w in words[1 if command and command != "resume" else 0 :]]
    given = [w for w in given if w.partition("=")[0] not in own]
    os.environ["COMP_LINE"] = " ".join(["trainkit", *given, expand(current)])
    if not current:
        os.environ["COMP_LINE"] += " "
    os.environ["COMP_POINT"] = str(len(os.environ["COMP_LINE"]))
    printed = io.StringIO()
    # A line Hydra cannot read gets no suggestions, not an error message in the middle of it
    with (
        contextlib.redirect_stdout(printed),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.suppress(Exception, SystemExit),
    ):
        app()
    return [word for word in printed.getvalue().split() if not hidden(word)]


def hidden(word: str) -> bool:
    """trainkit's schema/ group (the YAML files' typed base) and keys such as _target_ are
    internals: a user sets neither."""
    parts = re.split(r"[./]", word.lstrip("+~").partition("=")[0])
    return parts[0] == "schema" or any(re.fullmatch(r"_\w+_", part) for part in parts)


def expand(word: str) -> str:
    key, sep, value = word.partition("=")
    return f"{ALIASES[key]}={value}" if sep and key in ALIASES else word


def paths(prefix: str) -> list[str]:
    """Files and folders that start with `prefix`, folders with a / (the shell goes on)."""
    return [p + "/" if os.path.isdir(p) else p for p in glob.glob(glob.escape(prefix) + "*")]


def study_names() -> list[str]:
    """The keys of studies.STUDIES, read from its source: importing studies loads torch, too
    slow for a tab press."""
    tree = ast.parse((Path(__file__).parent / "studies.py").read_text())
    for node in tree.body:
        target = getattr(node, "target", None)
        if getattr(target, "id", "") == "STUDIES" and isinstance(node.value, ast.Dict):
            return [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    return []
