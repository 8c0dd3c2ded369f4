"""Assertions that several test modules make about a solver's solutions.

Importable by every test module::

    from tests.checks import check_least_budget_is_own_peak, check_fits_and_replays

Each helper asserts one idea that is the same wherever it is used; the
checks special to one strategy stay in that strategy's test module.
"""

import pytest

from planner.errors import InfeasibleError
from planner.solvers import solve
from tests.reference import replay_solution

__all__ = ["check_least_budget_is_own_peak", "check_fits_and_replays"]


def check_least_budget_is_own_peak(model, strategy):
    """A strategy with one schedule per model fits a budget of its own peak, and not one byte less.

    ``InfeasibleError.least_bytes`` must then name that peak.  Returns the peak.
    """
    peak = solve(model, None, strategy).result.peak_bytes
    assert solve(model, peak, strategy).result.peak_bytes == peak
    with pytest.raises(InfeasibleError) as info:
        solve(model, peak - 1, strategy)
    assert info.value.least_bytes == peak
    return peak


def check_fits_and_replays(model, solution, budget):
    """``solution`` fits ``budget`` (None: no budget) and the reference replay of its file agrees.

    The reference (tests/reference.py) must find the written schedule valid,
    with the solution's peak to the byte and its compute.  Returns the
    reference's result, for checks special to one strategy.
    """
    if budget is not None:
        assert solution.result.peak_bytes <= budget
    ref = replay_solution(model, solution)
    assert ref["valid"]
    assert ref["peak_bytes"] == solution.result.peak_bytes
    assert ref["compute"] == pytest.approx(solution.result.compute)
    return ref
