import csv
import json
import math
import types
from itertools import islice

import pytest
from click.testing import CliRunner

from cli import main
from planner.errors import InfeasibleError, NotApplicableError
from planner.lowering import insert_frees
from planner.schedule import OpKind
from planner.simulate import simulate
from planner.solvers import solve
from planner.solvers.revolve import (
    balanced_snapshots,
    binomial_split,
    numforw,
    repetitions,
    revolve_ops,
)
from planner.solvers import revolve as revolve_module
from planner.synthetic import random_chain, random_dag, uniform_chain
from tests.conftest import DATA
from tests.reference import replay_solution
from tests.strategies import with_heavy_sink


def schedule_forwards(l, snapshots):
    """Forward ops of the schedule revolve_ops makes, counted by walking its recursion.

    The walk is revolve's own (not the closed form), so the tests can compare the two.
    """
    advances, _, _ = revolve_module._walk(l, revolve_module._tasks_check(l, snapshots))
    return l + advances

GRID = DATA / "revolve" / "derived_numforw_grid.csv"


def closed_form(l, c):
    """numforw(l, c) = r*l - binom(c + r, c + 1), written independently of the module."""
    if c == 1:
        return l * (l - 1) // 2
    r = 0
    while math.comb(c + r, c) < l:
        r += 1
    return r * l - math.comb(c + r, c + 1)


def grid_rows():
    with open(GRID, newline="") as f:
        return [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_numforw_examples():
    assert numforw(10, 3) == 15
    assert numforw(100, 5) == 316
    assert numforw(1000, 10) == 3636
    assert numforw(100, 10) == 222
    assert [numforw(l, 1) for l in (1, 2, 5, 10)] == [0, 1, 10, 45]
    with pytest.raises(ValueError):
        numforw(0, 3)


def test_every_row_of_the_compiled_revolve_grid():
    rows = grid_rows()
    assert len(rows) == 69
    for row in rows:
        l, c = row["steps"], row["snapshots"]
        assert numforw(l, c) == row["numforw"] == row["advance_steps_from_schedule"], row
        assert repetitions(l, c) == row["repetition_r"], row
        # c revolve snapshots = the model input + (c - 1) layer outputs
        assert schedule_forwards(l, c - 1) == l + row["numforw"], row


@pytest.mark.parametrize("row", [r for r in grid_rows() if r["steps"] * r["repetition_r"] <= 40_000])
def test_generated_schedule_of_grid_rows(row):
    l, c = row["steps"], row["snapshots"]
    model = uniform_chain(l)
    result = simulate(model, revolve_ops(model, c - 1))
    assert result.valid, result.error
    assert result.forwards == l + row["numforw"]


def test_forward_count_is_the_binomial_optimum_for_every_l_and_c():
    # Bottom-up over the split rule the generator uses: T[c][l] advance steps.
    max_l, max_c = 1000, 51
    table = {1: [0] + [l * (l - 1) // 2 for l in range(1, max_l + 1)]}
    for c in range(2, max_c + 1):
        row = [0, 0]
        prev = table[c - 1]
        for l in range(2, max_l + 1):
            m = binomial_split(l, c)
            assert 1 <= m < l
            row.append(m + prev[l - m] + row[m])
        table[c] = row
        for l in range(1, max_l + 1):
            assert row[l] == closed_form(l, c), (l, c)
    # The generator's own recursion, walked, for a sample.
    for l in (1, 2, 7, 64, 333, 1000):
        for snapshots in (0, 1, 2, 5, 17, 50):
            assert schedule_forwards(l, snapshots) == l + table[min(snapshots, l - 1) + 1][l]


def _max_outputs_held(ops):
    held = set()
    most = 0
    for op in ops:
        if op.kind is OpKind.FORWARD:
            held.add(op.layer)
            most = max(most, len(held))
        elif op.kind is OpKind.FREE:
            held.remove(op.layer)
    return most


@pytest.mark.parametrize("l", [1, 2, 3, 10, 37, 120])
@pytest.mark.parametrize("snapshots", [0, 1, 2, 3, 6, 200])
def test_sample_of_real_schedules(l, snapshots):
    model = uniform_chain(l)
    sol = solve(model, None, "revolve", snapshots=snapshots)
    c = min(snapshots, l - 1) + 1
    assert sol.result.forwards == l + closed_form(l, c)
    assert sol.params == {"snapshots": snapshots}
    ref = replay_solution(model, sol)
    assert ref["valid"]
    assert ref["peak_bytes"] == sol.result.peak_bytes
    assert ref["forwards"] == sol.result.forwards
    # At most C checkpoints plus the running output and the one being made.
    assert _max_outputs_held(sol.ops) <= min(snapshots, l - 1) + 2


def _normalised(ops):
    """Compute ops with the frees between them as sorted groups."""
    result, group = [], []
    for op in ops:
        if op.kind is OpKind.FREE:
            group.append(op.layer)
        else:
            result.append(tuple(sorted(group)))
            result.append(op)
            group = []
    result.append(tuple(sorted(group)))
    return result


@pytest.mark.parametrize("seed", range(16))
def test_own_frees_are_those_of_the_shared_lowering(seed):
    model = random_chain(1 + 3 * seed, seed)
    if seed >= 12:  # logits dominate: held by the loss until the head's backward
        model = with_heavy_sink(model)
    for snapshots in (0, 1, 2, 4, 40):
        own = list(revolve_ops(model, snapshots))
        shared = insert_frees(model, list(revolve_ops(model, snapshots, frees=False)))
        assert _normalised(own) == _normalised(shared)
        result = simulate(model, own)
        assert result.valid, result.error


@pytest.mark.parametrize("seed", range(8))
def test_heterogeneous_chains_replay_exactly(seed):
    model = random_chain(25, seed) if seed < 6 else with_heavy_sink(random_chain(25, seed))
    for snapshots in (0, 3, 9):
        sol = solve(model, None, "revolve", snapshots=snapshots)
        ref = replay_solution(model, sol)
        assert ref["valid"]
        assert ref["peak_bytes"] == sol.result.peak_bytes
        assert ref["compute"] == pytest.approx(sol.result.compute)


@pytest.mark.parametrize("seed", range(8))
def test_automatic_snapshots_give_the_least_compute_that_fits(seed):
    model = random_chain(14, seed)
    results = {k: solve(model, None, "revolve", snapshots=k).result for k in range(14)}
    peaks = [r.peak_bytes for r in results.values()]
    least = min(peaks)
    budget = (least + max(peaks)) // 2
    sol = solve(model, budget, "revolve")
    assert sol.result.peak_bytes <= budget
    assert sol.result.compute == pytest.approx(
        min(r.compute for r in results.values() if r.peak_bytes <= budget)
    )
    assert replay_solution(model, sol)["valid"]
    with pytest.raises(InfeasibleError) as info:
        solve(model, least - 1, "revolve")
    assert info.value.least_bytes == least


def test_without_budget_uses_the_balanced_count():
    # revolve's adjust(l) for l = 10, 30, 100, 1000, 10000 is 3, 4, 5, 7, 8
    # snapshots, the input among them.
    assert [balanced_snapshots(l) for l in (10, 30, 100, 1000, 10000)] == [2, 3, 4, 6, 7]
    sol = solve(uniform_chain(100), None, "revolve")
    assert sol.params == {"snapshots": 4}
    assert sol.result.forwards == 100 + numforw(100, 5)


@pytest.fixture(scope="module")
def long_chain():
    return uniform_chain(20_000)


def test_refuses_dags_and_bad_snapshots(long_chain):
    with pytest.raises(NotApplicableError, match="chains only"):
        solve(random_dag(6, 0), None, "revolve")
    with pytest.raises(ValueError, match="--snapshots must be an integer >= 0"):
        solve(uniform_chain(5), None, "revolve", snapshots=-1)
    with pytest.raises(ValueError, match="more than the limit"):
        solve(long_chain, None, "revolve", snapshots=0)
    with pytest.raises(ValueError, match="does not take 'snapshots'"):
        solve(uniform_chain(5), None, "sequential", snapshots=2)


def test_ops_are_generated_lazily(long_chain):
    ops = revolve_ops(long_chain, 0)  # 2 x 10^8 forwards if it were built
    assert isinstance(ops, types.GeneratorType)
    first = list(islice(ops, 5))  # only five ops are made
    assert [op.layer for op in first] == [0, 1, 0, 2, 1]
    forward_, free_ = OpKind.FORWARD, OpKind.FREE
    assert [op.kind for op in first] == [forward_, forward_, free_, forward_, free_]


def test_20000_layers_with_20_snapshots(long_chain):
    # Its solve time is measured by benchmarks/bench_scale.py, not here.
    sol = solve(long_chain, None, "revolve", snapshots=20)
    assert sol.result.valid
    assert sol.result.forwards == 20_000 + numforw(20_000, 21)


def test_cli_snapshots_option(tmp_path):
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(uniform_chain(30).to_dict()))
    runner = CliRunner()
    result = runner.invoke(
        main, ["solve", str(path), "--memory", "100000", "--strategy", "revolve", "--snapshots", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["params"] == {"snapshots": 3}
    assert doc["predicted"]["forwards"] == 30 + numforw(30, 4)
    bad = runner.invoke(main, ["solve", str(path), "--memory", "100000", "--strategy", "sequential", "--snapshots", "3"])
    assert bad.exit_code == 2
    assert "snapshots" in bad.stderr
    negative = runner.invoke(main, ["solve", str(path), "--memory", "100000", "--snapshots", "-1"])
    assert negative.exit_code == 2
    tight = runner.invoke(main, ["solve", str(path), "--memory", "300", "--strategy", "revolve"])
    assert tight.exit_code == 1
    assert "least memory" in tight.stderr


def test_solve_streams_revolve_ops_without_holding_a_list(tmp_path):
    model = random_chain(300, 4)
    sol = solve(model, 10**12, "revolve", snapshots=5)
    assert not isinstance(sol.ops, (list, tuple))
    listed = list(sol.ops)
    assert len(sol.ops) == len(listed) == sol.result.n_ops
    again = simulate(model, listed)
    assert again.peak_bytes == sol.result.peak_bytes and again.compute == sol.result.compute
    path = tmp_path / "s.json"
    sol.schedule.write(path, model)
    assert path.read_text() == "".join(sol.schedule.iter_json(model))
    assert [op["op"] for op in json.loads(path.read_text())["ops"]] == [op.kind.value for op in listed]
    with pytest.raises(InfeasibleError) as info:
        solve(model, sol.result.peak_bytes - 1, "revolve", snapshots=5)
    assert info.value.least_bytes == sol.result.peak_bytes


@pytest.mark.parametrize("snapshots", [0, 1, 3])
def test_the_head_output_stays_until_its_backward(snapshots):
    model = with_heavy_sink(uniform_chain(6))
    n = len(model)
    ops = list(revolve_ops(model, snapshots))
    turn = ops.index(next(op for op in ops if op.kind is OpKind.BACKWARD and op.layer == n - 1))
    frees = [k for k, op in enumerate(ops) if op.kind is OpKind.FREE and op.layer == n - 1]
    assert frees and all(k > turn for k in frees)
    result = simulate(model, ops)
    assert result.valid, result.error
    head = model.layers[-1].output_bytes
    assert result.peak_bytes >= model.input_bytes + 2 * head
