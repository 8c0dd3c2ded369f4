"""Tests of ``milp-paging``: recomputation and paging for any DAG by a mixed-integer program."""

import pytest

from planner.device import PRESETS
from planner.errors import InfeasibleError, ModelError
from planner.lowering import store_all_ops
from planner.simulate import simulate
from planner.solvers import solve
from planner.solvers.dp_paging import dp_paging
from planner.solvers.milp_paging import _Program, milp_paging
from planner.model import model_from_dict
from planner.synthetic import random_chain, random_dag
from tests.conftest import fork_document
from tests.exhaustive_paging import lower_holding_sink, optimal_schedule
from tests.paging_setup import random_storage, timed
from tests.reference import replay_solution

LIMIT = 20.0


def _top(model):
    """Store-all's peak with the sink's output held until its backward (SPEC section 3)."""
    return simulate(model, lower_holding_sink(model, store_all_ops(model))).peak_bytes


def _measure(model, ops, storage):
    """Simulator's (peak, cost) of ``ops`` re-lowered with the sink held (what milp-paging counts)."""
    result = simulate(model, lower_holding_sink(model, ops), storage=storage)
    assert result.valid, result.error
    return result.peak_bytes, result.compute + result.transfer


@pytest.mark.parametrize("seed", range(4))
def test_between_the_unrestricted_optimum_and_dp_paging_on_small_chains(seed):
    model = timed(random_chain(4 + seed % 2, 700 + seed))
    storage = random_storage(700 + seed)
    top = _top(model)
    for frac in (0.55, 0.7, 0.85):
        budget = int(top * frac)
        try:
            dp_ops, dp_params = dp_paging(model, budget=budget, storage=storage)
        except InfeasibleError:
            continue
        ops, params = milp_paging(model, budget=budget, storage=storage, time_limit=LIMIT)
        peak, cost = _measure(model, ops, storage)
        assert peak <= budget
        assert cost <= dp_params["dp_cost"] * (1 + 1e-9)  # dp-paging's schedules are in its space
        if params["proven_optimal"]:
            best, _ = optimal_schedule(model, budget, storage)
            assert best <= cost * (1 + 1e-9)


@pytest.mark.parametrize("seed", [903, 906, 907, 919])  # DAGs with two or three layers read twice or more
def test_never_below_the_unrestricted_optimum_on_small_dags(seed):
    # The search over every schedule (paging included) checks its peak against the simulator's.
    model = timed(random_dag(5, seed, skip=0.5))
    assert any(len(c) > 1 for c in model.consumers)
    storage = random_storage(seed)
    top = _top(model)
    for frac in (0.7, 0.8, 0.9):
        budget = int(top * frac)
        found = optimal_schedule(model, budget, storage)
        try:
            ops, _ = milp_paging(model, budget=budget, storage=storage, time_limit=LIMIT)
        except InfeasibleError:
            continue
        assert found is not None
        peak, cost = _measure(model, ops, storage)
        assert peak <= budget
        assert found[0] <= cost * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_dags_fit_and_are_never_worse_than_page_all_or_store_all(seed):
    model = timed(random_dag(7 + seed, 800 + seed, skip=0.5))
    storage = random_storage(800 + seed)
    top = _top(model)
    for frac in (0.6, 0.8, 1.0):
        budget = int(top * frac)
        try:
            sol = solve(model, budget, "milp-paging", storage=storage, time_limit=LIMIT)
        except InfeasibleError:
            continue
        assert sol.result.valid and sol.result.peak_bytes <= budget
        ref = replay_solution(model, sol)
        assert ref["valid"] and ref["peak_bytes"] == sol.result.peak_bytes
        cost = sol.result.step_time
        for other in ("page-all", "store-all", "chen-greedy"):
            try:
                o = solve(model, budget, other, storage=storage)
            except InfeasibleError:
                continue
            assert cost <= o.result.step_time * (1 + 1e-9), other


def test_never_worse_than_dp_and_dp_paging_on_a_chain():
    model = timed(random_chain(12, 17))
    storage = PRESETS["jetson-tx2-8gb"].storage
    top = _top(model)
    for frac in (0.45, 0.65):
        budget = int(top * frac)
        # Through the registry, which hands milp-paging the other strategies' schedules.
        sol = solve(model, budget, "milp-paging", storage=storage, time_limit=LIMIT)
        ops, params = sol.ops, sol.params
        result = simulate(model, ops, storage=storage)
        assert result.valid and result.peak_bytes <= budget
        cost = result.step_time
        for name in ("dp", "dp-paging", "page-all"):
            try:
                o = solve(model, budget, name, storage=storage)
            except InfeasibleError:
                continue
            assert cost <= o.result.step_time * (1 + 1e-9), name
        assert params["start"] is not None


def test_encode_decode_round_trip_of_dp_paging_schedules():
    model = timed(random_chain(8, 18))
    storage = random_storage(3)
    form = _Program(model, storage, 1e3)
    top = _top(model)
    encoded = 0
    for frac in (0.5, 0.6, 0.75):
        budget = int(top * frac)
        try:
            ops, params = dp_paging(model, budget=budget, storage=storage)
        except InfeasibleError:
            continue
        x = form.encode(ops, budget // form.unit)
        assert x is not None
        encoded += 1
        peak, cost = _measure(model, form.decode(x), storage)
        assert peak <= budget
        assert cost == pytest.approx(params["dp_cost"], rel=1e-12)
        assert float(form.cost @ x) + model.baseline_compute == pytest.approx(cost, rel=1e-9)
        assert form.encode(ops, (peak - 1) // form.unit) is None or form.unit > 1  # the memory rows bind
    assert encoded


def test_storage_capacity():
    model = timed(random_chain(8, 19))
    storage = random_storage(4, capacity=min(l.output_bytes for l in model.layers))
    budget = int(_top(model) * 0.6)
    try:
        ops, _ = milp_paging(model, budget=budget, storage=storage, time_limit=LIMIT)
    except InfeasibleError:
        return
    result = simulate(model, ops, storage=storage)
    assert result.valid, result.error  # the simulator rejects a pageout beyond the capacity
    assert result.peak_bytes <= budget


def test_infeasible_and_errors():
    model = timed(random_dag(6, 5))
    storage = random_storage(5)
    with pytest.raises(InfeasibleError):
        milp_paging(model, budget=model.input_bytes, storage=storage, time_limit=LIMIT)
    with pytest.raises(ValueError, match="time-limit"):
        milp_paging(model, budget=10, storage=storage, time_limit=-1)
    with pytest.raises(ModelError, match="time_unit"):
        milp_paging(random_dag(6, 5), budget=10, storage=storage)


def test_a_fork_counts_the_fresh_gradient():
    # a (5000) is read by b and c; b's backward, after c's, adds a fresh gradient of a.
    model = timed(model_from_dict(fork_document()))
    storage = random_storage(6)
    form = _Program(model, storage, 1e3)
    plain = store_all_ops(model)
    peak = _top(model)
    assert peak == 1 + 5000 + 5000 + 10 + 5000
    assert form.unit == 1
    assert form.encode(plain, peak) is not None
    assert form.encode(plain, peak - 1) is None  # the row of b's backward holds the fresh gradient
    solution = solve(model, peak, "milp-paging", storage=storage, time_limit=LIMIT)
    ref = replay_solution(model, solution)
    assert ref["valid"] and ref["peak_bytes"] == solution.result.peak_bytes == peak
    # b's backward reads a and holds a's gradient and the fresh one: no paging goes below that
    with pytest.raises(InfeasibleError) as caught:
        solve(model, peak - 1, "milp-paging", storage=storage, time_limit=LIMIT)
    assert caught.value.least_bytes == peak


def test_params_carry_the_gap_to_highs_dual_bound():
    model = timed(random_dag(6, 5))
    storage = random_storage(8)
    solution = solve(model, _top(model) * 3 // 5, "milp-paging", storage=storage, time_limit=LIMIT)
    if solution.params["proven_optimal"] and solution.params.get("kept") is None:
        assert 0 <= solution.params["gap"] <= 1e-4
    assert 0 <= solution.params["gap"] <= 1
