"""What a sweep found: every job's outcome ranked, seeds aggregated, summary.csv and a plot.

Hydra calls `SweepSummary.on_multirun_end` in the launching process once the sweep is over,
whatever ran the jobs (basic, joblib or submitit launcher; grid or Optuna sweeper). It reads
only what each job left in its own folder (.hydra/overrides.yaml, summary.json, metrics.csv), so
the same report can be made again from a finished sweep dir: `trainkit compare <sweep dir>`.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from trainkit.config import shorten_aliases
from trainkit.errors import first_line
from trainkit.metrics import METRICS, MONITORABLE
from trainkit.summary import FAILED, Summary, mark_failed
from trainkit.summary import read as read_summary

SEED_KEY = "seed"  # trainer.seed as the user types it
# What every metrics.csv row has; NaN where a damaged file lacks one.
COLUMNS = dict.fromkeys(("epoch", "train_loss", "train_acc", "val_loss", "val_acc"), math.nan)
FAILED_JOBS: list[Job] = []  # of the sweeps reported in this process: cli.main's exit code


@dataclass
class Job:
    """One job of a sweep, as its folder tells it."""

    num: int
    path: Path
    overrides: dict[str, str]  # key -> value, aliases as typed: {"lr": "0.1", "optimizer": "sgd"}
    summary: Summary | None = None  # summary.json; None if the job left none
    _history: list[dict[str, float]] | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        return str(self.summary.status) if self.summary else "unfinished"

    @property
    def monitor(self) -> str:
        """The job's trainer.monitor, from its saved config (val_acc if it cannot be read)."""
        try:
            config = plain_yaml(self.path / ".hydra" / "config.yaml")
            monitor = config["trainer"].get("monitor", "val_acc")
        except Exception:  # a damaged file: the folder is data, and the report goes on
            return "val_acc"
        return monitor if monitor in MONITORABLE else "val_acc"

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def reason(self) -> str:
        if self.summary is None:
            return ""
        return str(self.summary.reason or ("" if self.ok else self.summary.stop_reason))

    def best(self, metric: str) -> float:
        """The best value `metric` reached in any epoch (max for accuracies, min for losses)."""
        row = self.best_row(metric)
        return row[metric] if row else math.nan

    def best_row(self, metric: str) -> dict[str, float] | None:
        rows = [row for row in self.history() if math.isfinite(row.get(metric, math.nan))]
        if not rows:
            return None
        return min(rows, key=lambda row: METRICS[metric].sort_key(row[metric]))

    def final(self, metric: str) -> float:
        return self._number("final", metric)

    def test(self, metric: str) -> float:
        return self._number("test", metric)

    def _number(self, section: str, metric: str) -> float:
        values = getattr(self.summary, section, None)
        return number(values.get(metric)) if isinstance(values, dict) else math.nan

    def history(self) -> list[dict[str, float]]:
        """metrics.csv: one row per finished epoch (read once)."""
        path = self.path / "metrics.csv"
        if self._history is None:
            self._history = []
            if path.is_file():
                with path.open(newline="", errors="replace") as f:
                    rows = csv.DictReader(f)
                    self._history = [
                        {**COLUMNS, **{k: number(v) for k, v in r.items() if k and v}}
                        for r in rows
                    ]
        return self._history


def number(text: object) -> float:
    """A metrics.csv cell as a float; NaN for one that is not a number (a damaged file)."""
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def whole(value: float) -> int | str:
    """An epoch number for the table; "" for none (or one a damaged file made NaN)."""
    return int(value) if math.isfinite(value) and value else ""


def record_failure(run_dir: Path, reason: str, job_label: str, monitor: str) -> float:
    """Mark a sweep job failed in its summary.json, say so now, and return the worst value of
    `monitor` for the sweeper: Optuna then steers away from that region and goes on (it stops
    the whole study on NaN or an exception); Hydra's basic sweeper ignores the value."""
    reason = mark_failed(run_dir, reason)  # with the disk's complaint if it is full
    print(f"trainkit: job {job_label} failed: {reason}", file=sys.stderr, flush=True)
    return METRICS[monitor].worst()


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder under the sweep dir (those with .hydra/overrides.yaml), in job order."""
    jobs = []
    for hydra_dir in sweep_dir.glob("*/.hydra"):
        if not (hydra_dir / "overrides.yaml").is_file():
            continue
        overrides, num, damage = read_hydra_files(hydra_dir)
        summary = read_summary(hydra_dir.parent / "summary.json")
        if damage:
            summary = Summary.unreadable(hydra_dir.parent, damage)
        jobs.append(Job(num, hydra_dir.parent, overrides, summary))
    return sorted(jobs, key=lambda job: job.num)


def read_hydra_files(hydra_dir: Path) -> tuple[dict[str, str], int, str]:
    """A job's overrides (aliases as typed) and number, from what Hydra wrote; the third item
    says what is damaged, if anything (the folder is data: the report goes on without it)."""
    overrides = {}
    try:
        for text in plain_yaml(hydra_dir / "overrides.yaml"):
            key, _, value = shorten_aliases(str(text)).partition("=")
            if not key.startswith("hydra"):
                overrides[key.lstrip("+~")] = value
        num = plain_yaml(hydra_dir / "hydra.yaml")["hydra"]["job"].get("num")
        return overrides, int(num or 0), ""
    except Exception as e:
        why = first_line(e)[:80]
        return overrides, 10**9, f"{hydra_dir} cannot be read ({type(e).__name__}: {why})"


def plain_yaml(path: Path) -> Any:
    """A YAML file of a sweep folder as plain data: no interpolation is resolved (the folder is
    data: `${oc.env:...}` in it stays text)."""
    return yaml.safe_load(path.read_text())


def varied_keys(jobs: list[Job]) -> list[str]:
    """The overrides whose value differs between jobs, in command-line order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def rank(jobs: list[Job], metric: str) -> list[Job]:
    """Best first by the best value of `metric`; failed or unfinished jobs last, in job order."""

    def key(job: Job) -> tuple[int, float, int]:
        value = job.best(metric)
        if not job.ok or math.isnan(value):
            return (1, 0.0, job.num)
        return (0, METRICS[metric].sort_key(value), job.num)

    return sorted(jobs, key=key)


@dataclass
class Group:
    """The jobs of one configuration that differ only by seed."""

    overrides: dict[str, str]
    jobs: list[Job]

    @property
    def done(self) -> list[Job]:
        return [job for job in self.jobs if job.ok]

    def stats(self, values: list[float]) -> tuple[float, float]:
        """Mean and sample standard deviation (NaN for fewer than two values)."""
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return math.nan, math.nan
        std = statistics.stdev(finite) if len(finite) > 1 else math.nan
        return statistics.fmean(finite), std


def by_seed(jobs: list[Job], keys: list[str]) -> list[Group]:
    """Jobs grouped by every varied override except the seed (empty if no seed was swept)."""
    if SEED_KEY not in keys:
        return []
    others = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple, Group] = {}
    for job in jobs:
        overrides = {k: job.overrides.get(k, "") for k in others}
        groups.setdefault(tuple(overrides.values()), Group(overrides, [])).jobs.append(job)
    return list(groups.values())


# ------------------------------------------------------------------------------ report


@dataclass
class Report:
    sweep_dir: Path
    metric: str
    ranked: list[Job]
    keys: list[str]  # varied overrides
    groups: list[Group]

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.ranked if not job.ok]


def build_report(sweep_dir: Path, metric: str) -> Report:
    jobs = read_jobs(sweep_dir)
    keys = varied_keys(jobs)
    return Report(
        sweep_dir, metric, rank(jobs, metric), keys, rank_groups(by_seed(jobs, keys), metric)
    )


def rank_groups(groups: list[Group], metric: str) -> list[Group]:
    """Best mean first; groups with no finished job last."""

    def key(group: Group) -> tuple[int, float]:
        mean = group.stats([job.best(metric) for job in group.done])[0]
        if math.isnan(mean):
            return (1, 0.0)
        return (0, METRICS[metric].sort_key(mean))

    return sorted(groups, key=key)


def job_rows(report: Report) -> list[dict[str, Any]]:
    """One row per job, best first: the columns of summary.csv."""
    m = report.metric
    rows = []
    for i, job in enumerate(report.ranked, start=1):
        rows.append({
            "rank": i if job.ok else "",
            "job": job.path.name,
            "status": job.status,
            **{key: job.overrides.get(key, "") for key in report.keys},
            f"best_{m}": job.best(m),
            "best_epoch": whole((job.best_row(m) or {}).get("epoch", math.nan)),
            "final_train_loss": job.final("train_loss"),
            "final_val_loss": job.final("val_loss"),
            "final_val_acc": job.final("val_acc"),
            "test_acc": job.test("acc"),
            "test_loss": job.test("loss"),
            # not "epochs": a key one may sweep
            "epochs_run": job.summary.epochs_run if job.summary else "",
            "time_s": number(job.summary.wall_time_s if job.summary else None),
            "reason": job.reason,
        })
    return rows


def group_rows(report: Report) -> list[dict[str, Any]]:
    """Mean and std over seeds per configuration: the columns of summary_by_config.csv."""
    m = report.metric
    rows = []
    for group in report.groups:
        done = group.done
        row: dict[str, Any] = {
            **group.overrides,
            "n": len(done),
            "failed": sum(job.status == FAILED for job in group.jobs),
            "unfinished": sum(job.status not in (FAILED, "completed") for job in group.jobs),
        }
        for name, values in (
            (f"best_{m}", [j.best(m) for j in done]),
            ("final_val_loss", [j.final("val_loss") for j in done]),
            ("test_acc", [j.test("acc") for j in done]),
        ):
            row[f"{name}_mean"], row[f"{name}_std"] = group.stats(values)
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def write(report: Report) -> list[Path]:
    """summary.csv, summary_by_config.csv (when seeds were swept) and comparison.png."""
    from trainkit import plots  # matplotlib: only when there is something to draw

    written = [report.sweep_dir / "summary.csv"]
    write_csv(job_rows(report), written[0])
    if report.groups:
        written.append(report.sweep_dir / "summary_by_config.csv")
        write_csv(group_rows(report), written[-1])
    if any(job.ok for job in report.ranked):
        written.append(report.sweep_dir / "comparison.png")
        plots.sweep_comparison_png(report, written[-1])
    return written


def print_report(report: Report, written: list[Path]) -> None:
    from trainkit.console import console, sweep_tables

    sweep_tables(report, job_rows(report), group_rows(report))
    files = (
        f"written: {', '.join(p.name for p in written)} in {report.sweep_dir}"
        if written
        else "the sweep's files stay ranked by its trainer.monitor"
    )
    console.print(
        f"{files}; compare the curves: tensorboard --logdir {report.sweep_dir}",
        highlight=False, soft_wrap=True,
    )


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): the report when a sweep ends."""

    def __init__(self, rank_by: str | None = None) -> None:
        self.rank_by = rank_by  # None: the sweep's trainer.monitor

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():  # the sweep stopped before its first job
            return
        report = build_report(sweep_dir, self.rank_by or config.trainer.monitor)
        print_report(report, write(report))
        FAILED_JOBS.extend(report.failed)
