import math

import pytest

from planner.errors import NotApplicableError
from planner.lowering import RECOMPUTE, STORE
from planner.solvers import solve
from planner.solvers.sqrt_n import sqrt_n_segments
from planner.synthetic import random_chain, random_dag, uniform_chain
from tests.checks import check_least_budget_is_own_peak
from tests.reference import replay_solution


def test_segments_are_about_sqrt_n_layers():
    assert sqrt_n_segments(1) == [(0, 1, STORE)]
    assert sqrt_n_segments(10) == [(0, 4, RECOMPUTE), (4, 7, RECOMPUTE), (7, 10, STORE)]
    assert sqrt_n_segments(16) == [(0, 4, RECOMPUTE), (4, 8, RECOMPUTE), (8, 12, RECOMPUTE), (12, 16, STORE)]
    for n in (2, 3, 50, 99, 1000, 20_000):
        segments = sqrt_n_segments(n)
        sizes = [stop - start for start, stop, _ in segments]
        assert len(segments) == round(math.sqrt(n))
        assert max(sizes) - min(sizes) <= 1
        assert segments[0][0] == 0 and segments[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
        assert [mode for *_, mode in segments] == [RECOMPUTE] * (len(segments) - 1) + [STORE]
    with pytest.raises(ValueError):
        sqrt_n_segments(0)


@pytest.mark.parametrize("seed", range(12))
def test_replays_exactly(seed):
    n = 1 + 4 * seed
    model = random_chain(n, seed)
    sol = solve(model, None, "sqrt-n")
    ref = replay_solution(model, sol)
    assert ref["valid"]
    assert ref["peak_bytes"] == sol.result.peak_bytes
    assert ref["compute"] == pytest.approx(sol.result.compute)
    last = sqrt_n_segments(n)[-1]
    # every layer before the stored last segment is forwarded twice
    assert sol.result.forwards == n + last[0]
    assert sol.params == {"segments": len(sqrt_n_segments(n))}


def test_memory_grows_like_sqrt_n():
    for n in (100, 400, 1600):
        model = uniform_chain(n)
        peak = solve(model, None, "sqrt-n").result.peak_bytes
        full = solve(model, None, "store-all").result.peak_bytes
        # input, about 2 sqrt(n) outputs (checkpoints and one segment) and gradients
        assert peak <= 100 * (2 * math.sqrt(n) + 6)
        assert peak < full / (math.sqrt(n) / 3)


def test_budget_is_checked_and_dags_refused():
    check_least_budget_is_own_peak(random_chain(30, 2), "sqrt-n")
    with pytest.raises(NotApplicableError, match="chains only"):
        solve(random_dag(8, 1), None, "sqrt-n")


def test_20000_layers_in_seconds():
    model = uniform_chain(20_000)
    sol = solve(model, None, "sqrt-n")
    assert sol.result.forwards == 20_000 + sqrt_n_segments(20_000)[-1][0]
