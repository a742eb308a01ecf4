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
