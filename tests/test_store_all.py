import json

import pytest

from planner.model import load_model
from planner.solvers import solve
from planner.synthetic import random_chain, random_dag
from tests.checks import check_least_budget_is_own_peak
from tests.conftest import DATA
from tests.reference import replay_solution



@pytest.mark.parametrize("seed", range(20))
def test_store_all_replays_exactly(seed):
    m = random_dag(15, seed) if seed % 2 else random_chain(15, seed)
    sol = solve(m, None, "store-all")
    ref = replay_solution(m, sol)
    assert ref["valid"]
    assert ref["peak_bytes"] == sol.schedule.predicted["peak_bytes"] == sol.result.peak_bytes
    assert ref["compute"] == pytest.approx(sol.schedule.predicted["compute"])
    assert sol.result.overhead == 0
    assert sol.result.forwards == len(m)


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_store_all_matches_the_gpu_measurement(name):
    m = load_model(DATA / "models" / f"{name}.json")
    measured = json.loads((DATA / "measured" / f"{name}.measured.json").read_text())
    plain = next(r for r in measured["measured"] if r["segments"] == 0)
    predicted = solve(m, None, "store-all").result.peak_bytes - m.input_bytes
    assert abs(predicted / plain["peak_bytes"] - 1) < 0.01


def test_budget_is_checked():
    check_least_budget_is_own_peak(random_chain(10, 1), "store-all")
