"""Tests of the ``milp`` strategy (planner.solvers.milp).

Every schedule is replayed by the simulator (through the registry) and by the
independent reference replay.  The formulation itself is checked by encoding
schedules of its search space (random ones and every other strategy's) and
comparing the memory the program counts with the simulator's peak.
"""

import json
import math
import sys
import time

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import solvers
from planner.errors import InfeasibleError
from planner.lowering import insert_frees
from planner.model import MODEL_FORMAT, model_from_dict
from planner.schedule import OpKind, backward, forward
from planner.simulate import simulate
from planner.solvers.milp import _blocks, _Formulation, _least_peak, _solve, _stage_count, milp
from planner.synthetic import random_chain, random_dag, transformer_dag, uniform_chain
from tests.conftest import fork_document
from tests.exhaustive import optimal_schedule
from tests.reference import replay_solution
from tests.strategies import dags, examples, with_heavy_sink

milp_module = sys.modules["planner.solvers.milp"]


def _store_all_peak(model):
    return solvers.solve(model, None, "store-all").result.peak_bytes


def _check(model, solution):
    """The registry's solution is valid for the simulator and for the reference replay."""
    ref = replay_solution(model, solution)
    assert ref["valid"], ref
    assert ref["peak_bytes"] == solution.result.peak_bytes
    assert ref["compute"] == pytest.approx(solution.result.compute)
    assert solution.result.peak_bytes <= solution.schedule.budget_bytes


def _best_other(model, budget):
    best = None
    for name in solvers.applicable(model):
        if name == "milp":
            continue
        try:
            solution = solvers.solve(model, budget, name)
        except InfeasibleError:
            continue
        _check(model, solution)
        if best is None or solution.result.compute < best:
            best = solution.result.compute
    return best


def _core(model, budget, limit=20.0):
    """The program alone: no other strategy's schedule as a start."""
    ops, params = _solve(model, budget, time.perf_counter() + limit, limit, ())
    result = simulate(model, insert_frees(model, ops))
    assert result.valid, result.error
    assert result.peak_bytes <= budget
    return result, params


def _skip_concat():
    """A small U-Net-like DAG: two skip connections joined by concatenations."""
    specs = [
        ("enc1", ["input"], 4, 8, 8000, True, False),
        ("enc2", ["enc1"], 3, 6, 4000, True, False),
        ("mid", ["enc2"], 5, 10, 2000, True, False),
        ("up2", ["mid"], 2, 4, 4000, True, False),
        ("cat2", ["up2", "enc2"], 1, 1, 8000, False, False),
        ("dec2", ["cat2"], 3, 6, 4000, True, False),
        ("up1", ["dec2"], 2, 4, 8000, True, False),
        ("cat1", ["up1", "enc1"], 1, 1, 16000, False, False),
        ("dec1", ["cat1"], 4, 8, 8000, True, True),
        ("head", ["dec1"], 1, 2, 1000, True, False),
    ]
    layers = [
        {
            "name": name, "inputs": inputs, "forward": f, "backward": b, "output_bytes": out,
            "needs_inputs": ni, "needs_output": no, "saved_bytes": 1000 if ni else 0,
            "workspace_forward": 500, "workspace_backward": 1000,
        }
        for name, inputs, f, b, out, ni, no in specs
    ]
    doc = {"format": MODEL_FORMAT, "name": "skip-concat", "input_bytes": 3000, "layers": layers}
    return model_from_dict(doc)


# ---- the formulation counts exactly what the simulator measures ---------------------------


@st.composite
def _schedule_in_space(draw, model):
    """A random valid schedule of milp's search space (forwards once, then stages).

    The sink is forwarded once, with save: its output may not be freed before
    its backward, so it can never be recomputed (SPEC section 3).
    """
    n = len(model)
    holders = model.tables.holders  # whose saved data holds each output
    saved = [False] * n
    done = [False] * n
    ops = []
    for i in range(n):
        save = i == n - 1 or draw(st.booleans())
        saved[i] = save
        ops.append(forward(i, save))
    for b in range(n - 1, -1, -1):
        for i in range(min(b + 1, n - 1)):
            held = any(saved[c] and not done[c] for c in holders[i])
            if held or not draw(st.integers(0, 3)) == 0:
                continue
            # the layer whose backward ends the stage is saved by its forward here
            save = not saved[i] and (i == b or draw(st.booleans()))
            saved[i] = saved[i] or save
            ops.append(forward(i, save))
        if not saved[b]:
            ops.append(forward(b, True))
            saved[b] = True
        ops.append(backward(b))
        done[b] = True
    return ops


@settings(max_examples=examples(60))
@given(data=st.data(), model=st.one_of(dags(max_layers=8), dags(max_layers=8, heavy_sink=True)))
def test_program_memory_equals_the_simulated_peak(data, model):
    ops = data.draw(_schedule_in_space(model))
    result = simulate(model, insert_frees(model, ops))
    assert result.valid, result.error
    form = _Formulation(model, _blocks(len(model), len(model)))
    x = form.encode(ops, None)
    assert x is not None
    assert x[form.peak_col] * form.unit == result.peak_bytes
    assert form.encode(ops, result.peak_bytes // form.unit) is not None
    assert form.decode(x) == ops


def test_program_counts_the_fresh_gradient_of_a_fork():
    # a (5000) is read by b and c; the backward of b (the second consumer's,
    # in milp's reverse topological order) adds a fresh gradient of a.
    model = model_from_dict(fork_document())
    plain = [forward(i, True) for i in range(4)] + [backward(i) for i in range(3, -1, -1)]
    peak = simulate(model, insert_frees(model, plain)).peak_bytes
    # input, a and its gradient, b's gradient (b's output went after d's
    # backward) and the fresh gradient of a
    assert peak == 1 + 5000 + 5000 + 10 + 5000
    form = _Formulation(model, _blocks(4, 4))
    x = form.encode(plain, None)
    assert x[form.peak_col] * form.unit == peak
    assert form.lower_bound() == peak  # store-all reaches the bound: b's backward needs all that
    assert form.encode(plain, peak // form.unit - 1) is None


def test_schedules_of_a_fork_fit_their_budget():
    # A large trunk read by two consumers: recomputing it between the two
    # backwards only helps if the fresh gradient is counted, and every
    # schedule milp makes fits under the rule.
    doc = fork_document(trunk=3000, left=2000, right=2500, sink=100)
    for layer in doc["layers"]:
        layer["saved_bytes"] = 500
    model = model_from_dict(doc)
    peak = _store_all_peak(model)
    for frac in (1.0, 0.9, 0.8):
        budget = int(peak * frac)
        try:
            solution = solvers.solve(model, budget, "milp", time_limit=20)
        except InfeasibleError as exc:
            assert exc.least_bytes > budget
            _check(model, solvers.solve(model, exc.least_bytes, "milp", time_limit=20))
            continue
        _check(model, solution)
        form = _Formulation(model, _blocks(4, 4))
        ops = [op for op in solution.ops if op.kind is not OpKind.FREE]
        x = form.encode(ops, None)
        assert x[form.peak_col] * form.unit == solution.result.peak_bytes


@pytest.mark.parametrize("seed", range(4))
def test_every_other_strategy_is_in_the_search_space(seed):
    for model in (random_chain(9, seed), random_dag(10, seed), with_heavy_sink(random_dag(8, seed))):
        peak = _store_all_peak(model)
        form = _Formulation(model, _blocks(len(model), len(model)))
        for frac in (0.9, 0.7, 0.5):
            for name in solvers.applicable(model):
                if name == "milp":
                    continue
                try:
                    solution = solvers.solve(model, int(peak * frac), name)
                except InfeasibleError:
                    continue
                ops = [op for op in solution.ops if op.kind is not OpKind.FREE]
                x = form.encode(ops, None)
                assert x is not None, name
                assert x[form.peak_col] * form.unit == solution.result.peak_bytes, name


def test_encode_rejects_schedules_outside_the_space():
    model = uniform_chain(4)
    form = _Formulation(model, _blocks(4, 4))
    plain = [forward(i, True) for i in range(4)] + [backward(i) for i in range(3, -1, -1)]
    assert form.encode(plain, None) is not None
    assert form.encode(plain[1:], None) is None  # stage 0 incomplete
    swapped = plain[:4] + [backward(3), forward(1, False), forward(0, False)] + plain[5:]
    assert form.encode(swapped, None) is None  # recomputation out of order
    tight = _store_all_peak(model) // form.unit - 1
    assert form.encode(plain, tight) is None  # does not fit the cap
    # The sink forwarded without save and recomputed: its output would be freed
    # before its backward, which the loss forbids.
    recomputed = plain[:3] + [forward(3, False), forward(3, True)] + plain[4:]
    assert not simulate(model, insert_frees(model, recomputed)).valid
    assert form.encode(recomputed, None) is None


# ---- optimality ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(16))
def test_program_alone_matches_the_exhaustive_optimum_on_small_chains(seed):
    model = random_chain(4 + seed % 3, seed)
    if seed >= 12:
        model = with_heavy_sink(model, factor=1)
    peak = _store_all_peak(model)
    for frac in (0.8, 0.6):
        budget = int(peak * frac)
        best = optimal_schedule(model, budget)
        if best is None:
            with pytest.raises(InfeasibleError):
                _core(model, budget)
            continue
        result, params = _core(model, budget)
        assert result.compute == pytest.approx(best[0])
        assert params["proven_optimal"] is True


def test_exhaustive_search_counts_the_fresh_gradient_of_a_fork():
    # Over every schedule: the second backward of a's consumers holds a (5000), its gradient and
    # the fresh one, and that consumer's gradient (10 or 20); without the fresh gradient 10,011
    # bytes would do.
    model = model_from_dict(fork_document())
    assert optimal_schedule(model, 15010) is None
    assert optimal_schedule(model, 15011) is not None
    with pytest.raises(InfeasibleError) as caught:
        _core(model, 15010)
    assert caught.value.least_bytes == 15011


@settings(max_examples=examples(20))
@given(model=dags(min_layers=3, max_layers=6), frac=st.sampled_from([0.9, 0.75, 0.6]))
def test_program_alone_never_beats_the_exhaustive_optimum_on_small_dags(model, frac):
    # The search over every schedule replays its answer with the simulator and checks that it
    # counted the same peak; milp's search space is a part of it, so milp never does better.
    budget = int(_store_all_peak(model) * frac)
    best = optimal_schedule(model, budget)
    if best is None:
        with pytest.raises(InfeasibleError):
            _core(model, budget)
        return
    try:
        result, _ = _core(model, budget)
    except InfeasibleError:
        return  # the best schedule is outside milp's search space
    assert result.compute >= best[0] * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_never_beaten_on_chains_and_dags(seed):
    for model in (random_chain(9, seed), random_dag(10, seed)):
        peak = _store_all_peak(model)
        for frac in (0.85, 0.6):
            budget = int(peak * frac)
            other = _best_other(model, budget)
            try:
                solution = solvers.solve(model, budget, "milp", time_limit=20)
            except InfeasibleError:
                assert other is None
                continue
            _check(model, solution)
            assert solution.params["proven_optimal"] is True
            if other is not None:
                assert solution.result.compute <= other * 1.005


@settings(max_examples=examples(15))
@given(model=dags(max_layers=7), frac=st.sampled_from([0.95, 0.8, 0.65]))
def test_never_beaten_on_random_dags(model, frac):
    budget = int(_store_all_peak(model) * frac)
    other = _best_other(model, budget)
    try:
        solution = solvers.solve(model, budget, "milp", time_limit=10)
    except InfeasibleError as exc:
        assert other is None
        if exc.least_bytes is not None:
            _check(model, solvers.solve(model, exc.least_bytes, "milp", time_limit=10))
        return
    _check(model, solution)
    if other is not None:
        assert solution.result.compute <= other * 1.005


def test_skip_connections_and_concatenations():
    model = _skip_concat()
    peak = _store_all_peak(model)
    computes = []
    for frac in (1.0, 0.85, 0.7):
        solution = solvers.solve(model, int(peak * frac), "milp", time_limit=20)
        _check(model, solution)
        assert solution.params["proven_optimal"] is True
        computes.append(solution.result.compute)
    assert computes[0] == model.baseline_compute
    assert computes == sorted(computes)  # less memory never costs less compute
    assert computes[-1] > model.baseline_compute


def test_unlimited_budget_is_store_all():
    model = random_dag(8, 3)
    solution = solvers.solve(model, None, "milp")
    assert solution.result.compute == model.baseline_compute
    assert solution.params["proven_optimal"] is True


# ---- infeasible budgets and the least memory -----------------------------------------------


def test_below_the_lower_bound_reports_the_least_peak():
    model = random_chain(6, 2)
    with pytest.raises(InfeasibleError, match="below what some op needs") as info:
        solvers.solve(model, 1, "milp", time_limit=20)
    least = info.value.least_bytes
    assert least is not None and least > 1
    _check(model, solvers.solve(model, least, "milp", time_limit=20))
    with pytest.raises(InfeasibleError):
        solvers.solve(model, least - 1, "milp", time_limit=20)


@pytest.mark.parametrize("model", [random_chain(8, 2), random_dag(8, 5)], ids=["chain", "dag"])
def test_proven_infeasible_budget_reports_the_least_peak(model):
    form = _Formulation(model, _blocks(8, 8))
    proven, least = _least_peak(form, time.perf_counter() + 20)
    assert proven and least > form.lower_bound()  # these two models: the bound is not reached
    with pytest.raises(InfeasibleError, match="no schedule fits") as info:
        _core(model, least - 1)
    assert info.value.least_bytes == least
    result, _ = _core(model, least)
    assert result.peak_bytes == least


# ---- time limit, larger graphs, options ----------------------------------------------------


@pytest.fixture
def highs_limits(monkeypatch):
    """The time limits each HiGHS call of milp is given (instead of timing the test itself)."""
    from planner.solvers import _highs

    limits = []
    real = _highs.timed_solve

    def spy(form, deadline, **options):
        solve = form.solve

        def recorded(**kwargs):
            limits.append(kwargs["time_limit"])
            return solve(**kwargs)

        form.solve = recorded
        try:
            return real(form, deadline, **options)
        finally:
            del form.solve

    monkeypatch.setattr(_highs, "timed_solve", spy)
    monkeypatch.setattr(milp_module, "timed_solve", spy)
    return limits


def test_time_limit_is_respected_on_a_larger_dag(highs_limits):
    model = random_dag(40, 7)
    budget = int(_store_all_peak(model) * 0.6)
    try:
        solution = solvers.solve(model, budget, "milp", time_limit=4)
    except InfeasibleError as exc:
        assert exc.least_bytes is None or exc.least_bytes > budget
    else:
        _check(model, solution)
        assert solution.params["time_limit"] == 4.0
    assert highs_limits and sum(highs_limits) < 4  # HiGHS's calls share the limit, one after another


def test_merged_stages_on_a_long_chain(highs_limits):
    n = 75
    assert _stage_count(n) < n
    model = random_chain(n, 5)
    budget = int(_store_all_peak(model) * 0.7)
    other = _best_other(model, budget)
    solution = solvers.solve(model, budget, "milp", time_limit=5)
    assert sum(highs_limits) < 5
    _check(model, solution)
    assert 0 < solution.params["stages"] < n
    assert solution.params["proven_optimal"] is False  # merged stages: not exact
    assert other is None or solution.result.compute <= other * 1.005


def test_blocks_cover_every_backward_once():
    assert _blocks(5, 5) == [[4], [3], [2], [1], [0]]
    blocks = _blocks(50, 7, {30, 10})
    assert [b for block in blocks for b in block] == list(range(49, -1, -1))
    assert len(blocks) == 7
    assert {block[0] for block in blocks} >= {49, 30, 10}


@pytest.mark.parametrize("bad", [0, -1.5, math.nan, math.inf, True, "10"])
def test_bad_time_limits_are_rejected(bad):
    with pytest.raises(ValueError, match="time-limit"):
        milp(random_chain(3, 0), budget=10, time_limit=bad)


def test_missing_scipy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    model = random_chain(4, 1)
    with pytest.raises(ImportError, match=r"edgeplan\[milp\]"):
        _solve(model, _store_all_peak(model) - 1, time.perf_counter() + 5, 5, ())


def test_cli_time_limit(tmp_path):
    from cli import main

    model = random_dag(8, 1)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(model.to_dict()))
    budget = int(_store_all_peak(model) * 0.8)
    memory = str(budget + 2 * model.params_bytes)  # sgd: parameters and their gradients
    runner = CliRunner()
    result = runner.invoke(
        main, ["solve", str(path), "--memory", memory, "--strategy", "milp", "--time-limit", "5", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["strategy"] == "milp"
    assert doc["params"]["time_limit"] == 5.0
    assert doc["predicted"]["peak_bytes"] <= budget
    bad = runner.invoke(main, ["solve", str(path), "--memory", memory, "--time-limit", "0"])
    assert bad.exit_code == 2
    other = runner.invoke(main, ["solve", str(path), "--memory", memory, "-s", "store-all", "--time-limit", "5"])
    assert other.exit_code == 2 and "does not take" in other.stderr


def test_default_strategy_set_leaves_milp_out_of_big_models_unless_asked():
    from planner.solvers import MILP_AUTO_MAX_LAYERS, applicable
    from planner.synthetic import random_dag

    small = random_dag(MILP_AUTO_MAX_LAYERS, 0)
    big = random_dag(MILP_AUTO_MAX_LAYERS + 1, 0)
    assert "milp" in applicable(small)
    assert "milp" not in applicable(big)
    assert "milp" in applicable(big, {"time_limit": 5})
    assert "milp" not in applicable(big, {"segments": 3})  # another strategy's option


def test_params_carry_the_gap_to_highs_dual_bound():
    # Solved to optimality on a small DAG: HiGHS closed the gap (to its 1e-4 at most).
    model = random_dag(8, 3)
    solution = solvers.solve(model, _store_all_peak(model) * 3 // 5, "milp", time_limit=20)
    assert solution.params["proven_optimal"] is True
    assert 0 <= solution.params["gap"] <= 1e-4
    # A transformer block stopped at HiGHS' first node (work, not the clock: under load a 4 s limit
    # on GPT-2 found no schedule at all): not proven, and the params say how far its bound is.
    model = transformer_dag(1)
    budget = int(0.6 * simulate(model, insert_frees(model, milp(model)[0])).peak_bytes)
    _, params = milp(model, budget=budget, node_limit=1, time_limit=60)
    assert params["proven_optimal"] is False
    assert 1e-4 < params["gap"] <= 1


def test_no_gap_without_a_program():
    model = random_dag(6, 4)
    _, params = milp(model, budget=None)
    assert params["stages"] == 0 and "gap" not in params


def test_a_node_limit_returns_highs_best_schedule_unproven():
    """scipy reports HiGHS' node limit as status 4 with the best solution found in ``x``: milp keeps
    that schedule (valid, fitting, not proven), the same whatever the time cap, and never better
    than the proven optimum."""
    model = transformer_dag(1)
    budget = int(0.6 * simulate(model, insert_frees(model, milp(model)[0])).peak_bytes)
    ops, params = milp(model, budget=budget, node_limit=1, time_limit=60)
    again, _ = milp(model, budget=budget, node_limit=1, time_limit=20)
    assert params["proven_optimal"] is False and again == ops
    found = simulate(model, insert_frees(model, ops))
    assert found.valid and found.peak_bytes <= budget
    best, proven = milp(model, budget=budget, time_limit=60)
    assert proven["proven_optimal"] is True
    assert simulate(model, insert_frees(model, best)).compute <= found.compute
