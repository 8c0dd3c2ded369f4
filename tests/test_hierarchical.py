"""``hierarchical`` (planner/solvers/blocks.py) and the held small tensors (planner/holding.py)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import InfeasibleError
from planner.holding import HOLD_MIN_LAYERS, held_view
from planner.lowering import insert_frees, splitting_vertices
from planner.model import load_model
from planner.simulate import simulate
from planner.solvers import applicable, run_all, solve, solving_model
from planner.solvers.blocks import MILP_BLOCK_SECONDS, _Plan, hierarchical, model_blocks
from planner.synthetic import random_chain, transformer_dag
from tests.conftest import DATA
from tests.exhaustive import block_class
from tests.strategies import block_dags, budgets, examples, store_all_peak
from tests.test_properties import check_solution, check_strategy


def _plan(model):
    return _Plan(model, {})


# ---- the program is exact for its class ---------------------------------------------------------


@settings(max_examples=examples(25), deadline=None)
@given(model=block_dags(max_blocks=3, max_block_layers=3), levels=st.integers(8, 60))
def test_the_program_equals_the_exhaustive_search_of_its_class(model, levels):
    """At every memory level the table's least compute is the least over every schedule of the class."""
    check_against_its_class(model, _plan(model), levels)


def check_against_its_class(model, plan, levels):
    """``plan``'s table on a grid of about ``levels`` levels equals the exhaustive search of its class."""
    top = store_all_peak(model)
    unit = max(1, -(-top // levels))
    row = plan.solve_table(2 * levels, unit)
    schedules = block_class(plan, unit)
    for m in range(0, 2 * levels + 1, max(1, levels // 8)):
        fits = [c for need, c, _ in schedules if need <= m]
        if not fits:
            assert not np.isfinite(row[m])
            continue
        assert math.isclose(row[m], min(fits), rel_tol=1e-9, abs_tol=1e-9)
        ops = plan.ops(m)
        sim = simulate(model, insert_frees(model, ops))
        assert sim.valid, sim.error
        assert math.isclose(sim.compute, row[m], rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=examples(25), deadline=None)
@given(model=block_dags(max_blocks=3, max_block_layers=3))
def test_the_cost_model_never_undercounts(model):
    """Every schedule of the class replays validly and peaks at most at what the program counts for it."""
    plan = _plan(model)
    unit = max(1, store_all_peak(model) // 50)
    for need, compute, ops in block_class(plan, unit):
        sim = simulate(model, insert_frees(model, ops))
        assert sim.valid, sim.error
        assert sim.peak_bytes <= need * unit
        assert math.isclose(sim.compute, compute, rel_tol=1e-9, abs_tol=1e-9)


# ---- the registry's contract on graphs with blocks ----------------------------------------------


@settings(max_examples=examples(30), deadline=None)
@given(data=st.data())
def test_schedules_replay_and_fit_on_graphs_with_blocks(data):
    model = data.draw(block_dags(max_blocks=4, max_block_layers=3), label="model")
    budget = data.draw(budgets(model), label="budget")
    check_strategy(model, budget, "hierarchical", {})


@settings(max_examples=examples(15), deadline=None)
@given(data=st.data())
def test_auto_is_never_worse_than_any_strategy_on_graphs_with_blocks(data):
    model = data.draw(block_dags(max_blocks=4, max_block_layers=3), label="model")
    budget = data.draw(budgets(model), label="budget")
    outcomes = run_all(model, budget, options={"time_limit": 20.0})
    feasible = [o.solution.result.compute for o in outcomes if o.feasible]
    try:
        best = solve(model, budget, "auto", time_limit=20.0)
    except InfeasibleError:
        assert not feasible
        return
    assert best.result.compute <= min(feasible) + 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_stays_optimal_on_chains(seed):
    chain = random_chain(10, seed)
    assert held_view(chain) is None  # chains never change
    top = store_all_peak(chain)
    for fraction in (0.4, 0.6, 0.8):
        budget = int(top * fraction)
        try:
            ours = solve(chain, budget, "hierarchical")
        except InfeasibleError:
            continue
        theirs = solve(chain, budget, "dp")
        assert theirs.result.compute <= ours.result.compute * 1.005 + 1e-9


def test_hierarchical_is_in_the_default_set_of_dags_and_chains():
    assert "hierarchical" in applicable(random_chain(5, 0))
    assert "hierarchical" in applicable(transformer_dag(2))


def test_a_model_without_cut_points_is_one_block():
    model = transformer_dag(2, mask=False)
    # the embedding is read by the first block's residual add: no cut before it
    blocks = model_blocks(model)
    assert blocks[0][0] == 0 and blocks[-1][1] == len(model)
    assert all(a < b for a, b in blocks)


def test_least_memory_does_not_depend_on_the_budget():
    model = solving_model(transformer_dag(3))
    with pytest.raises(InfeasibleError) as low:
        hierarchical(model, budget=1)
    least = low.value.least_bytes
    ops, _ = hierarchical(model, budget=least)
    assert simulate(model, insert_frees(model, ops)).peak_bytes <= least
    with pytest.raises(InfeasibleError) as below:
        hierarchical(model, budget=least - 1)
    assert below.value.least_bytes == least


@pytest.mark.parametrize("name", ["llama-hf-ops", "gpt2-hf-ops"])
def test_the_plans_do_not_depend_on_how_busy_the_machine_is(name, monkeypatch):
    """milp's menu options stop on HiGHS' work (nodes), not on the clock: a machine 6x busier
    (the same work against a 6x shorter time cap) gives the same plans at 50% and 70% of store-all."""
    model = load_model(DATA / "models" / f"{name}.json")
    top = store_all_peak(model)
    sizes = [int(top * fraction) for fraction in (0.5, 0.7)]
    quiet = [solve(model, budget, "hierarchical").ops for budget in sizes]
    monkeypatch.setattr("planner.solvers.blocks.MILP_BLOCK_SECONDS", MILP_BLOCK_SECONDS / 6)
    busy = [solve(model, budget, "hierarchical").ops for budget in sizes]
    assert busy == quiet


# ---- held small tensors -------------------------------------------------------------------------


def test_a_shared_mask_is_held_and_gives_cut_points():
    model = transformer_dag(4)
    view = held_view(model)
    assert view.held_names == ["mask"]
    before = len(splitting_vertices(model, input_edges=False))
    after = len(splitting_vertices(view.model, input_edges=False))
    assert after >= before + 4  # at least one per block
    # the held output, its gradient and its saved data, for the whole step
    mask = model.layers[model.index["mask"]]
    assert view.model.input_bytes == model.input_bytes + 2 * mask.output_bytes + mask.saved_bytes


def test_nothing_is_held_on_chains_small_models_or_without_a_shared_tensor():
    assert held_view(random_chain(30, 1)) is None
    assert held_view(transformer_dag(1)) is None or len(transformer_dag(1)) >= HOLD_MIN_LAYERS
    assert held_view(transformer_dag(4, mask=False)) is None


def test_a_hidden_state_is_never_held():
    model = transformer_dag(4)
    assert "embed" not in held_view(model).held_names


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_every_strategy_solves_the_reduced_model_and_replays_on_the_original(fraction):
    model = transformer_dag(4, seed=3)
    budget = int(store_all_peak(model) * fraction)
    outcomes = run_all(model, budget, options={"time_limit": 2.0})
    assert any(o.feasible for o in outcomes)
    for outcome in outcomes:
        if not outcome.feasible:
            continue
        solution = outcome.solution
        check_solution(model, solution, budget, outcome.strategy)
        assert solution.params["held"] == ["mask"]
        ops = list(solution.ops)
        mask = model.index["mask"]
        assert ops[0].layer == mask  # computed first
        backwards = [op.layer for op in ops if op.kind.value == "backward"]
        assert backwards[-1] == mask  # its backward runs last


def test_holding_makes_the_segment_strategies_work_on_a_transformer():
    """Without the held mask reforward finds no cut; with it its least memory falls a lot."""
    model = transformer_dag(6)
    top = store_all_peak(model)
    with pytest.raises(InfeasibleError) as held:
        solve(model, 0, "reforward")
    assert held.value.least_bytes < 0.5 * top


def test_a_mask_with_a_little_workspace_is_held_beside_block_sized_layers():
    """BERT profiled by blocks: a 64 KB mask (2 KB forward workspace) read by every 256 KB-output block."""
    from planner.model import model_from_dict

    layers = [{"name": "emb", "forward": 1, "backward": 1, "output_bytes": 262144},
              {"name": "mask", "inputs": ["input"], "forward": 1, "backward": 0, "output_bytes": 65536,
               "workspace_forward": 2305, "needs_inputs": False}]
    previous = "emb"
    for k in range(16):
        layers.append({"name": f"block{k}", "inputs": [previous, "mask"], "forward": 4, "backward": 8,
                       "output_bytes": 262144, "saved_bytes": 7_610_368})
        previous = f"block{k}"
    model = model_from_dict({"format": "edgeplan-model/1", "name": "bert-blocks", "input_bytes": 1024,
                             "layers": layers})
    view = held_view(model)
    assert view is not None and view.held_names == ["mask"]
