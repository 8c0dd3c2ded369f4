"""planner.report and sweep.plan: the answers the CLI prints, reached without a terminal."""

import dataclasses

import pytest
from hypothesis import given, settings

from planner import report, solvers, sweep
from planner.budget import split_memory
from planner.errors import InfeasibleError, OptionError
from planner.model import load_model, model_from_dict
from planner.simulate import simulate
from tests.conftest import RESNET18
from tests.strategies import models

@pytest.fixture(scope="module")
def resnet():
    return load_model(RESNET18)


@settings(max_examples=25, deadline=None)
@given(model=models(max_layers=8))
def test_compare_best_row_is_the_registry_choice(model):
    """The starred row is what ``solve --strategy auto`` returns, and it is the first feasible row."""
    peak = solvers.solve(model, None, "store-all").result.peak_bytes
    budget = split_memory(model, peak * 3 // 4 + model.params_bytes * 2, "sgd")
    outcomes = solvers.run_all(model, budget.activation_bytes)
    rows = report.compare_rows(outcomes, budget)
    best = [row for row in rows if row["best"]]
    chosen = solvers.best(outcomes)
    if chosen is None:
        assert best == [] and not any(row["feasible"] for row in rows)
        return
    assert [row["strategy"] for row in best] == [chosen.strategy]
    assert rows[0]["best"] and rows[0]["feasible"]
    assert all(row["feasible"] for row in rows[: sum(r["feasible"] for r in rows)])


def test_check_memory_refuses_memory_below_the_fixed_memory(resnet):
    fixed = split_memory(resnet, 0, "adam").fixed_bytes
    with pytest.raises(report.Refusal, match=r"less than the fixed memory.*least memory that works") as info:
        report.check_memory(resnet, fixed - 1, "adam")
    fields = info.value.fields
    assert fields["feasible"] is False and fields["fixed_bytes"] == fixed
    assert fields["least_memory_bytes"] == fields["least_activation_bytes"] + fixed
    # The least memory it names works: a schedule fits at exactly that memory.
    budget = report.check_memory(resnet, fields["least_memory_bytes"], "adam")
    solution = solvers.solve(resnet, budget.activation_bytes)
    assert solution.result.peak_bytes <= budget.activation_bytes


def test_infeasible_names_the_least_memory(resnet):
    budget = split_memory(resnet, resnet.params_bytes * 2 + 10, "sgd")
    refusal = report.infeasible(InfeasibleError("no", least_bytes=1000), budget)
    assert refusal.least_bytes == 1000 and refusal.fields["least_memory_bytes"] == 1000 + budget.fixed_bytes
    assert f"{1000 + budget.fixed_bytes:,} bytes" in str(refusal)
    plain = report.infeasible(InfeasibleError("no"), budget)
    assert str(plain) == "no" and plain.fields["least_memory_bytes"] is None


def test_check_schedule_verdicts(resnet):
    solution = solvers.solve(resnet, None, "store-all")
    schedule = solution.schedule
    peak = solution.result.peak_bytes
    fits = report.check_schedule(resnet, schedule, memory=peak + resnet.params_bytes * 2)
    assert fits.ok and fits.fits is True and fits.to_dict()["fits"] is True
    tight = report.check_schedule(resnet, schedule, memory=peak - 1 + resnet.params_bytes * 2)
    assert not tight.ok and tight.fits is False
    assert "does not fit the activation budget" in tight.problems[0]
    other = report.check_schedule(resnet, dataclasses.replace(schedule, fingerprint="sha256:0"))
    assert other.fits is None and not other.fingerprint_matches
    assert "made for another model" in other.problems[0] and other.to_dict()["problems"] == list(other.problems)
    broken = dataclasses.replace(schedule, ops=schedule.ops[:-1])
    verdict = report.check_schedule(resnet, broken)
    assert not verdict.result.valid and verdict.to_dict()["error"] == str(simulate(resnet, broken.ops).error)


def test_sweep_plan_sizes_and_bad_range(resnet):
    plan = sweep.plan(resnet, steps=4, strategies=["store-all", "sqrt-n"])
    assert plan.sizes[0] == plan.span.least_memory_bytes and plan.sizes[-1] == plan.span.store_all_memory_bytes
    assert len(plan.sizes) == 4
    capped = sweep.plan(resnet, steps=3, strategies=["store-all"], device_memory=plan.sizes[1])
    assert capped.sizes[-1] == max(plan.sizes[1], capped.span.least_memory_bytes)
    with pytest.raises(OptionError, match=r"--from 10 bytes is above --to 5 bytes"):
        sweep.plan(resnet, low=10, high=5, strategies=["store-all"])


def test_best_overheads_is_the_least_feasible_overhead():
    point = sweep.SweepPoint
    points = [point(10, 5, "a", False), point(10, 5, "b", False),
              point(20, 15, "a", True, peak_bytes=1, compute=3, overhead=0.5),
              point(20, 15, "b", True, peak_bytes=1, compute=2, overhead=0.25)]
    assert sweep.best_overheads(points) == {10: None, 20: 0.25}


def test_is_chain_of_a_profiled_document():
    """profile's summary line says chain or DAG from the document, through Model.is_chain."""
    def doc(layers):
        return {"format": "edgeplan-model/1", "name": "m", "input_bytes": 1,
                "layers": [dict(layer, forward=1.0, backward=1.0, output_bytes=1) for layer in layers]}
    layers = [{"name": "a", "inputs": ["input"]}, {"name": "b", "inputs": ["a"]}]
    assert model_from_dict(doc(layers)).is_chain
    assert not model_from_dict(doc(layers + [{"name": "c", "inputs": ["a", "b"]}])).is_chain
