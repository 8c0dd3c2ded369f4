"""planner.sweep, planner.plot and ``edgeplan sweep``."""

import json

import numpy as np
import pytest

from planner import solvers
from planner.budget import split_memory
from planner.plot import text_chart
from planner.sweep import SweepPoint, memory_range, memory_sizes, sweep
from planner.errors import InfeasibleError
from planner.model import MODEL_FORMAT, model_from_dict
from planner.synthetic import random_chain, random_dag
from tests.conftest import RESNET18, run
from tests.reference import replay_solution


# Strategies whose overhead can never rise when memory grows: each picks the
# least compute among a family of schedules that only grows with the budget
# (store-all: one schedule; sequential: segment counts; dp: optimal over its
# discretised grid, which is fixed per model).  Heuristics (chen-greedy,
# revolve's snapshot rule) and time-limited milp carry no such promise.
MONOTONE = ("store-all", "sequential", "dp")


def test_memory_sizes_spread_and_include_both_ends():
    assert memory_sizes(100, 200, 5) == [100, 125, 150, 175, 200]
    assert memory_sizes(100, 100, 12) == [100]
    assert memory_sizes(7, 9, 12) == [7, 8, 9]
    assert memory_sizes(0, 10, 1) == [10]
    with pytest.raises(ValueError, match="above the upper end"):
        memory_sizes(5, 4, 3)
    with pytest.raises(ValueError, match="at least 1"):
        memory_sizes(1, 2, 0)


def test_memory_range_on_resnet18():
    from planner.model import load_model

    model = load_model(RESNET18)
    span = memory_range(model)
    store_all = solvers.solve(model, None, "store-all").result.peak_bytes
    assert span.fixed_bytes == 2 * model.params_bytes
    assert span.store_all_memory_bytes == store_all + span.fixed_bytes
    assert span.least_memory_bytes <= span.store_all_memory_bytes
    # at the least memory, some strategy really fits
    least = split_memory(model, span.least_memory_bytes).activation_bytes
    assert solvers.solve(model, least, "auto").result.peak_bytes <= least
    adam = memory_range(model, optimizer="adam", strategies=["store-all"])
    assert adam.fixed_bytes == 4 * model.params_bytes
    assert adam.least_memory_bytes == adam.store_all_memory_bytes


def test_curves_of_monotone_strategies_never_rise():
    model = random_chain(14, 11)
    names = [n for n in MONOTONE if n in solvers.STRATEGIES]
    assert {"store-all", "sequential"} <= set(names)  # never an empty test
    span = memory_range(model, strategies=names)
    points = sweep(model, memory_sizes(span.least_memory_bytes, span.store_all_memory_bytes, 10), strategies=names)
    assert len(points) == 10 * len(names)
    for name in names:
        curve = [p for p in points if p.strategy == name]
        assert [p.memory_bytes for p in curve] == sorted(p.memory_bytes for p in curve)
        seen_feasible = False
        last = float("inf")
        for p in curve:
            if seen_feasible:
                assert p.feasible, f"{name} stopped fitting at {p.memory_bytes}"
            if p.feasible:
                seen_feasible = True
                assert p.peak_bytes <= p.activation_bytes
                assert p.overhead <= last + 1e-12, f"{name} rose at {p.memory_bytes}"
                last = p.overhead
        assert curve[-1].feasible and curve[-1].overhead == pytest.approx(0.0), name
    # the curve's ends, checked through the simulator and the reference replay
    for p in (q for q in points if q.feasible):
        solution = solvers.solve(model, p.activation_bytes, p.strategy)
        assert solution.result.peak_bytes == p.peak_bytes
        ref = replay_solution(model, solution)
        assert ref["valid"] and ref["peak_bytes"] == p.peak_bytes
        assert ref["compute"] == pytest.approx(p.compute)


def test_dp_curve_when_registered_is_the_lowest_monotone_curve():
    if "dp" not in solvers.STRATEGIES:  # pragma: no cover - dp is part of edgeplan
        pytest.skip("dp is not registered (the monotone test above still runs)")
    model = random_chain(12, 5)
    span = memory_range(model, strategies=["dp", "sequential"])
    points = sweep(model, memory_sizes(span.least_memory_bytes, span.store_all_memory_bytes, 8),
                   strategies=["dp", "sequential"])
    by = {(p.memory_bytes, p.strategy): p for p in points}
    for memory in {p.memory_bytes for p in points}:
        dp, seq = by[memory, "dp"], by[memory, "sequential"]
        if seq.feasible:
            assert dp.feasible and dp.compute <= seq.compute + 1e-9


def test_memory_below_fixed_gives_infeasible_points():
    model = random_chain(5, 1)
    points = sweep(model, [0], strategies=["store-all", "sequential"])
    assert [p.feasible for p in points] == [False, False]
    assert points[0].to_dict()["overhead"] is None


def test_text_chart_draws_each_strategy():
    points = [
        SweepPoint(100, 50, "a", True, peak_bytes=40, compute=2.0, overhead=1.0, forwards=4),
        SweepPoint(200, 150, "a", True, peak_bytes=40, compute=1.0, overhead=0.0, forwards=2),
        SweepPoint(100, 50, "b", False),
    ]
    chart = text_chart(points, width=20, height=5, store_all_memory=200)
    lines = chart.splitlines()
    assert lines[0].startswith("overhead")
    assert lines[1].startswith("100% |o")  # a at (min memory, top)
    assert lines[5].startswith("  0% |") and lines[5].endswith("S")  # store-all covers a's last point
    assert "o a" in lines[-1] and "+ b (never fits)" in lines[-1] and "S store-all memory" in lines[-1]
    assert "100 B" in chart and "200 B" in chart


def test_sweep_json_and_plot(tmp_path):
    png = tmp_path / "curve.png"
    r = run("sweep", RESNET18, "--sizes", "6", "--strategies", "store-all,sequential,dp", "--json", "--plot", png)
    assert r.exit_code == 0, r.output
    points = json.loads(r.stdout)
    assert len(points) >= 5
    for p in points:
        assert {"memory_bytes", "strategy", "feasible", "overhead", "peak_bytes"} <= set(p)
    assert {p["strategy"] for p in points} == {"store-all", "sequential", "dp"}
    memories = sorted({p["memory_bytes"] for p in points})
    assert len(memories) == 6
    assert memories[-1] == 272_582_464  # the store-all memory of resnet18 (SGD)
    assert all(p["overhead"] is not None for p in points if p["feasible"])
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    assert "wrote" in r.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["curve.png"]  # no temporary left


def test_sweep_text_output_and_range_options():
    r = run("sweep", RESNET18, "--from", "180MB", "--to", "280MB", "--sizes", "5", "--strategies", "sequential,store-all")
    assert r.exit_code == 0, r.output
    text = r.stdout
    for fragment in ("180.00 MB", "280.00 MB", "overhead (extra compute)", "+ store-all", "o sequential",
                     "fixed memory 93,516,096 bytes", "store-all needs 272,582,464 bytes"):
        assert fragment in text, fragment
    table_rows = [line for line in text.splitlines() if line.startswith("│") and "MB" in line]
    assert len(table_rows) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "300MB", "--to", "200MB"], "is above --to"),
        (["--steps", "1"], "--steps"),
        (["--sizes", "1"], "--sizes"),
        (["--strategies", "bogus"], "unknown strategy"),
        (["--from", "lots"], "is not a size"),
    ],
)
def test_sweep_bad_usage_exits_2(args, message):
    r = run("sweep", RESNET18, *args)
    assert r.exit_code == 2
    assert message in r.stderr and "Traceback" not in r.output


def _odd_chain(n, seed):
    """A chain whose sizes share no common unit, so that dp rounds its grid."""
    rng = np.random.default_rng(seed)
    layers = [
        {
            "name": f"L{i}", "forward": float(rng.integers(1, 20)), "backward": float(rng.integers(1, 40)),
            "output_bytes": int(rng.integers(10**5, 10**6)), "saved_bytes": int(rng.integers(0, 10**5)),
            "needs_output": bool(rng.random() < 0.4), "workspace_forward": int(rng.integers(0, 10**5)),
        }
        for i in range(n)
    ]
    return model_from_dict({"format": MODEL_FORMAT, "name": f"odd-{n}", "input_bytes": 12345, "layers": layers})


@pytest.mark.parametrize("model", [_odd_chain(30, 1), random_chain(16, 2), random_dag(12, 3)], ids=["rounded", "chain", "dag"])
def test_sweep_points_equal_solving_each_point_separately(model):
    span = memory_range(model)
    sizes = memory_sizes(span.least_memory_bytes, span.store_all_memory_bytes, 12)
    points = sweep(model, sizes)
    names = solvers.applicable(model)
    assert len(points) == len(sizes) * len(names)
    for p in points:
        if p.strategy == "milp":
            continue  # time-limited: need not repeat itself
        try:
            solution = solvers.solve(model, p.activation_bytes, p.strategy)
        except InfeasibleError as exc:
            assert not p.feasible and p.least_bytes == exc.least_bytes, p
            continue
        assert p.feasible, p
        assert (p.peak_bytes, p.compute, p.forwards) == (
            solution.result.peak_bytes, solution.result.compute, solution.result.forwards
        ), p


def test_dp_shares_one_table_per_octave_and_answers_the_same(monkeypatch):
    from planner.solvers import dp as dp_module

    model = _odd_chain(40, 4)
    peak = solvers.solve(model, None, "store-all").result.peak_bytes
    fractions = [0.3, 0.34, 0.38, 0.5, 0.62, 0.9, 0.45]  # not in order: the cache copes
    built = []
    real = dp_module._Table.__init__

    def counting(self, *args, **kwargs):
        built.append(args[3])
        real(self, *args, **kwargs)

    shared = {}
    alone, together = [], []
    for frac in fractions:
        alone.append(dp_module.dp(model, budget=int(peak * frac)))
    monkeypatch.setattr(dp_module._Table, "__init__", counting)
    for frac in fractions:
        together.append(dp_module.dp(model, budget=int(peak * frac), shared=shared))
    assert together == alone
    assert all(params["grid"] == "rounded" for _, params in alone)
    units = [params["unit_bytes"] for _, params in alone]
    assert len(built) < len(fractions)  # budgets of one octave share a table
    assert len(set(units)) <= len(built)
