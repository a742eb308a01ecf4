"""`trainkit [overrides]`: the console script.

Before Hydra starts a run, every composition the command line asks for (each job of a sweep)
is composed, validated and dry-built here, so bad input costs no run directory and gets one
line per problem on stderr, exit code 2, and no traceback. Then Hydra's own app runs as usual,
so `-m`, `--cfg`, `--help`, launchers and sweepers all behave as Hydra documents.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import importlib
import itertools
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import hydra._internal.utils
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainkit import run_dirs
from trainkit.commands import (
    COMMANDS,
    command_help,
    did_you_mean,
    expand_home,
    main_help,
    quote_existing_paths,
    wants_help,
)
from trainkit.config import (
    CONF_DIR,
    alias_conflicts,
    compose_config,
    expand_aliases,
    register_schemas,
    shorten_aliases,
    validate,
)
from trainkit.errors import Interrupted, SweepInterrupted, UserError, first_line, report
from trainkit.files import user_error
from trainkit.metrics import METRICS, metric
from trainkit.summary import Summary
from trainkit.sweep import FAILED_JOBS, record_failure

log = logging.getLogger("trainkit")  # Hydra routes it to the job's log file
MAX_PREFLIGHT_JOBS = 64  # larger sweeps are checked value by value instead of job by job

# At import, not in main(): processes that only import this module to run a job (joblib and
# submitit workers) need the schemas and resolvers too.
register_schemas()



def main() -> None:
    try:
        dispatch()
    except SweepInterrupted as e:
        sys.exit(stop_sweep(e))
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print("trainkit: stopped at once; checkpoints already written are intact "
              "(trainkit resume=<run dir> goes on from the last one)", file=sys.stderr)
        sys.exit(130)
    except UserError as e:  # one raised outside a job: Hydra's own files, a sweep's report
        report("trainkit", e)
        sys.exit(2)
    except BrokenPipeError:  # the reader left early: trainkit --help --verbose | head
        sys.exit(0)
    except OSError as e:  # Hydra writing .hydra/ on a full disk, say
        error = user_error(e, run_dirs.claimed[-1] if run_dirs.claimed else Path("outputs"))
        if error is None:
            raise
        report("trainkit", error)
        sys.exit(2)
    finally:
        run_dirs.release()
        if under_torchrun():
            from trainkit import distributed

            distributed.shutdown()


def entry() -> None:
    """The `trainkit` command and `python -m trainkit`: main(), then the process ends without the
    interpreter's teardown, once the exit handlers have run and every stream and log is flushed.
    Tearing this torch build down is slow and raises the peak memory. Errors that main() turns
    into an exit status end the same way; an exception it lets through, threads still running
    (the parallel launcher's), or a profiler, tracer or coverage tool watching get Python's
    usual exit."""
    try:
        main()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit("message"): printed to stderr, status 1
            print(e.code, file=sys.stderr)
            code = 1
    others_running = any(
        not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
    )
    if others_running or sys.gettrace() or sys.getprofile():  # they finish at a normal exit
        sys.exit(code)
    atexit._run_exitfuncs()  # noqa: SLF001 (what a normal exit runs, bar the teardown)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a closed pipe (trainkit ... | head): no reader left
            stream.flush()
    os._exit(code)


def stop_sweep(e: SweepInterrupted) -> int:
    """A signal stopped a sweep: report the jobs that ran, say how to go on, exit 128+signal."""
    from trainkit import sweep

    folder = Path(e.sweep_dir)
    jobs = sweep.read_jobs(folder)
    if jobs:
        report = sweep.build_report(folder, jobs[0].monitor)
        sweep.print_report(report, sweep.write(report))
    print(f"trainkit: {e}; the sweep stopped after {len(jobs)} job(s) and its later jobs did "
          "not start: run the sweep again for them", file=sys.stderr)
    return 128 + e.signum


def dispatch() -> None:
    args = config_dirs_to_search_path(sys.argv[1:])
    command = command_named(args)
    if wants_help(args):
        if command or "--verbose" not in args:  # --help --verbose: Hydra's, with every key
            with contextlib.suppress(BrokenPipeError):  # trainkit --help | head
                print(command_help(command) if command else main_help(), flush=True)
            sys.exit(0)
        args.remove("--verbose")
    prefix = f"trainkit {command}" if command and command != "resume" else "trainkit"
    if under_torchrun() and command and command != "resume":
        sys.exit(refuse(prefix, [f"`trainkit {command}` does not run under torchrun: run it as a "
                                 "plain command (torchrun is for one training run)"]))
    if command == "resume" and args[0] == "resume":
        sys.exit(refuse(prefix, ["resume takes the run as resume=<run dir>: "
                                 "trainkit resume=outputs/<date>/<time>"]))
    if args and (typo := did_you_mean(args[0])):
        sys.exit(refuse(prefix, [typo]))
    own = COMMANDS[command].own_keys if command else ()
    args = quote_existing_paths(expand_home(args, own), own)
    given = args[1:] if command and command != "resume" else args
    if conflicts := alias_conflicts(given):
        sys.exit(refuse(prefix, conflicts))
    if command in ("", "resume") and (unknown := unknown_flag_message(args)):
        sys.exit(refuse(prefix, [unknown]))
    if command == "resume":
        sys.exit(resume(expand_aliases(args)))
    if command:
        if COMMANDS[command].handler:
            sys.exit(load(COMMANDS[command].target)(expand_aliases(given)))
        sys.exit(run_subcommand(command, expand_aliases(given)))
    sys.argv[1:] = expand_aliases(args)
    train()


def unknown_flag_message(args: list[str]) -> str | None:
    """`--epochs 3`: trainkit's settings are overrides (key=value), and its flags Hydra's; an
    unknown flag is one line saying how to write it, not argparse's usage block."""
    flags = hydra._internal.utils.get_args_parser()._option_string_actions
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if not arg.startswith("-") or name in flags:
            continue
        key = name.lstrip("-")
        following = args[i + 1] if i + 1 < len(args) else ""
        value = value or (following if following and "=" not in following
                          and not following.startswith("-") else "<value>")  # fmt: skip
        return (f"{arg}: not an option; trainkit's settings are overrides, written key=value: "
                f"{key}={value}")
    return None


def command_named(args: list[str]) -> str:
    """The subcommand the arguments ask for ("" for a run): the first argument, or the one
    after --help/-h (`trainkit --help evaluate`); "resume" for `resume=<run dir>`."""
    if any(arg.startswith("resume=") for arg in args):
        return "resume"
    words = [arg for arg in args[:2] if arg not in ("--help", "-h")]
    return words[0] if words and words[0] in COMMANDS else ""


def refuse(prefix: str, errors: list[str]) -> int:
    """One line per problem (under torchrun: once, not per rank); exit status 2."""
    for line in errors if is_rank_zero() else []:
        print(f"{prefix}: error: {line}", file=sys.stderr)
    return 2


def load(target: str) -> Callable[..., Any]:
    """A command table's "module:function" target, imported when it runs (torch loads then)."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def train() -> None:
    """`trainkit [overrides]` (sys.argv): the pre-flight check, then Hydra's app."""
    args = hydra._internal.utils.get_args_parser().parse_args()
    if args.shell_completion and any(o.startswith("query=") for o in args.overrides):
        from trainkit import completion

        sys.exit(completion.answer(args.overrides, hydra_app))
    if not (args.help or args.hydra_help or args.info or args.shell_completion):
        errors = preflight(args.overrides, args.multirun)
        if under_torchrun():
            errors += join_torchrun(args.multirun)
        if errors:
            sys.exit(refuse("trainkit", errors))
        if is_rank_zero() and not args.cfg:  # --cfg prints; under torchrun, the others write
            # into throwaway folders (join_torchrun)
            sys.argv += claim_outputs(args.overrides, args.multirun)
    # What goes wrong outside trainkit's code (Hydra writing .hydra/ on a full disk) reaches
    # main() as an exception, for one line, instead of Hydra's printed traceback.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    logging.raiseExceptions = False  # a log line lost to a full disk: no traceback for it
    hydra_app()
    if FAILED_JOBS:  # the sweep finished the other jobs; its exit code still says some failed
        sys.exit(1)


def config_dirs_to_search_path(args: list[str]) -> list[str]:
    """`--config-dir DIR` (`-cd DIR`) as Hydra's `hydra.searchpath=[file://DIR]`: the same
    search path for the pre-flight check, the subcommands and the run. A user's config dir
    adds options to trainkit's groups (DIR/model/my_net.yaml: model=my_net)."""
    dirs, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(args[i + 1])
            i += 2
            continue
        if arg.startswith("--config-dir="):
            dirs.append(arg.partition("=")[2])
        else:
            rest.append(arg)
        i += 1
    if not dirs:
        return args
    paths = [run_dirs.hydra_value(f"file://{Path(d).expanduser().resolve()}") for d in dirs]
    given = [a for a in rest if a.startswith("hydra.searchpath=")]
    if given:  # one list: Hydra takes the last value of a key
        rest.remove(given[-1])
        listed = given[-1].partition("=")[2].strip().strip("[]")
        paths += [p.strip() for p in listed.split(",") if p.strip()]
    return [*rest, f"hydra.searchpath=[{','.join(paths)}]"]


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_rank_zero() -> bool:
    """Rank 0 of torchrun's processes, or the only process: the one that speaks."""
    return os.environ.get("RANK", "0") == "0"


def join_torchrun(multirun: bool) -> list[str]:
    """One run across torchrun's processes (distributed.py): rank 0 writes the run dir; the
    others get a throwaway one for Hydra's own files, and a silent console."""
    if multirun:
        return ["-m sweeps do not run under torchrun: launch one torchrun per job "
                "(or sweep with hydra/launcher=submitit_slurm)"]
    if not is_rank_zero():
        import atexit
        import shutil
        import tempfile

        from trainkit import console

        scratch = tempfile.mkdtemp(prefix=f"trainkit-rank{os.environ['RANK']}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={run_dirs.hydra_value(Path(scratch))}",
                     "hydra.output_subdir=null"]
        console.console.quiet = True
    return []


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> float:
    """One job; returns its best trainer.monitor value, the number Hydra's sweepers optimize.

    In a sweep a job that fails is recorded as failed (sweep.record_failure) and the sweep goes
    on; a single run ends with the error's one line and exit code 2.
    """
    from trainkit import runtime  # torch loads only when it is needed

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        errors = validate(cfg)  # again: a sweeper (Optuna) may have chosen the values
        if errors:
            raise UserError("; ".join(errors))
        if in_sweep and cfg.trainer.threads is None:
            cfg.trainer.threads = runtime.threads_per_job(hydra_cfg.launcher)
        summary = run_job(cfg, run_dir, in_sweep)
    except Interrupted as e:  # last.pt and summary.json say where it stopped
        log.info("%s", e)
        if in_sweep:  # the rest of the sweep stops too (main.stop_sweep)
            raise SweepInterrupted(e.signum, str(e), hydra_cfg.sweep.dir) from None
        if is_rank_zero():  # under torchrun, rank 0 says where it stopped and how to go on
            print(f"trainkit: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except UserError as e:
        log.error("%s", e)
        if not in_sweep:
            report("trainkit", e)
            sys.exit(2)
        return record_failure(run_dir, str(e), job_label(hydra_cfg), cfg.trainer.monitor)
    except Exception as e:
        if not in_sweep:
            raise
        log.exception("job failed")  # the traceback goes to the job's trainkit.log
        reason = f"{type(e).__name__}: {first_line(e)} (traceback in {run_dir}/trainkit.log)"
        return record_failure(run_dir, reason, job_label(hydra_cfg), cfg.trainer.monitor)
    return summary.best[cfg.trainer.monitor]


def run_job(cfg: DictConfig, run_dir: Path, in_sweep: bool) -> Summary:
    """A single run's folder is locked already (claim_outputs); a sweep job locks its own
    while it runs, so that no `resume=` of it can start meanwhile."""
    if not in_sweep:
        return run_writing(cfg, run_dir)
    if not run_dirs.lock(run_dir):
        raise UserError(f"{run_dir} is in use by another trainkit process")
    try:
        return run_writing(cfg, run_dir)
    finally:
        run_dirs.release_one(run_dir)


def run_writing(cfg: DictConfig, run_dir: Path, resume: dict | None = None) -> Summary:
    """experiment.run, with a full disk or an unwritable file as one UserError line."""
    from trainkit.experiment import run

    try:
        return run(cfg, run_dir, resume=resume)
    except OSError as e:
        error = user_error(e, run_dir)
        if error is None:
            raise
        raise error from None


def job_label(hydra_cfg: DictConfig) -> str:
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("data.root=")]
    return f"#{hydra_cfg.job.num} ({shorten_aliases(','.join(overrides))})"


PATH_ARGS = ("ckpt",)


def run_subcommand(name: str, args: list[str]) -> int:
    """A job of the command table on the composed config, into outputs/<name>/<date>/<time>/
    (or hydra.run.dir=).
    Its own arguments (commands.py) reach the function as lists: sizes=a,b -> ["a", "b"]."""
    own = COMMANDS[name].own_keys
    kwargs = {  # a list, but a path is one value: run folders' names hold commas
        key: [value] if key in PATH_ARGS else value.split(",")
        for key, _, value in (a.partition("=") for a in args)
        if key in own
    }
    overrides = [a for a in args if a.partition("=")[0] not in own]
    # evaluate reads its data settings from the checkpoint, not from these overrides
    errors = preflight(overrides, multirun=False, check_data=name != "evaluate")
    for line in errors:
        print(f"trainkit {name}: error: {line}", file=sys.stderr)
    if errors:
        return 2
    cfg = compose_config(overrides)
    GlobalHydra.instance().clear()
    # hydra.run.dir= names the job's folder, as for a run; locked like one (run_dirs.py)
    named = [o.partition("=")[2] for o in overrides if o.startswith("hydra.run.dir=")]
    default = Path("outputs") / name / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    try:
        out_dir = run_dirs.claim(Path(named[-1]) if named else default, named=bool(named))
    except UserError as e:
        report(f"trainkit {name}", e)
        return 2
    try:
        load(COMMANDS[name].target)(cfg, out_dir, **kwargs)
    except UserError as e:
        if not named:  # a folder the user named stays, as it was
            run_dirs.give_back(out_dir, root=Path("outputs"))
        report(f"trainkit {name}", e)
        return 2
    return 0


def resume(args: list[str]) -> int:
    """`trainkit resume=<run dir or checkpoint> [data.root=...] [device=...]` (resume.py)."""
    from trainkit import resume as resuming

    targets = [a.partition("=")[2] for a in args if a.startswith("resume=")]
    others = [a for a in args if not a.startswith("resume=")]
    try:
        if len(targets) != 1 or any(a.startswith("-") for a in others):
            raise UserError("resume one run at a time: trainkit resume=outputs/<date>/<time>")
        cfg, run_dir, saved = resuming.load(targets[0], others)
        if is_rank_zero() and not run_dirs.lock(run_dir):  # before a line goes into its log
            raise UserError(f"{run_dir} is in use by another trainkit process: wait for it to end")
        if is_rank_zero():  # under torchrun, the others stay quiet
            resuming.log_to_run_dir(run_dir)
            log.info("resumed from %s at epoch %d, step %d; later lines continue from there",
                     targets[0], saved["epoch"], saved["step"])
        else:
            from trainkit import console

            console.console.quiet = True
        run_writing(cfg, run_dir, resume=saved)
    except UserError as e:
        report("trainkit", e)
        return 2
    except Interrupted as e:
        if is_rank_zero():
            print(f"trainkit: {e}", file=sys.stderr)
        return 128 + e.signum
    return 0


def study(args: list[str]) -> int:
    """`trainkit study <name|all|list> [overrides]` (studies.py)."""
    from trainkit import studies

    if not args or args[0] == "list":
        for name, spec in studies.STUDIES.items():
            print(f"{name:16} {spec.claim}")
        if not args:
            print("trainkit study: error: name a study (above), or all", file=sys.stderr)
        return 0 if args else 2
    try:
        _, overrides = studies.split_seeds(args[1:])  # seeds=N is the study's own
    except UserError as e:
        report("trainkit study", e)
        return 2
    errors = preflight(overrides, multirun=False)
    for line in errors:
        print(f"trainkit study: error: {line}", file=sys.stderr)
    if errors:
        return 2
    try:
        studies.run_studies(args[0], args[1:])
    except UserError as e:
        report("trainkit study", e)
        return 2
    except Interrupted as e:  # the variant in flight saved last.pt; the study has no result
        message = (f"{e} (that variant alone); the study stopped before its figure and result: "
                   f"run `trainkit study {args[0]}` again for them")
        print(f"trainkit study: {message}", file=sys.stderr)
        return 128 + e.signum
    return 0


def compare(args: list[str]) -> int:
    """`trainkit compare <sweep dir> [rank_by=<metric>]`: the end-of-sweep report again, e.g.
    for a sweep that ran on a cluster, was stopped, or had a job resumed since. It rewrites the
    sweep's report files; ranked by another metric than the sweep's own, it only prints."""
    from trainkit import sweep

    folders = [a for a in args if "=" not in a]
    settings = dict(a.partition("=")[::2] for a in args if "=" in a)
    jobs = sweep.read_jobs(Path(folders[0])) if len(folders) == 1 else []
    monitor = jobs[0].monitor if jobs else ""
    metric = settings.get("rank_by", monitor)
    error = None
    if unknown := [key for key in settings if key != "rank_by"]:
        error = f"{unknown[0]}=: compare takes a sweep dir and rank_by=<metric> only"
    elif len(folders) != 1:
        error = "name one sweep dir: trainkit compare outputs/multirun/<date>/<time>"
    elif not jobs:
        error = (f"{folders[0]} holds no sweep jobs (folders with .hydra/overrides.yaml): "
                 "name a dir under outputs/multirun/")
    elif metric not in RANKABLE:
        error = f"rank_by={metric}: choose one of {', '.join(RANKABLE)}"
    if error:
        print(f"trainkit compare: error: {error}", file=sys.stderr)
        return 2
    report = sweep.build_report(Path(folders[0]), metric)
    written = sweep.write(report) if metric == monitor else []
    sweep.print_report(report, written)
    damaged = [job.reason for job in jobs if job.summary and job.summary.damaged]
    if damaged:  # the folder is data: the report goes on, and says what it could not read
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        print(f"trainkit compare: error: {damaged[0]}: that job is reported as failed{more}",
              file=sys.stderr)
        return 2
    return 1 if report.failed else 0


# ---------------------------------------------------------------- pre-flight validation


def preflight(overrides: list[str], multirun: bool, check_data: bool = True) -> list[str]:
    """Compose and validate every job the overrides describe; all the problems, one line each.
    `check_data`: read and check the dataset files each job would train on (data.check)."""
    app_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    search = [o for o in overrides if o.startswith("hydra.searchpath=")]  # the user's configs
    parser = OverridesParser.create()
    for text in app_overrides:
        try:
            parser.parse_overrides([text])
        except Exception:  # Hydra's grammar errors name the lexer, not the fix
            return [
                f"cannot read the override '{shorten_aliases(text)}': write key=value, e.g. lr=0.01"
            ]
    parsed = parser.parse_overrides(app_overrides)
    sweeps = [text for o, text in zip(parsed, app_overrides, strict=True) if o.is_sweep_override()]
    if sweeps and not multirun:
        sweep = shorten_aliases(sweeps[0])
        return [f"{sweep} lists several values: add -m to sweep them (trainkit -m ...)"]

    errors: list[str] = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for job in expand_sweeps(app_overrides):
            for line in check_job([*search, *job], check_data):
                if line not in errors:
                    errors.append(line)
        if not errors:
            fixed = [text for o, text in zip(parser.parse_overrides(overrides), overrides,
                                             strict=True) if not o.is_sweep_override()]
            errors += check_hydra_settings(fixed, multirun)
    GlobalHydra.instance().clear()
    return errors


# The config with Hydra's settings, as check_hydra_settings composed it for these overrides:
# claim_outputs reads the same one (a compose is a noticeable part of every start-up).
WITH_HYDRA: dict[tuple[str, ...], DictConfig] = {}


def check_hydra_settings(overrides: list[str], multirun: bool) -> list[str]:
    """The output folder can be written, and a sweeper optimizes the right way."""
    try:
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        WITH_HYDRA[tuple(overrides)] = cfg
    except MissingConfigException as e:  # hydra/launcher=..., hydra/sweeper=...
        return [unknown_option_message(e)]
    except ConfigCompositionException as e:  # a key the chosen sweeper or launcher lacks
        return [composition_message(e, overrides)]
    except Exception as e:
        return [first_line(e)]
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    problem = unwritable(Path(str(OmegaConf.select(cfg, key))))
    if problem:
        return [f"cannot write the run's outputs: {problem}; choose another folder with "
                f"{key}=<folder> (or run from a folder you can write)"]
    rank_by = OmegaConf.select(cfg, "hydra.callbacks.sweep_summary.rank_by")
    if rank_by is not None and rank_by not in RANKABLE:
        return [f"hydra.callbacks.sweep_summary.rank_by={rank_by}: choose one of "
                f"{', '.join(RANKABLE)}"]
    return check_launcher(cfg) + check_sweeper(cfg) if multirun else []


def claim_outputs(overrides: list[str], multirun: bool) -> list[str]:
    """Lock the run's folder (a sweep's: the sweep's) before Hydra writes into it, and return
    the overrides that pin it (run_dirs.py). Sweep jobs whose folder names would collide (a
    swept key left out of the names, such as data.root, or one job listed twice) or be too
    long for the file system are named by their job number instead."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [text for o, text in zip(parsed, overrides, strict=True) if not o.is_sweep_override()]
    cfg = WITH_HYDRA.pop(tuple(fixed), None)
    if cfg is None:  # not checked in this process
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=fixed, return_hydra_config=True)
        GlobalHydra.instance().clear()
    named = any(o.startswith(f"{key}=") for o in overrides)
    overwrite = bool(cfg.trainer.overwrite) and not multirun
    folder = run_dirs.claim(Path(str(OmegaConf.select(cfg, key))), named, overwrite, key)
    pins = [f"{key}={run_dirs.hydra_value(folder)}"]
    if multirun:
        pins.append(shared_keys_left_out(overrides, cfg))
        if not job_folders_distinct(overrides, cfg):
            pins.append("hydra.sweep.subdir=${hydra.job.num}")
    return pins


def shared_keys_left_out(overrides: list[str], cfg: DictConfig) -> str:
    """The override that leaves out of job folder names every key whose value all jobs
    share: lr=0.1,0.01 epochs=3 names its jobs lr=0.1 and lr=0.01."""
    app = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    parsed = OverridesParser.create().parse_overrides(app)
    shared = [o.key_or_group for o in parsed if not o.is_sweep_override()]
    excluded = list(dict.fromkeys([*cfg.hydra.job.config.override_dirname.exclude_keys, *shared]))
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]"


def job_folders_distinct(overrides: list[str], cfg: DictConfig) -> bool:
    """Each job of the sweep gets a folder of its own under names from its overrides: no
    swept key is left out of the names (data.root is), no value is listed twice, and the
    longest name fits a file system's 255 bytes."""
    app = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    parser = OverridesParser.create()
    longest = []
    for override in parser.parse_overrides(app):
        if not override.is_sweep_override():  # shared by all jobs: not in the names
            continue
        key = override.get_key_element()
        if key in excluded:
            return False
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # an interval (Optuna): each trial draws its own value
            continue
        if len(set(values)) < len(values):
            return False
        longest.append(f"{key}={max(values, key=len)}")
    return len(shorten_aliases(",".join(longest)).encode()) <= 255


def check_launcher(cfg: DictConfig) -> list[str]:
    n_jobs = cfg.hydra.launcher.get("n_jobs")
    if isinstance(n_jobs, int) and n_jobs == 0:  # joblib: -1 is one job per core, -2 all but one
        return ["hydra.launcher.n_jobs=0: choose how many jobs run at once (e.g. 4), or -1 for "
                "one per core"]
    return []


RANKABLE = tuple(METRICS)  # a sweep's table ranks by one


def unwritable(folder: Path) -> str | None:
    """Why outputs cannot go into `folder` (made on demand), or None if they can."""
    existing = folder
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as e:  # a name longer than the file system takes
        return f"{str(folder)[:80]}...: {e.strerror}"
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_sweeper(cfg: DictConfig) -> list[str]:
    """An Optuna study must optimize in the direction in which trainer.monitor improves: each
    trial returns its best trainer.monitor value."""
    sweeper = cfg.hydra.sweeper
    for key in ("n_trials", "n_jobs"):  # Optuna: trials in all, trials per batch
        value = sweeper.get(key)
        if isinstance(value, int) and value < 1:
            return [f"hydra.sweeper.{key}={value}: choose 1 or more"]
    direction = sweeper.get("direction")
    direction = getattr(direction, "name", direction)  # Optuna's schema holds an Enum
    if "optuna" not in str(sweeper.get("_target_", "")).lower() or not isinstance(direction, str):
        return []
    monitor = cfg.trainer.monitor
    wanted = metric(monitor).direction
    if direction != wanted:
        return [f"hydra.sweeper.direction={direction}, but each trial returns its best {monitor} "
                f"(higher is better for accuracy, lower for loss): use "
                f"hydra.sweeper.direction={wanted}"]
    return []


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


def check_job(overrides: list[str], check_data: bool = True) -> list[str]:
    from trainkit import data, experiment, runtime  # these load torch: not for --help

    for text in overrides:
        if text.startswith("+") and not (CONF_DIR / text[1:].partition("=")[0]).is_dir():
            key = text[1:].partition("=")[0]
            return [f"{text}: trainkit declares every key and {key} is not one; "
                    "`trainkit --cfg job` lists them all"]
    try:
        cfg = compose("config", overrides=overrides)
    except MissingConfigException as e:
        return [unknown_option_message(e)]
    except ConfigCompositionException as e:
        return [composition_message(e, overrides)]
    except Exception as e:
        return [first_line(e)]
    errors = validate(cfg)
    if errors:
        return errors
    try:
        runtime.pick_device(cfg.trainer.device)
        experiment.dry_build(cfg)
        if check_data:  # damaged files are found here, before a run folder exists
            errors += batch_checks(cfg.trainer.batch_size, data.check(cfg.data))
    except UserError as e:
        errors.append(str(e))
    return errors


def batch_checks(batch_size: int, train_count: int) -> list[str]:
    """A batch is drawn from the training split: one larger than it would hold the whole split
    (and its activations) at once, which the CPU's memory may not survive."""
    if batch_size <= train_count:
        return []
    return [f"batch_size={batch_size}: more than the {train_count:,} training images: choose "
            f"at most {train_count:,}, e.g. batch_size=128"]


def unknown_option_message(e: MissingConfigException) -> str:
    match = re.search(r"Could not find '([^']+)'", str(e))
    if match and e.options:
        group, _, name = match.group(1).rpartition("/")
        return f"{group}={name}: no such option; choose one of {', '.join(e.options)}"
    return first_line(e)


def composition_message(e: ConfigCompositionException, overrides: list[str]) -> str:
    match = re.search(r"Could not override '([^']+)'", str(e))
    if match:  # a key that no schema declares
        return unknown_key_message(match.group(1), overrides)
    match = re.search(r"Error merging override (\S+)", str(e))
    if match and e.__cause__ is not None:  # a value of the wrong type
        return wrong_type_message(shorten_aliases(match.group(1)), first_line(e.__cause__))
    match = re.search(r"In 'experiment/([^']+)': ConfigKeyError.*full_key: (\S+)", str(e),
                      re.DOTALL)
    if match:  # a preset sets a key that the option chosen beside it does not have
        preset, key = match.groups()
        preset = next((o for o in overrides if o.startswith("experiment=")), preset)
        group = key.partition(".")[0]
        chosen = next((o for o in overrides if o.startswith(f"{group}=")), group)
        return (f"{preset} sets {key}, which {chosen} does not have: drop {chosen} (the "
                "preset picks its own) or choose another experiment")
    return first_line(e)


# What a key of each schema type takes, by the words OmegaConf's error names the type with.
WANTED = {"Float": "a number, e.g. {key}=0.01", "Integer": "a whole number, e.g. {key}=10",
          "bool": "true or false"}


def wrong_type_message(override: str, reason: str) -> str:
    """`lr=abc`: say what the key takes, not OmegaConf's "value 'abc' of type 'str' could not
    be converted to Float" (or "... is not a valid bool")."""
    wanted = re.search(r"could not be converted to (\w+)|is not a valid (bool)", reason)
    kind = wanted and (wanted.group(1) or wanted.group(2))
    if kind not in WANTED:
        return f"{override}: {reason[0].lower()}{reason[1:]}"
    key = override.partition("=")[0]
    return f"{override}: {key} takes {WANTED[kind].format(key=key)}"


def unknown_key_message(key: str, overrides: list[str]) -> str:
    """Name the closest key or group, or list the keys of the node the typo is in."""
    others = [o for o in overrides if not o.startswith(f"{key}=")]
    cfg = compose("config", overrides=others, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else None
    if isinstance(node, DictConfig):
        keys = [str(k) for k in node if not str(k).startswith("_")]
        close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.75)
        if close:
            return f"{key}: no such key; did you mean {parent}.{close[0]}?"
        group = parent.replace(".", "/")  # hydra.sweeper: the group hydra/sweeper
        where = f"{group}={choices[group]}" if group in choices else parent
        return f"{key}: no such key in {where}; its keys are {', '.join(keys)}"
    groups = [g for g in choices if not g.startswith(("hydra", "schema"))]
    keys = [k for k in leaf_keys(cfg) if not k.startswith("hydra.")]
    close = difflib.get_close_matches(key, [*groups, *keys], n=1, cutoff=0.75)
    hint = ""
    if close:
        hint = f"; did you mean {close[0]}{'=...' if close[0] in groups else ''}?"
    return f"{key}: no such config key{hint} (`trainkit --cfg job` lists them all)"


def leaf_keys(cfg: DictConfig) -> list[str]:
    def walk(node: object, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [k for key, v in node.items() for k in walk(v, f"{prefix}{key}.")]
        return [prefix.rstrip(".")]

    return walk(OmegaConf.to_container(cfg), "")
