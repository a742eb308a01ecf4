"""scripts/bench.py's report: the ratios it prints are medians of per-round ratios, and it reports
whatever subset of loops was asked for."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201 (a module)
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args(loops: list[str]) -> argparse.Namespace:
    return argparse.Namespace(models=["mlp"], loops=loops, repeats=3, threads=2, json=None)


def test_ratios_are_medians_of_the_rounds_ratios(bench, capsys) -> None:  # noqa: ANN001
    # Round by round: trainkit/tutorial 9, 12, 10; the medians of the speeds alone would say 11.
    trainkit = [{"train": v, "eval": 4 * v} for v in (90.0, 120.0, 110.0)]
    tutorial = [{"train": v, "eval": v} for v in (10.0, 10.0, 11.0)]
    bare = [{"train": v, "flop": 1e9} for v in (60.0, 100.0, 100.0)]
    runs = {("mlp", "trainkit"): trainkit, ("mlp", "tutorial"): tutorial, ("mlp", "bare"): bare}
    bench.report(runs, 100.0, args(["trainkit", "tutorial", "bare"]))
    out = capsys.readouterr().out
    assert "trainkit/tutorial 10.00x (9.00-12.00)" in out
    assert "trainkit/bare 1.20x (1.10-1.50)" in out
    assert "trainkit/best bare (bare) 1.20x" in out
    assert "eval trainkit/tutorial 40.00x" in out


def test_a_run_without_bare_loops_reports_what_it_measured(bench, capsys) -> None:  # noqa: ANN001
    runs = {("mlp", "trainkit"): [{"train": 95_000.0, "eval": 1.0}],
            ("mlp", "tutorial"): [{"train": 9_500.0, "eval": 1.0}]}  # fmt: skip
    bench.report(runs, 190.0, args(["trainkit", "tutorial"]))
    out = capsys.readouterr().out
    assert "95,000" in out and "trainkit/tutorial 10.00x" in out
    assert "trainkit/bare n/a" in out
    # What only the bare loop and trainkit+aug measure is unknown, not a number: no "nan".
    assert "nan" not in out
    assert "augmentation costs n/a of the step; n/a MFLOP per training sample" in out


ZEN3 = {"model name": "AMD EPYC", "cpu family": "25", "model": "1", "flags": "fpu avx2 fma"}
XEON = {"model name": "Intel(R) Xeon(R) Platinum", "cpu family": "6", "model": "143",
        "flags": "avx2 fma avx512f avx512_bf16 avx512_fp16 amx_tile amx_bf16"}  # fmt: skip


def test_the_report_names_the_cpu_its_flags_and_torch(bench, capsys, monkeypatch) -> None:  # noqa: ANN001
    """Zen 3 and Zen 4 are both "AMD EPYC": without family and model the figures of two CPUs
    would read alike (a cpu_line that drops them fails)."""
    import torch

    from trainkit import runtime

    monkeypatch.setattr(runtime, "cpu_info", lambda: ZEN3)
    report = args(["trainkit"])
    report.skipped = ["trainkit+bf16", "bare+bf16"]
    bench.report({("mlp", "trainkit"): [{"train": 1.0, "eval": 1.0}]}, 120.0, report)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "CPU: AMD EPYC (family 25 model 1; avx2 fma; no avx512f avx512_bf16 avx512_fp16 "
        f"amx_tile amx_bf16), torch {torch.__version__}"
    )
    assert "trainkit+bf16: skipped, no avx512_bf16 or amx_bf16 on this CPU" in out
    monkeypatch.setattr(runtime, "cpu_info", lambda: XEON)
    xeon = "Intel(R) Xeon(R) Platinum (family 6 model 143; avx2 fma avx512f avx512_bf16 "
    assert bench.cpu_line().startswith(xeon + "avx512_fp16 amx_tile amx_bf16), torch")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(XEON["flags"].split()))
    assert bench.has_bf16_path()
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(ZEN3["flags"].split()))
    assert not bench.has_bf16_path()


def test_bf16_rows_get_their_ratio_and_never_count_as_the_best_bare(bench, capsys) -> None:  # noqa: ANN001
    """A bf16 loop beating every fp32 one must not become "best bare" (trainkit fp32 against a
    bare bf16 loop would understate trainkit), and bf16/fp32 is per round: 2.0, 1.8."""
    runs = {
        ("mlp", "trainkit"): [{"train": 100.0, "eval": 1.0}, {"train": 100.0, "eval": 1.0}],
        ("mlp", "bare+best"): [{"train": 80.0}, {"train": 90.0}],
        ("mlp", "trainkit+bf16"): [{"train": 200.0, "eval": 1.0}, {"train": 180.0, "eval": 1.0}],
        ("mlp", "bare+bf16"): [{"train": 190.0}, {"train": 180.0}],
    }
    bench.report(runs, 100.0, args(["trainkit", "bare+best", "trainkit+bf16", "bare+bf16"]))
    out = capsys.readouterr().out
    assert "trainkit/best bare (bare+best) 1.18x (1.11-1.25)" in out
    assert "mlp: trainkit bf16/fp32 1.90x (1.80-2.00), bare bf16/fp32 (both best) 2.19x" in out
