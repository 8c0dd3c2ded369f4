"""Every paging strategy (``needs_storage``) against the registry's contract, and the registry's paging rules.

The counterpart of tests/test_properties.py for strategies that need a
storage: random models with a time unit, random storages, random budgets;
every solution is replayed by the simulator and by the reference replay of
its written file, transfer included.
"""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.device import PRESETS, Storage
from planner.errors import InfeasibleError, ModelError, NotApplicableError
from planner.model import model_from_dict
from planner.schedule import RECORD_KINDS, OpKind, schedule_from_dict
from tests.conftest import schema_errors
from planner.simulate import simulate
from planner.solvers import STRATEGIES, applicable, run_all, solve
from tests.reference import replay_solution
from tests.strategies import budgets, examples, paging_cases

PAGING = sorted(name for name, s in STRATEGIES.items() if s.needs_storage)
MAX_LAYERS = {"milp-paging": 5}
OPTIONS = {"time_limit": 20.0}


def _options(name):
    return {k: v for k, v in OPTIONS.items() if k in STRATEGIES[name].options}


def check_solution(model, solution, budget, storage):
    result = solution.result
    assert result.valid, result.error
    if budget is not None:
        assert result.peak_bytes <= budget
    again = simulate(model, iter(solution.ops), storage=storage)
    assert solution.schedule.predicted == again.predicted()
    document = json.loads("".join(solution.schedule.iter_json(model)))
    assert schema_errors(document, "schedule.schema.json") == []
    records = any(op.kind in RECORD_KINDS for op in solution.ops)  # SPEC section 5's /2 has no record ops
    paging = "edgeplan-schedule/3" if records or (storage is not None and storage.overlap) else "edgeplan-schedule/2"
    assert document["format"] == (paging if result.pages else "edgeplan-schedule/1")
    back = schedule_from_dict(document, model)
    assert back.ops == tuple(solution.ops)
    assert back.storage == (storage if result.pages else None)
    ref = replay_solution(model, solution)
    assert ref["valid"], ref
    assert ref["peak_bytes"] == result.peak_bytes and ref["forwards"] == result.forwards
    assert math.isclose(ref["compute"], result.compute, rel_tol=1e-9, abs_tol=1e-9)
    if result.pages:
        assert (ref["pageouts"], ref["pageins"]) == (result.pageouts, result.pageins)
        assert math.isclose(ref["transfer"], result.transfer, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(ref["overhead"], result.overhead, rel_tol=1e-9, abs_tol=1e-9)
    backwards = sorted(op.layer for op in solution.ops if op.kind is OpKind.BACKWARD)
    assert backwards == list(range(len(model)))


@pytest.mark.parametrize("name", PAGING)
def test_paging_strategy_contract(name):
    chains_only = STRATEGIES[name].chains_only

    @settings(max_examples=examples(25))
    @given(data=st.data())
    def run(data):
        cases = paging_cases(max_layers=MAX_LAYERS.get(name, 8), dag=not chains_only)
        _, model, storage = data.draw(cases, label="model")
        assert name in applicable(model, storage=storage)
        budget = data.draw(budgets(model), label="budget")
        try:
            solution = solve(model, budget, name, storage=storage, **_options(name))
        except InfeasibleError as exc:
            assert budget is not None and exc.least_bytes is not None and budget < exc.least_bytes
            at_least = solve(model, exc.least_bytes, name, storage=storage, **_options(name))
            check_solution(model, at_least, exc.least_bytes, storage)
            return
        check_solution(model, solution, budget, storage)

    run()


def _chain():
    return model_from_dict({
        "format": "edgeplan-model/1", "name": "c", "input_bytes": 10, "time_unit": "s",
        "layers": [{"name": f"l{i}", "forward": 5.0, "backward": 5.0, "output_bytes": 1000}
                   for i in range(6)],
    })


def test_paging_strategies_join_only_with_a_storage():
    m = _chain()
    plain = applicable(m)
    assert not set(PAGING) & set(plain)
    with_storage = applicable(m, storage=PRESETS["rpi4-4gb-sd"].storage)
    assert with_storage[: len(plain)] == plain and set(PAGING) <= set(with_storage)
    assert [o.strategy for o in run_all(m, None)] == plain


@pytest.mark.parametrize("name", PAGING)
def test_a_paging_strategy_without_storage_does_not_apply(name):
    with pytest.raises(NotApplicableError, match="none is given"):
        solve(_chain(), None, name)


def test_paging_needs_a_time_unit_before_anything_runs():
    doc = _chain().to_dict()
    doc["time_unit"] = "flop"
    m = model_from_dict(doc)
    with pytest.raises(ModelError, match="time_unit is a time"):
        solve(m, None, "auto", storage=PRESETS["rpi4-4gb-sd"].storage)
    with pytest.raises(ModelError, match="time_unit is a time"):
        run_all(m, None, storage=PRESETS["rpi4-4gb-sd"].storage)
    assert solve(m, None, "auto").strategy == "store-all"  # without a storage nothing changes


def test_auto_counts_transfer_time():
    """Fast storage: auto pages a checkpoint instead of recomputing more; slow storage: it recomputes."""
    m = _chain()
    budget = 5000
    plain = solve(m, budget, "auto")
    fast = solve(m, budget, "auto", storage=Storage(1e12, 1e12))
    assert fast.result.pages and fast.schedule.format == "edgeplan-schedule/2"
    assert fast.result.compute + fast.result.transfer < plain.result.compute
    slow = solve(m, budget, "auto", storage=Storage(1.0, 1.0))
    assert not slow.result.pages and slow.result.compute == plain.result.compute
    outcomes = run_all(m, budget, storage=Storage(1e12, 1e12))
    best = min(o.solution.result.compute + o.solution.result.transfer for o in outcomes if o.feasible)
    assert fast.result.compute + fast.result.transfer == best
