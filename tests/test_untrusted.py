"""Files that come from elsewhere are data: a doctored checkpoint runs no code, damaged data
or a damaged sweep folder gets one line and exit 2, and no run writes over another's results.

Each case was reproduced on the code before the fix (main at 220500e): the payloads ran, the
earlier run's files were replaced, and the bad files gave tracebacks."""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from trainkit import checkpoint, run_dirs
from trainkit.cli import main

from .conftest import SLICE_TRAIN, small_overrides, write_cifar10, write_idx
from .test_cli import trainkit


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:  # fmt: skip
    """`trainkit ARGS` in this process: its exit code and the non-empty lines of its stderr."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["trainkit", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip()]


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run, made once; tests copy it before touching it."""
    cwd = tmp_path_factory.mktemp("finished")
    result = trainkit(*small_overrides(fmnist_slice), "epochs=1", "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "run"


def resumable_copy(finished: Path, where: Path) -> Path:
    """A copy of the run whose last.pt says 1 of 2 epochs are done: resume would train on."""
    run_dir = shutil.copytree(finished, where)
    path = run_dir / "checkpoints" / "last.pt"
    saved = checkpoint.load(path)
    saved["fit"]["epochs"] = saved["config"]["trainer"]["epochs"] = 2
    torch.save(saved, path)
    return run_dir


# ------------------------------------------------------------ doctored checkpoints run nothing


class RunsCode:
    """Unpickled without weights_only, it runs `source`."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple:
        return (exec, (self.source,))


def payloads(marker: Path, other_pt: Path) -> dict[str, object]:
    """Config nodes that run code when Hydra instantiates them: each writes `marker`."""
    write = f"open({str(marker)!r}, 'w').write('ran')"
    torch.save(RunsCode(write), other_pt)
    return {
        "exec_with_source": {"_target_": "torch.fx.graph_module._exec_with_source",
                             "_convert_": "all", "src": write, "globals": {}},
        "torch_load": {"_target_": "torch.load", "f": str(other_pt), "weights_only": False},
    }  # fmt: skip


def plant(saved: dict, where: str, node: object) -> dict:
    """A copy of `saved` with `node` put at `where` of its config (a dotted key; [i]: an item)."""
    doctored = copy.deepcopy(saved)
    *path, last = where.split(".")
    parent = doctored["config"]
    for key in path:
        parent = parent[key]
    if last.endswith("]"):
        key, index = last[:-1].split("[")
        parent[key][int(index)] = node
    else:
        parent[last] = node
    return doctored


WHERE = ["model.hidden", "optimizer.betas[0]", "data.root", "model._target_", "extra", "loss"]


@pytest.mark.parametrize("payload", ["exec_with_source", "torch_load"])
@pytest.mark.slow
def test_a_doctored_checkpoint_runs_no_code_in_evaluate_resume_or_transfer(
    payload: str, finished: Path, fmnist_slice: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    node = payloads(marker, tmp_path / "other.pt")[payload]
    run_dir = resumable_copy(finished, tmp_path / "run")
    clean = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    for where in WHERE:
        if where == "model._target_":  # the model node itself: a registered name is required
            doctored = plant(clean, "model", {**clean["config"]["model"], **node})
        else:
            doctored = plant(clean, where, node)
        torch.save(doctored, run_dir / "checkpoints" / "last.pt")
        path = run_dir / "checkpoints" / "last.pt"
        commands = [
            ["evaluate", f"ckpt={path}"],
            [f"resume={run_dir}"],
            [*small_overrides(fmnist_slice), f"model.from_checkpoint={path}"],
        ]
        for args in commands:
            code, lines = run_main(args, monkeypatch, capsys)
            assert code == 2 and len(lines) == 1, (where, args, lines)
            assert "is refused: its config names code to run" in lines[0], (where, lines)
            assert not marker.exists(), (where, args)


@pytest.mark.parametrize("group", ["loss", "scheduler", "init"])
def test_a_group_named_the_old_way_is_never_taken_as_code(
    group: str, finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Configs saved before _target_ named these groups {name: hinge}; a name outside the
    ones trainkit had is refused (it was taken as a _target_: torch.load ran the payload)."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    node = payloads(marker, tmp_path / "other.pt")["torch_load"]
    run_dir = resumable_copy(finished, tmp_path / "run")
    clean = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    doctored = plant(clean, group, {"name": "torch.load", **{k: v for k, v in node.items()
                                                            if k != "_target_"}})  # fmt: skip
    torch.save(doctored, run_dir / "checkpoints" / "last.pt")
    commands = [[f"resume={run_dir}"]]  # evaluate builds the loss, not the others
    if group == "loss":
        commands.append(["evaluate", f"ckpt={run_dir / 'checkpoints' / 'last.pt'}"])
    for args in commands:
        code, lines = run_main(args, monkeypatch, capsys)
        assert code == 2 and len(lines) == 1, (args, lines)
        assert f"{group}.name=torch.load: not one trainkit had (" in lines[0]
        assert not marker.exists()


@pytest.mark.parametrize(
    ("config", "why"),
    [({"data": "x"}, "its config has no data group"),
     ("tensor", "its config value model.hidden is a Tensor"),
     ("unhashable", "its config's model._target_ is not a name")],
)  # fmt: skip
@pytest.mark.slow
def test_a_checkpoint_config_of_the_wrong_shape_gets_one_line(
    config: object, why: str, finished: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    saved = checkpoint.load(finished / "checkpoints" / "last.pt")
    if config == "tensor":
        saved = plant(saved, "model.hidden", torch.zeros(2))
    elif config == "unhashable":
        saved = plant(saved, "model._target_", {"x": 1})
    else:
        saved["config"] = config
    torch.save(saved, tmp_path / "x.pt")
    code, lines = run_main(["evaluate", f"ckpt={tmp_path / 'x.pt'}"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and why in lines[0], lines


def test_a_checkpoint_config_with_an_interpolation_is_refused(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    saved = plant(checkpoint.load(finished / "checkpoints" / "last.pt"), "trainer.device",
                  "${oc.env:HOME}")  # fmt: skip
    torch.save(saved, tmp_path / "x.pt")
    code, lines = run_main(["evaluate", f"ckpt={tmp_path / 'x.pt'}"], monkeypatch, capsys)
    assert code == 2 and "its config value trainer.device is an interpolation" in lines[0]


def test_a_checkpoint_trainkit_wrote_still_evaluates_and_resumes(
    finished: Path, fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    run_dir = resumable_copy(finished, tmp_path / "run")
    path = run_dir / "checkpoints" / "best.pt"
    assert run_main(["evaluate", f"ckpt={path}"], monkeypatch, capsys) == (0, [])
    # The command that started it, with resume= added: every value equals the saved one
    # (data.root, which may change, within the data group too).
    again = [*small_overrides(fmnist_slice), "data=fashion_mnist", "epochs=2"]
    assert run_main([f"resume={run_dir}", *again], monkeypatch, capsys) == (0, [])
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 2


# ------------------------------------------------------------------- no result is ever lost


def test_a_new_run_into_a_folder_holding_a_run_is_refused_and_changes_nothing(
    finished: Path, fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    run_dir = shutil.copytree(finished, tmp_path / "run")
    before = fingerprint(run_dir)
    code, lines = run_main([*small_overrides(fmnist_slice), f"hydra.run.dir={run_dir}"],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 2 and len(lines) == 1
    assert lines[0] == (
        f"trainkit: error: {run_dir} already holds a run: go on with it with `trainkit "
        f"resume={run_dir}`, or choose a fresh folder with hydra.run.dir=<folder> "
        "(trainer.overwrite=true deletes that run and starts again there)"
    )
    assert fingerprint(run_dir) == before  # byte for byte, and no file added


def test_overwrite_true_replaces_the_earlier_run_whole(
    finished: Path, fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    run_dir = shutil.copytree(finished, tmp_path / "run")
    args = [*small_overrides(fmnist_slice), f"hydra.run.dir={run_dir}", "trainer.overwrite=true"]
    assert run_main(args, monkeypatch, capsys) == (0, [])
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2"]  # no earlier epoch-1 row
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_two_runs_started_at_once_into_one_folder_leave_one_whole_run(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    args = [*small_overrides(fmnist_slice), "epochs=3", "hydra.run.dir=shared"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "trainkit", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert len(refused.splitlines()) == 1
    assert "is in use by another trainkit process" in refused or "already holds a run" in refused
    rows = (tmp_path / "shared" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3"]


def test_the_default_folder_moves_aside_when_a_run_started_in_the_same_second_has_it(
    tmp_path: Path,
) -> None:
    taken = tmp_path / "outputs" / "2026-12-06" / "17-00-00"
    assert run_dirs.lock(taken)  # another run's: flock locks are per open file, even here
    try:
        assert run_dirs.claim(taken, named=False) == taken.with_name("17-00-00-1")
        (taken.with_name("17-00-00-2") / ".hydra").mkdir(parents=True)  # a finished run
        assert run_dirs.claim(taken, named=False) == taken.with_name("17-00-00-3")
    finally:
        run_dirs.release()
    assert run_dirs.hydra_value(Path("a b/c,d")) == "'a b/c,d'"
    plain = "outputs/2026-12-06/17-00-00"
    assert run_dirs.hydra_value(Path(plain)) == plain


def test_printing_the_config_claims_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["--cfg", "job"], monkeypatch, capsys) == (0, [])
    assert not (tmp_path / "outputs").exists()


def test_a_folder_name_hydra_reads_otherwise_is_pinned_exactly(tmp_path: Path) -> None:
    """A backslash or a non-ASCII letter: the folder Hydra writes into is the one locked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for name in ("bs\\x", "résultats", "a b,c", "it's", "end\\"):
        folder = tmp_path / name
        quoted = run_dirs.hydra_value(folder)
        parsed = OverridesParser.create().parse_overrides([f"hydra.run.dir={quoted}"])[0]
        assert parsed.value() == str(folder), name
    with pytest.raises(run_dirs.UserError, match="Hydra cannot take this folder name"):
        run_dirs.hydra_value(tmp_path / "${oc.env:HOME}")


@pytest.mark.slow
def test_a_sweep_over_a_key_left_out_of_folder_names_keeps_every_job(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    roots = [shutil.copytree(fmnist_slice, tmp_path / name) for name in ("a", "b", "c")]
    small = [o for o in small_overrides(fmnist_slice) if not o.startswith("data.root=")]
    swept = "data.root=" + ",".join(str(r) for r in roots)
    result = trainkit("-m", swept, *small, "epochs=1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2"]  # named by job number: the names would have collided
    with (tmp_path / "sweep" / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["data.root"] for row in rows) == [str(r) for r in roots]


def test_a_sweep_into_a_folder_holding_a_sweep_is_refused(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "sweep"
    (old / "lr=0.1" / ".hydra").mkdir(parents=True)
    (old / "multirun.yaml").write_text("hydra: {}\n")
    before = fingerprint(old)
    code, lines = run_main(["-m", "lr=0.1,0.01", *small_overrides(fmnist_slice),
                            f"hydra.sweep.dir={old}"], monkeypatch, capsys)  # fmt: skip
    assert code == 2 and len(lines) == 1 and "already holds a run" in lines[0]
    assert "hydra.sweep.dir=<folder>" in lines[0] and fingerprint(old) == before


@pytest.mark.slow
def test_a_diverged_job_fails_the_sweep_and_is_told_to_lower_the_lr(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    """Adam at lr=1e6: losses ~1e20, once called underfit and told to raise the lr; exit 0."""
    args = ["-m", "lr=1e-3,1e6", *small_overrides(fmnist_slice), "diagnostics.advice=true",
            "hydra.sweep.dir=sweep"]  # fmt: skip
    result = trainkit(*args, cwd=tmp_path)
    assert result.returncode == 1
    summaries = {float(p.parent.name.split("lr=")[1].split(",")[0]): json.loads(p.read_text())
                 for p in (tmp_path / "sweep").glob("*/summary.json")}  # fmt: skip
    assert sorted(summaries) == [1e-3, 1e6] and summaries[1e-3]["status"] == "completed"
    summary = summaries[1e6]
    assert summary["status"] == "failed"
    assert summary["diagnosis"]["verdict"] == "diverged"
    assert "the run diverged" in summary["reason"] and "try lr=0.01," in summary["reason"]
    assert "failed: the run ended with training loss" in result.stderr
    with (tmp_path / "sweep" / "summary.csv").open(newline="") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["completed", "failed"]


# ------------------------------------------------------ bad files: one line, exit 2, no run


def idx_bytes(header: bytes, payload: bytes = b"") -> bytes:
    return gzip.compress(header + payload)


def broken_fmnist(root: Path, case: str, slice_root: Path) -> None:
    """A copy of the slice with one file replaced as `case` says."""
    shutil.copytree(slice_root, root)
    images, labels = root / "train-images-idx3-ubyte.gz", root / "train-labels-idx1-ubyte.gz"
    real = np.frombuffer(gzip.decompress(labels.read_bytes())[8:], dtype=np.uint8)
    if case == "short header":
        images.write_bytes(idx_bytes(bytes([0, 0, 8, 3, 0, 0])))
    elif case == "ndim 0":
        images.write_bytes(idx_bytes(bytes([0, 0, 8, 0]), b"\0" * 100))
    elif case == "1-D images":
        write_idx(images, np.zeros(SLICE_TRAIN * 784, dtype=np.uint8))
    elif case == "32x32 images":
        write_idx(images, np.zeros((SLICE_TRAIN, 32, 32), dtype=np.uint8))
    elif case == "a label of 200":
        write_idx(labels, np.where(np.arange(SLICE_TRAIN) == 7, 200, real).astype(np.uint8))
    elif case == "fewer labels":
        write_idx(labels, real[:1000])
    elif case == "more labels":
        write_idx(labels, np.concatenate([real, real[:100]]))


FMNIST_CASES = {
    "short header": "train-images-idx3-ubyte.gz has a damaged idx header (3 dimensions, 6 bytes)",
    "ndim 0": "train-images-idx3-ubyte.gz has a damaged idx header (0 dimensions",
    "1-D images": "train-images-idx3-ubyte.gz holds 1-D data, not a stack of 2-D images",
    "32x32 images": "the train set holds images of 1x32x32, and fashion_mnist images are 1x28x28",
    "a label of 200": "the train set has a label 200, and fashion_mnist has 10 classes (0..9)",
    "fewer labels": "the train set has 1,200 images and 1,000 labels: each image needs one label",
    "more labels": "the train set has 1,200 images and 1,300 labels: each image needs one label",
}


@pytest.mark.parametrize("case", FMNIST_CASES)
def test_damaged_fashion_mnist_gets_one_line_and_no_run_folder(
    case: str, fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    broken_fmnist(tmp_path / "data", case, fmnist_slice)
    args = [f"data.root={tmp_path / 'data'}" if a.startswith("data.root=") else a
            for a in small_overrides(fmnist_slice)]  # fmt: skip
    code, lines = run_main(args, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and FMNIST_CASES[case] in lines[0], lines
    assert not (tmp_path / "outputs").exists()  # found before the run folder was made


def cifar_args(root: Path, *more: str) -> list[str]:
    return [f"data.root={root}", "data=cifar10", "data.download=false", "model=mlp",
            "model.hidden=[16]", "epochs=1", "diagnostics.pictures=false", *more]  # fmt: skip


def test_cifar_labels_out_of_range_and_too_large_a_val_size_get_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    folder = write_cifar10(tmp_path / "small", n_train_per_batch=200)  # 1,000 images
    code, lines = run_main(cifar_args(tmp_path / "small", "data.val_size=5000"), monkeypatch,
                           capsys)  # fmt: skip
    assert code == 2 and lines == [
        "trainkit: error: data.val_size=5000 asks for 5,000 validation samples, and there are "
        "1,000 training samples (one must stay to train on): choose 1..999 (or a fraction)"
    ]
    batch = pickle.loads((folder / "data_batch_3").read_bytes())
    batch[b"labels"][5] = -3
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    code, lines = run_main(cifar_args(tmp_path / "small"), monkeypatch, capsys)
    assert code == 2 and len(lines) == 1
    assert "the train set has a label -3, and cifar10 has 10 classes (0..9)" in lines[0]
    assert not (tmp_path / "outputs").exists()


CHECKPOINT_CONTENTS = {"a bare tensor": torch.zeros(3), "an empty dict": {}}


@pytest.mark.parametrize("content", CHECKPOINT_CONTENTS)
def test_a_pt_file_that_is_not_a_checkpoint_gets_one_line_everywhere(
    content: str, fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(CHECKPOINT_CONTENTS[content], path)
    why = "it holds a Tensor, not a dict" if content == "a bare tensor" else "no model weights"
    for args in (["evaluate", f"ckpt={path}"], [f"resume={tmp_path / 'run'}"],
                 [*small_overrides(fmnist_slice), f"model.from_checkpoint={path}"]):  # fmt: skip
        code, lines = run_main(args, monkeypatch, capsys)
        assert code == 2 and len(lines) == 1, (args, lines)
        assert f"{path} is not a trainkit checkpoint or is damaged ({why}" in lines[0]


OUTPUT_CASES = {
    "a 300-character folder name": (["hydra.run.dir=outputs/" + "x" * 300],
                                     "a file or folder name is too long"),
    "a folder under /proc": (["hydra.run.dir=/proc/trainkit-run"], "/proc/trainkit-run"),
    "a data.root of 100,000 characters": (["data.root=/" + "d" * 100_000],
                                          "cannot be searched (File name too long)"),
    "lr=1e400": (["lr=1e400"], "lr=inf: not a finite number; write one such as 1e-3"),
}  # fmt: skip


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_unusable_paths_and_numbers_get_one_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    args, message = OUTPUT_CASES[case]
    code, lines = run_main(args, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert len(lines[0]) < 400  # a 100,000-character path is not echoed whole


@pytest.mark.slow
def test_compare_reports_a_sweep_with_a_damaged_summary_and_names_it(
    fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    result = trainkit("-m", "seed=0,1", *small_overrides(fmnist_slice), "epochs=1",
                      "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (first, second) = sorted((tmp_path / "sweep").glob("*seed=*"), key=lambda p: "seed=1" in p.name)
    (second / "summary.json").write_text('{"status": "comp')
    (first / "metrics.csv").write_text("epoch,val_acc\n1,abc\n")
    code, lines = run_main(["compare", str(tmp_path / "sweep")], monkeypatch, capsys)
    assert code == 2 and lines == [
        f"trainkit compare: error: {second / 'summary.json'} is damaged "
        "(JSONDecodeError: Unterminated string starting at: line 1 column 12 (char 11)): "
        "that job is reported as failed"
    ]
    with (tmp_path / "sweep" / "summary.csv").open(newline="") as f:  # the report, rewritten
        assert sorted(row["status"] for row in csv.DictReader(f)) == ["completed", "failed"]


def test_a_sweep_folder_is_read_as_data_not_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`${oc.env:...}` in a job's overrides.yaml stays text (it used to be resolved, written
    into summary.csv, then crash the lr plot)."""
    monkeypatch.setenv("TRAINKIT_SECRET", "hunter2")
    for num, lr in enumerate(["0.1", "${oc.env:TRAINKIT_SECRET}"]):
        job = tmp_path / "sweep" / f"job{num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- lr={lr}\n")
        (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (job / "summary.json").write_text('{"status": "completed", "final": {"val_loss": 1}}')
        (job / "metrics.csv").write_text("epoch,train_loss,val_loss,val_acc\n1,1,1,0.5\n")
    code, lines = run_main(["compare", str(tmp_path / "sweep")], monkeypatch, capsys)
    assert code == 0 and lines == []
    text = (tmp_path / "sweep" / "summary.csv").read_text()
    assert "${oc.env:TRAINKIT_SECRET}" in text and "hunter2" not in text


# ------------------------------------------------------------------------------ full disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Path:
    """An 8 MiB file system (tmpfs): room for Hydra's files and a small run, not for a big
    model's checkpoint."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # in-process logs hold files


def test_a_full_disk_ends_a_new_run_and_a_resume_with_one_line(
    finished: Path, fmnist_slice: Path, tiny_disk: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    big = ["model.hidden=[4096]", f"hydra.run.dir={tiny_disk}/new"]  # a 13 MB last.pt
    code, lines = run_main([*small_overrides(fmnist_slice), *big], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    full = f"trainkit: error: no space left on the device to write {tiny_disk}/new/checkpoints"
    assert lines[0].startswith(full), lines

    run_dir = resumable_copy(finished, tiny_disk / "old")
    last = (run_dir / "checkpoints" / "last.pt").read_bytes()
    free = os.statvfs(tiny_disk)
    (tiny_disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 8192))
    code, lines = run_main([f"resume={run_dir}"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "no space left on the device to write" in lines[0]
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == last  # intact
