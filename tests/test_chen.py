
import networkx as nx
import numpy as np
import pytest

from planner.errors import InfeasibleError
from planner.lowering import RECOMPUTE, STORE, insert_frees, segments_to_ops
from planner.model import model_from_dict
from planner.simulate import simulate
from planner.solvers import solve
from planner.lowering import chain_segments_peak
from planner.solvers.chen import (
    checkpoints_to_segments,
    greedy_checkpoints,
    split_points,
)
from planner.synthetic import random_chain, random_dag, uniform_chain
from tests.reference import replay_solution
from tests.strategies import with_heavy_sink


def residual_model():
    """input -> a -> b -> c(b, a) -> d -> e: a skip connection over b."""
    layers = [
        {"name": "a", "forward": 1, "backward": 2, "output_bytes": 10},
        {"name": "b", "forward": 1, "backward": 2, "output_bytes": 20},
        {"name": "c", "inputs": ["b", "a"], "forward": 1, "backward": 2, "output_bytes": 30},
        {"name": "d", "forward": 1, "backward": 2, "output_bytes": 40},
        {"name": "e", "forward": 1, "backward": 2, "output_bytes": 5},
    ]
    return model_from_dict(
        {"format": "edgeplan-model/1", "name": "residual", "input_bytes": 7, "layers": layers}
    )


def articulation_points(model):
    graph = model.graph().to_undirected()
    graph.remove_node(-1)
    return set(nx.articulation_points(graph))


def test_split_points():
    assert split_points(uniform_chain(6)) == [0, 1, 2, 3, 4]
    assert split_points(uniform_chain(1)) == []
    model = residual_model()
    assert split_points(model) == [0, 2, 3]
    assert articulation_points(model) == {2, 3}


@pytest.mark.parametrize("seed", range(8))
def test_split_points_are_articulation_points_where_the_order_can_be_cut(seed):
    model = random_dag(60, seed, skip=0.05)
    points = split_points(model)
    aps = articulation_points(model)
    assert set(points) - {0} <= aps
    for v in points:
        crossing = {(u, w) for w in range(v + 1, len(model)) for u in model.layers[w].inputs if u <= v}
        assert {u for u, _ in crossing} == {v}
    for v in aps - set(points):
        # an articulation point that the topological order cannot cut at
        assert any(u < v < w for w in range(len(model)) for u in model.layers[w].inputs)


def test_greedy_pass_follows_algorithm_3():
    costs = [5, 5, 5, 5, 5, 5]
    everywhere = [True] * 6
    assert greedy_checkpoints(costs, everywhere, 9) == [1, 3, 5]
    assert greedy_checkpoints(costs, everywhere, 10) == [2, 5]
    assert greedy_checkpoints(costs, everywhere, 100) == []
    assert greedy_checkpoints(costs, [False, False, False, True, False, False], 0) == [3]
    assert checkpoints_to_segments(6, [1, 3]) == [(0, 2, RECOMPUTE), (2, 4, RECOMPUTE), (4, 6, STORE)]
    assert checkpoints_to_segments(3, []) == [(0, 3, STORE)]


@pytest.mark.parametrize("seed", range(50))
def test_chain_peak_evaluation_is_the_simulators(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    model = random_chain(n, seed, workspaces=bool(seed % 2))
    if seed >= 40:  # the sink's output, held by the loss, is the largest tensor
        model = with_heavy_sink(model, factor=1 + seed % 3)
    for _ in range(6):
        count = int(rng.integers(0, n)) if n > 1 else 0
        points = sorted({int(v) for v in rng.integers(0, max(n - 1, 1), size=count)}) if n > 1 else []
        ops = segments_to_ops(model, checkpoints_to_segments(n, points))
        simulated = simulate(model, insert_frees(model, ops)).peak_bytes
        assert chain_segments_peak(model, [0] + [v + 1 for v in points]) == simulated


@pytest.mark.parametrize("seed", range(14))
def test_chains_and_dags_replay_exactly(seed):
    model = random_chain(40, seed) if seed % 2 else random_dag(40, seed, skip=0.1)
    if seed >= 10:
        model = with_heavy_sink(model)
    sol = solve(model, None, "chen-greedy")
    ref = replay_solution(model, sol)
    assert ref["valid"]
    assert ref["peak_bytes"] == sol.result.peak_bytes
    assert ref["compute"] == pytest.approx(sol.result.compute)
    assert sol.result.peak_bytes <= solve(model, None, "store-all").result.peak_bytes
    assert set(sol.params) == {"segment_budget", "checkpoints"}


def test_residual_dag_is_cut_only_at_split_points():
    model = residual_model()
    sol = solve(model, None, "chen-greedy")
    assert sol.result.valid
    assert replay_solution(model, sol)["valid"]


@pytest.mark.parametrize("seed", range(8))
def test_budget_is_met_or_least_memory_given(seed):
    model = random_chain(50, seed) if seed % 2 else random_dag(50, seed, skip=0.05)
    full = solve(model, None, "store-all").result.peak_bytes
    least = solve(model, None, "chen-greedy").result.peak_bytes
    for fraction in (0.3, 0.5, 0.8, 1.0):
        budget = int(full * fraction)
        try:
            sol = solve(model, budget, "chen-greedy")
        except InfeasibleError as exc:
            assert budget < least
            assert exc.least_bytes == least
            assert solve(model, exc.least_bytes, "chen-greedy").result.peak_bytes <= least
        else:
            assert sol.result.peak_bytes <= budget
            assert replay_solution(model, sol)["valid"]
    # With the whole store-all peak there is a plan without recomputation.
    assert solve(model, full, "chen-greedy").result.overhead == 0


def test_memory_is_sublinear_on_a_uniform_chain():
    model = uniform_chain(400)
    peak = solve(model, None, "chen-greedy").result.peak_bytes
    sqrt_n = solve(model, None, "sqrt-n").result.peak_bytes
    assert peak <= sqrt_n * 1.05
    assert peak < solve(model, None, "store-all").result.peak_bytes / 5


def test_scales():
    chain = random_chain(20_000, 1)
    sol = solve(chain, None, "chen-greedy")
    assert sol.result.valid and sol.params["checkpoints"] > 50
    dag = random_dag(2_000, 1, skip=0.02)
    sol = solve(dag, None, "chen-greedy")
    assert sol.result.valid and sol.params["checkpoints"] > 0


def test_huge_sizes_fall_back_to_the_simulator():
    layers = [
        {"name": f"L{i}", "forward": 1, "backward": 1, "output_bytes": 2**62 // 14}
        for i in range(6)
    ]
    model = model_from_dict(
        {"format": "edgeplan-model/1", "name": "huge", "input_bytes": 1000, "layers": layers}
    )
    sol = solve(model, None, "chen-greedy")
    assert replay_solution(model, sol)["peak_bytes"] == sol.result.peak_bytes
    assert sol.result.peak_bytes <= solve(model, None, "store-all").result.peak_bytes
