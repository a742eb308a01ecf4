"""`trainkit [overrides]`: the console script.

Before Hydra starts a run, every composition the command line asks for (each job of a sweep)
is composed and validated here, so bad input costs no run directory and gets one line per
problem on stderr, exit code 2, and no traceback. Then Hydra's own app runs as usual, so
`-m`, `--cfg`, `--help`, launchers and sweepers all behave as Hydra documents.
"""

from __future__ import annotations

import difflib
import itertools
import re
import sys
from pathlib import Path

import hydra
import hydra._internal.utils
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from trainkit import data, runtime
from trainkit.config import CONF_DIR, apply_aliases, register_schemas, validate
from trainkit.errors import UserError

MAX_PREFLIGHT_JOBS = 64  # larger sweeps are checked value by value instead of job by job


def main() -> None:
    register_schemas()
    args = hydra._internal.utils.get_args_parser().parse_args()
    if not (args.help or args.hydra_help or args.info or args.shell_completion):
        errors = preflight(args.overrides, args.multirun)
        if errors:
            for line in errors:
                print(f"trainkit: error: {line}", file=sys.stderr)
            sys.exit(2)
    hydra_app()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> float:
    """One job; returns the monitored metric for Hydra's sweepers."""
    from trainkit.experiment import run  # torch and friends load only when a run starts

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        apply_aliases(cfg)
        errors = validate(cfg)
        if errors:
            raise UserError("; ".join(errors))
        summary = run(cfg, run_dir)
    except UserError as e:
        print(f"trainkit: error: {e}", file=sys.stderr)
        sys.exit(2)
    return summary["best"][cfg.trainer.monitor]


# ---------------------------------------------------------------- pre-flight validation


def preflight(overrides: list[str], multirun: bool) -> list[str]:
    """Compose and validate every job the overrides describe; all the problems, one line each."""
    app_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(app_overrides)
        jobs = expand_sweeps(app_overrides)
    except Exception as e:  # the override syntax itself is wrong
        return [first_line(e)]
    sweeps = [text for o, text in zip(parsed, app_overrides, strict=True) if o.is_sweep_override()]
    if sweeps and not multirun:
        return [f"{sweeps[0]} lists several values: add -m to sweep them (trainkit -m ...)"]
    errors: list[str] = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for job in jobs:
            for line in check_job(job):
                if line not in errors:
                    errors.append(line)
    GlobalHydra.instance().clear()
    return errors


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of choice/range sweeps (`lr=0.1,0.01`); other sweeps (intervals
    for optimizers such as Optuna) are left to the job, which validates itself again."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    options: list[list[str]] = []
    for override, text in zip(parsed, overrides, strict=True):
        if not override.is_sweep_override():
            options.append([text])
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # an interval sweep: no finite list of values
            continue
        key = override.get_key_element()
        options.append([f"{key}={v}" for v in values])
    jobs = [list(job) for job in itertools.product(*options)]
    if len(jobs) <= MAX_PREFLIGHT_JOBS:
        return jobs
    # Too many to compose: vary one override at a time, the others at their first value.
    first = [opts[0] for opts in options]
    return [first[:i] + [v] + first[i + 1 :] for i, opts in enumerate(options) for v in opts]


def check_job(overrides: list[str]) -> list[str]:
    try:
        cfg = compose("config", overrides=overrides)
    except MissingConfigException as e:
        return [unknown_option_message(e, overrides)]
    except ConfigCompositionException as e:
        return [composition_message(e, overrides)]
    except Exception as e:
        return [first_line(e)]
    apply_aliases(cfg)
    errors = validate(cfg)
    if errors:
        return errors
    try:
        runtime.pick_device(cfg.trainer.device)
        if not cfg.data.download and data.locate(cfg.data) is None:
            errors.append(data.missing_message(cfg.data))
    except UserError as e:
        errors.append(str(e))
    return errors


def unknown_option_message(e: MissingConfigException, overrides: list[str]) -> str:
    match = re.search(r"Could not find '([^']+)'", str(e))
    if match and e.options:
        group, _, name = match.group(1).rpartition("/")
        return f"{group}={name}: no such option; choose one of {', '.join(e.options)}"
    return first_line(e)


def composition_message(e: ConfigCompositionException, overrides: list[str]) -> str:
    match = re.search(r"Could not override '([^']+)'", str(e))
    if match:  # a key that no schema declares
        key = match.group(1)
        hint = ""
        close = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.8)
        if close:
            hint = f"did you mean {close[0]}? "
        return f"{key}: no such config key; {hint}(`trainkit --cfg job` lists them all)"
    match = re.search(r"Error merging override (\S+)", str(e))
    if match and e.__cause__ is not None:  # a value of the wrong type
        reason = first_line(e.__cause__)
        return f"{match.group(1)}: {reason[0].lower()}{reason[1:]}"
    return first_line(e)


def known_keys() -> list[str]:
    """Every dotted key of the default config, for 'did you mean' hints."""
    cfg = compose("config")
    flat = OmegaConf.to_container(cfg)

    def walk(node: object, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [k for key, v in node.items() for k in walk(v, f"{prefix}{key}.")]
        return [prefix.rstrip(".")]

    return walk(flat, "")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
