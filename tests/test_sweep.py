"""Sweeps as a user runs them: the ranked report and seed statistics, failed jobs recorded while
the others finish, HPARAMS read back from a real TensorBoard server, and Hydra's Optuna, joblib
and submitit plugins."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib.image
import pytest
from omegaconf import OmegaConf

from trainkit import hparams, sweep
from trainkit.cli import preflight
from trainkit.config import expand_aliases
from trainkit.runtime import available_cores
from trainkit.summary import Summary

from .conftest import small_overrides
from .test_cli import trainkit

TENSORBOARD = shutil.which("tensorboard", path=str(Path(sys.executable).parent)) or "tensorboard"


def run_sweep(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    result = trainkit("-m", *args, cwd=cwd)
    sweep_dirs = list((cwd / "outputs" / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 1, result.stderr
    return result, sweep_dirs[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def job_history(job_dir: Path) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items()} for row in read_csv(job_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def seed_sweep(
    fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Acceptance 1: two optimizers x three seeds with the fast trainer preset."""
    args = ["optimizer=sgd,adam", "seed=0,1,2", "trainer=fast", *small_overrides(fmnist_slice)]
    return run_sweep(args, tmp_path_factory.mktemp("seed_sweep"))


@pytest.mark.slow
def test_a_sweep_is_ranked_and_its_seeds_aggregated(
    seed_sweep: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, sweep_dir = seed_sweep
    assert result.returncode == 0, result.stderr
    rows = read_csv(sweep_dir / "summary.csv")
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert {row["status"] for row in rows} == {"completed"}
    best = [float(row["best_val_acc"]) for row in rows]
    assert best == sorted(best, reverse=True)
    for row in rows:  # every number comes from the job's own files
        job_dir = sweep_dir / row["job"]
        history = job_history(job_dir)
        summary = json.loads((job_dir / "summary.json").read_text())
        assert f"optimizer={row['optimizer']}" in row["job"] and f"seed={row['seed']}" in row["job"]
        assert float(row["best_val_acc"]) == pytest.approx(max(h["val_acc"] for h in history))
        assert float(row["final_val_loss"]) == pytest.approx(history[-1]["val_loss"], rel=1e-5)
        assert float(row["test_acc"]) == pytest.approx(summary["test"]["acc"])
        assert int(row["epochs_run"]) == len(history) == 2

    groups = read_csv(sweep_dir / "summary_by_config.csv")
    assert sorted(g["optimizer"] for g in groups) == ["adam", "sgd"]
    for group in groups:
        values = [float(r["best_val_acc"]) for r in rows if r["optimizer"] == group["optimizer"]]
        assert group["n"] == "3" and group["failed"] == "0"
        assert float(group["best_val_acc_mean"]) == pytest.approx(statistics.fmean(values), 1e-5)
        assert float(group["best_val_acc_std"]) == pytest.approx(statistics.stdev(values), 1e-4)
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert f"{mean:.4f} ± {std:.4f}" in result.stdout

    assert "sweep: 6 jobs ranked by best val_acc" in result.stdout
    assert "mean ± std over seeds" in result.stdout
    image = matplotlib.image.imread(sweep_dir / "comparison.png")
    assert image.shape[0] > 300 and image.shape[1] > 800


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_serves_the_hparams_and_scalars_of_every_job(
    seed_sweep: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Acceptance 3, through TensorBoard's own HTTP data API on loopback."""
    _, sweep_dir = seed_sweep
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    port = free_port()
    server = subprocess.Popen(
        [
            TENSORBOARD,
            "--logdir",
            str(sweep_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
            "--reload_interval=1",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> object:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return json.load(response)

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(
            base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    try:
        deadline = time.monotonic() + 90
        experiment: dict = {}
        while time.monotonic() < deadline:
            try:
                runs = set(get("/data/runs"))  # type: ignore[arg-type]
                # each job, and its train/, validation/ and test/ sibling runs
                if {f"{job}/{split}" for job in jobs for split in ("train", "validation",
                                                                  "test")} <= runs:  # fmt: skip
                    experiment = post("/data/plugin/hparams/experiment", {"experimentName": ""})
                    if experiment.get("metricInfos"):
                        break
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        names = [m["name"] for m in experiment["metricInfos"]]
        metrics = [(n.get("group", ""), n["tag"]) for n in names]
        declared = [(group, tag) for group, tag, _ in hparams.metric_names("val_acc")]
        assert metrics == declared  # up front, in order, each read from its split's run
        assert metrics[0] == ("validation", "curves/accuracy")
        infos = {h["name"]: h for h in experiment["hparamInfos"]}
        # The columns: the swept keys, in the order typed (the constant ones stay in values)
        assert list(infos) == ["optimizer", "trainer.seed"]
        assert all(h["differs"] for h in infos.values())
        assert infos["trainer.seed"]["displayName"] == "seed"

        request = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE"],
            "colParams": [{"metric": {"group": g, "tag": t}} for g, t in metrics],
            "startIndex": 0,
            "sliceSize": 100,
        }
        groups = post("/data/plugin/hparams/session_groups", request)["sessionGroups"]
        # Each trial is named by its swept values (its folder, or the values and the sweep)
        assert len(groups) == len(jobs)
        for group in groups:
            job_dir = sweep_dir / group["sessions"][0]["name"]
            seed = int(group["hparams"]["trainer.seed"])
            swept = f"optimizer={group['hparams']['optimizer']},seed={seed}"
            assert group["name"].split(" · ")[0] == swept  # not data.root=...,optimizer=...
            history = job_history(job_dir)
            summary = json.loads((job_dir / "summary.json").read_text())
            assert set(infos) < set(group["hparams"])  # all its values; swept ones as columns
            assert group["hparams"]["optimizer"] in group["name"]
            assert f"seed={int(group['hparams']['trainer.seed'])}" in group["name"]
            assert group["hparams"]["model.hidden"] == "[64]"  # a list, as text
            assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
            values = {
                (m["name"].get("group", ""), m["name"]["tag"]): m["value"]
                for m in group["metricValues"]
            }
            accuracy = "curves/accuracy"
            assert values["validation", accuracy] == pytest.approx(history[-1]["val_acc"], abs=1e-6)
            assert values["train", accuracy] == pytest.approx(history[-1]["train_acc"], abs=1e-6)
            best = max(h["val_acc"] for h in history)
            assert values["", "summary/best_val_acc"] == pytest.approx(best, abs=1e-6)
            assert values["test", accuracy] == pytest.approx(summary["test"]["acc"], abs=1e-6)

        run = urllib.parse.quote(f"{jobs[0]}/validation")
        points = get(f"/data/plugin/scalars/scalars?run={run}&tag=curves/loss")
        steps = [int(row["step"]) for row in read_csv(sweep_dir / jobs[0] / "metrics.csv")]
        assert [step for _, step, _ in points] == steps  # type: ignore[union-attr]
        val_loss = job_history(sweep_dir / jobs[0])[-1]["val_loss"]  # metrics.csv: 6 digits
        assert points[-1][2] == pytest.approx(val_loss, rel=1e-5)  # type: ignore[index]
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.slow
def test_failed_jobs_are_recorded_as_they_happen_and_the_others_finish(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """Acceptance 2: a diverging lr beside a good job. (A too-large validation split, once a
    failed job too, is refused before the sweep starts: test_bad_data_refuses_the_sweep.)"""
    args = ["-m", "optimizer=sgd", "lr=0.1,1e4", *small_overrides(fmnist_slice)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [shutil.which("trainkit", path=str(Path(sys.executable).parent)) or "trainkit", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 1, out  # the sweep finished; its exit code says some failed
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    rows = {r["lr"]: r for r in read_csv(sweep_dir / "summary.csv")}
    assert rows["0.1"]["status"] == "completed" and rows["0.1"]["rank"] == "1"
    assert float(rows["0.1"]["best_val_acc"]) > 0.5
    assert rows["10000.0"]["status"] == "failed"
    assert "the loss became NaN/Inf at step" in rows["10000.0"]["reason"]
    diverged = sweep_dir / rows["10000.0"]["job"]
    assert json.loads((diverged / "summary.json").read_text())["status"] == "failed"
    assert (diverged / "checkpoints" / "last.pt").is_file()

    # The failure is printed when it happens, before the sweep's report.
    assert out.index("trainkit: job #1 (") < out.index("sweep:")
    assert out.count("failed: ") >= 2 and out.index("failed: lr=10000.0") > out.index("sweep:")


@pytest.mark.slow
def test_bad_data_refuses_the_sweep_before_any_job(fmnist_slice: Path, tmp_path: Path) -> None:
    small = [o for o in small_overrides(fmnist_slice) if not o.startswith("data.val_size=")]
    result = trainkit("-m", "lr=0.1,0.01", "data.val_size=200,5000", *small, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == (
        "trainkit: error: data.val_size=5000 asks for 5,000 validation samples, and there are "
        "1,200 training samples (one must stay to train on): choose 1..1,199 (or a fraction)\n"
    )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_an_optuna_study_in_sqlite_is_joined_by_a_second_invocation(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """Shared storage is how several processes or machines work on one study."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["-m", "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=2", "epochs=1",
            f"hydra.sweeper.storage={storage}", *small_overrides(fmnist_slice)]  # fmt: skip
    for seed in (0, 1):  # another sampler seed: the second process proposes other lrs
        result = trainkit(*args, f"hydra.sweeper.sampler.seed={seed}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="lr_search", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len({t.params["optimizer.lr"] for t in study.trials}) == 4
    assert len(list((tmp_path / "outputs" / "multirun").glob("*/*"))) == 2


@pytest.mark.parametrize(
    ("launcher", "threads"),
    [({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
       "n_jobs": -1}, 1),
     ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
       "array_parallelism": 256, "cpus_per_task": None}, 1),
     ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
       "array_parallelism": 1, "cpus_per_task": None}, 2),
     ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
       "array_parallelism": 64, "cpus_per_task": 8}, None),
     ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, None)],
)  # fmt: skip
def test_launchers_running_jobs_side_by_side_divide_the_cores(
    launcher: dict, threads: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainkit import runtime

    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    assert runtime.threads_per_job(OmegaConf.create(launcher)) == threads


@pytest.mark.slow
def test_optuna_searches_the_lr_on_a_log_scale(fmnist_slice: Path, tmp_path: Path) -> None:
    """Acceptance 4: six Optuna trials; each job returns the metric the study maximizes."""
    args = ["hydra/sweeper=lr_search", "hydra.sweeper.n_trials=6", *small_overrides(fmnist_slice)]
    result, sweep_dir = run_sweep(args, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_csv(sweep_dir / "summary.csv")
    lrs = [float(row["lr"]) for row in rows]
    assert len(set(lrs)) == 6 and all(1e-5 <= lr <= 1.0 for lr in lrs)
    assert {row["status"] for row in rows} == {"completed"}
    study = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert study.best_value == pytest.approx(float(rows[0]["best_val_acc"]), abs=1e-6)
    assert study.best_params["optimizer.lr"] == pytest.approx(float(rows[0]["lr"]))


@pytest.mark.slow
def test_joblib_runs_jobs_side_by_side_with_the_cores_divided(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """Acceptance 4: four jobs on Hydra's joblib launcher, two at a time."""
    args = ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
            *small_overrides(fmnist_slice)]  # fmt: skip
    result, sweep_dir = run_sweep(args, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_csv(sweep_dir / "summary.csv")
    assert sorted(row["seed"] for row in rows) == ["0", "1", "2", "3"]
    for row in rows:
        summary = json.loads((sweep_dir / row["job"] / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["threads"] == max(1, available_cores() // 2)


@pytest.mark.slow
def test_submitit_local_executor_runs_a_two_job_sweep(fmnist_slice: Path, tmp_path: Path) -> None:
    args = ["hydra/launcher=submitit_local", "seed=0,1", *small_overrides(fmnist_slice)]
    result, sweep_dir = run_sweep(args, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_csv(sweep_dir / "summary.csv")
    assert sorted(row["seed"] for row in rows) == ["0", "1"]
    assert {row["status"] for row in rows} == {"completed"}
    assert (sweep_dir / ".submitit").is_dir()  # submitit's own job records


@pytest.mark.slow
def test_compare_reports_a_sweep_again_and_by_another_metric(
    seed_sweep: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    _, sweep_dir = seed_sweep
    copy = shutil.copytree(sweep_dir, tmp_path / "sweep")
    for name in ("summary.csv", "summary_by_config.csv", "comparison.png"):
        (copy / name).unlink()
    result = trainkit("compare", str(copy), cwd=tmp_path)  # e.g. a sweep that was stopped
    assert result.returncode == 0, result.stderr
    assert (copy / "summary.csv").read_text() == (sweep_dir / "summary.csv").read_text()
    assert (copy / "summary_by_config.csv").is_file() and (copy / "comparison.png").is_file()

    result = trainkit("compare", str(copy), "rank_by=val_loss", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sweep: 6 jobs ranked by best val_loss" in result.stdout
    assert "the sweep's files stay ranked by its trainer.monitor" in result.stdout
    assert (copy / "summary.csv").read_text() == (sweep_dir / "summary.csv").read_text()
    # The table's rows, best first: rank, optimizer, seed, best val_loss, ...
    cells = [line.strip("│ ").split("│") for line in result.stdout.splitlines()]
    ranked = [[c.strip() for c in row] for row in cells if row[0].strip().isdigit()][:6]
    assert [row[0] for row in ranked] == ["1", "2", "3", "4", "5", "6"]
    best = {(row[1], row[2]): float(row[3]) for row in ranked}
    assert [float(row[3]) for row in ranked] == sorted(best.values())
    for (optimizer, seed), value in best.items():
        job_dir = copy / f"optimizer={optimizer},seed={seed}"  # the swept keys, as typed
        history = job_history(job_dir)
        assert value == pytest.approx(min(h["val_loss"] for h in history), abs=5e-5)

    for args, message in [
        ([str(tmp_path)], "holds no sweep jobs"),
        ([], "name one sweep dir"),
        ([str(copy), "rank_by=val_acc2"], "rank_by=val_acc2: choose one of val_acc, val_loss"),
        ([str(copy), "rank_by=lr"], "rank_by=lr: choose one of val_acc, val_loss"),
        ([str(copy), "rank=val_loss"], "rank=: compare takes a sweep dir and rank_by=<metric>"),
    ]:
        result = trainkit("compare", *args, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith("trainkit compare: error: ") and message in result.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["hydra/sweeper=optuna"], "hydra.sweeper.direction=minimize, but each trial returns its "
         "best val_acc (higher is better for accuracy, lower for loss): use "
         "hydra.sweeper.direction=maximize"),
        (["hydra/sweeper=lr_search", "trainer.monitor=val_loss"], "use hydra.sweeper.direction="
         "minimize"),
        (["hydra/launcher=paralel"], "hydra/launcher=paralel: no such option; choose one of "),
        (["hydra/launcher=parallel", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: "
         "choose how many jobs run at once (e.g. 4), or -1 for one per core"),
        (["hydra/sweeper=lr_search", "hydra.sweeper.n_trials=0"],
         "hydra.sweeper.n_trials=0: choose 1 or more"),
    ],
)  # fmt: skip
def test_a_sweep_set_up_wrong_is_refused_before_it_starts(
    overrides: list[str], message: str
) -> None:
    errors = preflight(expand_aliases(overrides), multirun=True)
    assert len(errors) == 1 and message in errors[0]


def fake_job(
    num: int, overrides: dict[str, str], val_acc: list[float], ok: bool = True
) -> sweep.Job:
    history = [{"epoch": i + 1, "val_acc": v, "val_loss": 1 - v} for i, v in enumerate(val_acc)]
    status, why = ("completed", "completed") if ok else ("failed", "boom")
    summary = Summary(f"job{num}", status, why, reason=None if ok else why)
    return sweep.Job(num, Path(f"job{num}"), overrides, summary, _history=history)


def test_ranking_puts_failures_last_and_seeds_are_grouped() -> None:
    jobs = [
        fake_job(0, {"lr": "0.1", "seed": "0"}, [0.5, 0.7]),
        fake_job(1, {"lr": "0.1", "seed": "1"}, [0.6, 0.65]),
        fake_job(2, {"lr": "1", "seed": "0"}, [0.9], ok=False),
        fake_job(3, {"lr": "1", "seed": "1"}, [0.8, 0.75]),
    ]
    assert [j.num for j in sweep.rank(jobs, "val_acc")] == [3, 0, 1, 2]
    assert [j.num for j in sweep.rank(jobs, "val_loss")] == [3, 0, 1, 2]
    keys = sweep.varied_keys(jobs)
    assert keys == ["lr", "seed"]
    groups = sweep.rank_groups(sweep.by_seed(jobs, keys), "val_acc")
    assert [g.overrides for g in groups] == [{"lr": "1"}, {"lr": "0.1"}]  # 0.8 (n=1) > 0.675
    mean, std = groups[1].stats([j.best("val_acc") for j in groups[1].done])
    assert (mean, std) == (pytest.approx(0.675), pytest.approx(statistics.stdev([0.7, 0.65])))
    assert math.isnan(groups[0].stats([0.8])[1])  # one seed: no spread to report
    assert sweep.by_seed(jobs[:1], ["lr"]) == []  # no seed swept: nothing to aggregate


def test_a_sweep_over_epochs_keeps_the_swept_value_and_the_epochs_run_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = [fake_job(i, {"epochs": e, "seed": s}, [0.5] * int(e)) for i, (e, s) in
            enumerate([("4", "0"), ("4", "1"), ("5", "0"), ("5", "1")])]  # fmt: skip
    for job in jobs:
        job.summary.epochs_run, job.summary.wall_time_s = len(job.history()), 1.0
    keys = sweep.varied_keys(jobs)
    report = sweep.Report(Path("sweep"), "val_acc", sweep.rank(jobs, "val_acc"), keys,
                          sweep.rank_groups(sweep.by_seed(jobs, keys), "val_acc"))  # fmt: skip
    rows = sweep.job_rows(report)
    assert sorted((row["epochs"], row["epochs_run"]) for row in rows) == [
        ("4", 4),
        ("4", 4),
        ("5", 5),
        ("5", 5),
    ]
    sweep.print_report(report, [])  # the tables render
    out = capsys.readouterr().out
    assert "epochs run" in out and "mean ± std over seeds" in out
