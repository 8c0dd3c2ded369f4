"""Tests of the ``dp`` strategy (optimal persistent schedules of heterogeneous chains)."""


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import InfeasibleError, NotApplicableError, TooLargeError
from planner.lowering import insert_frees
from planner.model import load_model, model_from_dict
from planner.simulate import simulate
from planner.solvers import applicable, run_all, solve
from planner.solvers.dp import dp
from planner.synthetic import random_chain, random_dag, uniform_chain
from tests.checks import check_fits_and_replays
from tests.conftest import DATA
from tests.exhaustive import optimal_schedule, persistent_optimum, persistent_schedules
from tests.strategies import chains, examples, store_all_peak, with_heavy_sink

REAL = ["resnet18", "vgg16", "resnet18-cpu", "mobilenet_v2-cpu"]
# Strategies dp is not compared with: ``milp`` is exact over every schedule
# (non-persistent ones included, which dp does not consider), ``dp`` is itself.
NOT_COMPARED = {"dp", "milp"}
TOLERANCE = 0.005


def _check(model, budget):
    """Solve with dp through the registry; check it against the simulator and the reference."""
    sol = solve(model, budget, "dp")
    sim = simulate(model, insert_frees(model, sol.ops))
    assert sim.valid
    assert sol.result.compute == pytest.approx(sol.params["dp_compute"], rel=1e-9)
    assert sol.result.peak_bytes == sol.params["dp_peak_bytes"]
    check_fits_and_replays(model, sol, budget)
    return sol


def _small_chains():
    yield uniform_chain(4)
    yield uniform_chain(6, output_bytes=7, input_bytes=3)
    for seed in range(14):
        yield random_chain(1 + seed % 6, seed)
    for seed in range(6):
        yield random_chain(3 + seed % 4, 100 + seed, workspaces=False)
    # The sink's output dominates (logits): the loss holds it until its backward.
    for seed in range(6):
        yield with_heavy_sink(random_chain(2 + seed % 5, 200 + seed), factor=1 + seed % 3)


@pytest.mark.parametrize("model", list(_small_chains()), ids=lambda m: m.name)
def test_dp_against_exhaustive_search(model):
    # Every distinct peak of a persistent schedule is a budget where the optimum changes.
    schedules = persistent_schedules(model)
    peaks = sorted({peak for peak, _, _ in schedules})
    for budget in peaks:
        ops, params = dp(model, budget=budget)
        sim = simulate(model, insert_frees(model, ops))
        assert sim.valid and sim.peak_bytes <= budget
        assert sim.compute == pytest.approx(persistent_optimum(schedules, budget), rel=1e-12)
        assert params["dp_compute"] == pytest.approx(sim.compute, rel=1e-12)
        assert params["dp_peak_bytes"] == sim.peak_bytes
    with pytest.raises(InfeasibleError) as info:
        dp(model, budget=peaks[0] - 1)
    assert info.value.least_bytes == peaks[0]


@pytest.mark.parametrize("seed", range(6))
def test_exhaustive_over_all_schedules_never_worse(seed):
    # Non-persistent schedules are a superset: the Dijkstra oracle is never worse
    # than dp, and fits whenever dp fits.
    model = random_chain(4, 300 + seed)
    if seed >= 4:
        model = with_heavy_sink(model)
    schedules = persistent_schedules(model)
    peaks = sorted({peak for peak, _, _ in schedules})
    for budget in peaks[:: max(1, len(peaks) // 6)] + [peaks[0] - 1]:
        found = optimal_schedule(model, budget)
        best = persistent_optimum(schedules, budget)
        if best is None:
            continue
        assert found is not None
        assert found[0] <= best + 1e-9


def test_unlimited_budget_is_store_all():
    model = random_chain(12, 3)
    sol = _check(model, None)
    store = solve(model, None, "store-all")
    assert sol.result.compute == store.result.compute == model.baseline_compute
    assert sol.result.peak_bytes == store.result.peak_bytes
    assert sol.params["grid"] == "none"


def test_infeasible_reports_the_least_budget():
    model = random_chain(30, 5)
    with pytest.raises(InfeasibleError) as info:
        dp(model, budget=model.input_bytes)
    least = info.value.least_bytes
    assert least > model.input_bytes
    sol = _check(model, least)
    assert sol.result.peak_bytes == least
    with pytest.raises(InfeasibleError):
        dp(model, budget=least - 1)


def test_rejects_dags_and_bad_levels():
    with pytest.raises(NotApplicableError, match="chains only"):
        dp(random_dag(6, 1, skip=0.9), budget=None)
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        dp(uniform_chain(3), budget=10**6, levels=1)
    with pytest.raises(ValueError, match="levels"):
        dp(uniform_chain(3), budget=10**6, levels=2.5)
    with pytest.raises(ValueError, match="levels"):
        dp(uniform_chain(3), budget=10**6, levels=10**7)
    # Beyond ~1,300 layers the O(n^3 x levels) table is refused, with a way out...
    with pytest.raises(TooLargeError, match="too large.*use revolve"):
        dp(uniform_chain(2000), budget=5000)
    # ...unless store-all fits, which needs no table.
    assert dp(uniform_chain(2000), budget=None)[1]["grid"] == "none"
    assert "dp" in applicable(uniform_chain(3))
    assert "dp" not in applicable(random_dag(6, 1, skip=0.9))


def _budgets(model):
    """Fractions of the store-all peak, plus every other strategy's own peak at them."""
    peak = store_all_peak(model)
    base = model.input_bytes
    result = {base + int((peak - base) * x) for x in (0.15, 0.25, 0.4, 0.6, 0.8, 0.95)}
    for budget in sorted(result):
        for outcome in run_all(model, budget, strategies=_others(model)):
            if outcome.feasible:
                result.add(outcome.solution.result.peak_bytes)
    return sorted(result)


def _others(model):
    return [name for name in applicable(model) if name not in NOT_COMPARED]


def _never_beaten(model, budgets):
    for budget in budgets:
        others = [o for o in run_all(model, budget, strategies=_others(model)) if o.feasible]
        if not others:
            continue
        best = min(o.solution.result.compute for o in others)
        sol = _check(model, budget)
        assert sol.result.compute <= best * (1 + TOLERANCE), (
            model.name,
            budget,
            sol.params,
            {o.strategy: o.solution.result.compute for o in others},
        )


@pytest.mark.parametrize("name", REAL)
def test_never_beaten_on_real_chains(name):
    model = load_model(DATA / "models" / f"{name}.json")
    assert model.is_chain
    _never_beaten(model, _budgets(model))


@pytest.mark.parametrize(
    "model",
    [uniform_chain(10), uniform_chain(30), random_chain(8, 1), random_chain(25, 2), random_chain(60, 3)],
    ids=lambda m: m.name,
)
def test_never_beaten_on_synthetic_chains(model):
    _never_beaten(model, _budgets(model))


def test_rounded_grid_fits_and_is_consistent():
    # 120 heterogeneous layers: too large for the exact byte grid.
    model = random_chain(120, 11)
    peak = store_all_peak(model)
    for fraction in (0.3, 0.6):
        budget = int(peak * fraction)
        sol = _check(model, budget)
        assert sol.params["grid"] == "rounded"
        assert sol.result.compute < solve(model, budget, "sequential").result.compute


def test_curve_never_rises():
    model = random_chain(16, 21)
    peak = store_all_peak(model)
    low = dp_least(model)
    previous = None
    for budget in list(range(low, peak, max(1, (peak - low) // 60))) + [peak]:
        _, params = dp(model, budget=budget)
        if previous is not None:
            assert params["dp_compute"] <= previous + 1e-9, budget
        previous = params["dp_compute"]
    assert previous == pytest.approx(model.baseline_compute)


def test_curve_never_rises_on_a_rounded_grid():
    model = load_model(DATA / "models" / "resnet18-cpu.json")
    low = dp_least(model)
    _, params = dp(model, budget=None)
    peak = params["dp_peak_bytes"]
    previous = None
    for k in range(16):
        budget = low + (peak - low) * k // 15
        _, params = dp(model, budget=budget)
        assert params["grid"] in ("rounded", "none")
        if previous is not None:
            assert params["dp_compute"] <= previous + 1e-9, budget
        previous = params["dp_compute"]
    assert previous == pytest.approx(model.baseline_compute)


def dp_least(model):
    with pytest.raises(InfeasibleError) as info:
        dp(model, budget=model.input_bytes - 1)
    return info.value.least_bytes


@settings(max_examples=examples(40), deadline=None)
@given(
    st.one_of(
        chains(min_layers=1, max_layers=5, fancy_names=False),
        chains(min_layers=1, max_layers=5, fancy_names=False, heavy_sink=True),
    ),
    st.data(),
)
def test_hypothesis_chains_match_exhaustive(model, data):
    schedules = persistent_schedules(model)
    peaks = sorted({peak for peak, _, _ in schedules})
    budget = data.draw(st.sampled_from(peaks + [peaks[0] - 1, peaks[-1] + 1]))
    best = persistent_optimum(schedules, budget)
    if best is None:
        with pytest.raises(InfeasibleError) as info:
            dp(model, budget=budget)
        assert info.value.least_bytes == peaks[0]
        return
    sol = _check(model, budget)
    assert sol.result.compute >= best - 1e-9 * max(1.0, best)
    if sol.params["grid"] in ("exact", "none"):
        assert sol.result.compute == pytest.approx(best, rel=1e-12, abs=1e-12)
    elif sol.result.compute > best * (1 + TOLERANCE) + 1e-12:
        # dp's documented promise on a rounded grid: optimal up to the rounding noise of a few
        # units of memory.  Found by hypothesis: byte-sized outputs beside a 1 MB sink, the budget
        # at a schedule's exact peak, where 4-byte units hide that schedule.
        assert sol.result.compute <= _optimum_below(schedules, budget, _rounding_slack(model, sol))


def _rounding_slack(model, sol):
    """The bytes a rounded grid may lose near the budget: half a unit per size a peak sums, and one."""
    return (len(model.layers) + 3) * sol.params["unit_bytes"]


def _optimum_below(schedules, budget, slack):
    """The optimum at ``budget - slack``; none there means any fitting schedule will do."""
    best = persistent_optimum(schedules, budget - slack)
    return float("inf") if best is None else best + 1e-12


def test_a_heavy_sink_counts_at_its_backward():
    # body -> head, the head's output 50x the body's, as logits are.  At the
    # head's backward: input, body, head, the head's gradient, body's gradient.
    model = with_heavy_sink(uniform_chain(2, output_bytes=100, input_bytes=10), factor=45)
    head = model.layers[-1].output_bytes
    least = 10 + 100 + head + head + 100
    sol = _check(model, least)
    assert sol.result.peak_bytes == sol.params["dp_peak_bytes"] == least
    with pytest.raises(InfeasibleError) as info:
        dp(model, budget=least - 1)
    assert info.value.least_bytes == least


def test_a_budget_bytes_above_a_peak_that_rounding_hides_is_solved_exactly():
    """Found by hypothesis: 1-byte outputs beside a 1 MB one, the budget equal to a schedule's peak.

    The rounded grid (4-byte units) found no schedule that fits, and dp fell back to the least-peak
    schedule (compute 3) although one of compute 2 fits: a chain this short affords the exact table.
    """
    model = model_from_dict({
        "format": "edgeplan-model/1", "name": "h", "input_bytes": 340997, "layers": [
            {"name": "L0", "forward": 1.0, "backward": 0.0, "output_bytes": 1, "saved_bytes": 1},
            {"name": "L1", "forward": 0.0, "backward": 0.0, "output_bytes": 1},
            {"name": "L2", "forward": 0.0, "backward": 0.0, "output_bytes": 0},
            {"name": "L3", "forward": 0.0, "backward": 0.0, "output_bytes": 1024000},
        ]})
    budget = 2388998
    assert persistent_optimum(persistent_schedules(model), budget) == 2.0
    sol = _check(model, budget)
    assert sol.result.compute == 2.0 and sol.params["grid"] == "exact-fallback"
    assert sol.result.peak_bytes <= budget
