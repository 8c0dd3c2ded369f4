"""Tests for ``reforward`` (Feng and Huang's re-forwarding).

The oracle is an exhaustive search over checkpoint sets: every way of cutting
the chain of units into segments, each stored or re-forwarded, lowered with the
shared ``segments_to_ops`` + ``insert_frees`` and measured by the simulator.
"""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import InfeasibleError
from planner.lowering import RECOMPUTE, STORE, insert_frees, segments_to_ops
from planner.model import load_model, model_from_dict
from planner.simulate import simulate
from planner.solvers import solve
from planner.solvers.reforward import reforward, reforward_plan, splitting_units
from planner.synthetic import random_chain, random_dag, uniform_chain
from tests.checks import check_fits_and_replays
from tests.conftest import DATA, fork_document
from tests.strategies import budgets, chains, dags, examples, with_heavy_sink

SHARED_MODELS = ["vgg16-ops", "vgg16", "resnet18", "resnet18-cpu", "mobilenet_v2-cpu"]


def _measure(model, segments):
    result = simulate(model, insert_frees(model, segments_to_ops(model, segments)))
    assert result.valid, result.error
    return result


def _all_segmentations(units):
    """Every segmentation of the chain of units (adjacent stored segments merged)."""
    k = len(units)
    for modes in itertools.product((STORE, RECOMPUTE), repeat=k):
        optional = [i for i in range(1, k) if modes[i - 1] == modes[i] == RECOMPUTE]
        forced = {i for i in range(1, k) if modes[i] != modes[i - 1]}
        for r in range(len(optional) + 1):
            for cuts in itertools.combinations(optional, r):
                bounds = [0] + sorted(forced | set(cuts)) + [k]
                yield [
                    (units[bounds[j]][0], units[bounds[j + 1] - 1][1], modes[bounds[j]])
                    for j in range(len(bounds) - 1)
                ]


def _exhaustive(model):
    """(peak, compute) of every valid checkpoint-set schedule of the model.

    Re-forwarding the segment that ends with the sink forwards the sink without
    save and frees it before its backward, which SPEC section 3 forbids (the
    loss reads it): exactly those segmentations are invalid.
    """
    found = []
    for segments in _all_segmentations(splitting_units(model)):
        result = simulate(model, insert_frees(model, segments_to_ops(model, segments)))
        assert result.valid == (segments[-1][2] == STORE), (segments, result.error)
        if result.valid:
            found.append((result.peak_bytes, result.compute))
    return found


def _check_against_exhaustive(model):
    found = _exhaustive(model)
    least = min(p for p, _ in found)
    plan = reforward_plan(model)
    result = _measure(model, plan.segments)
    assert plan.least_bytes == least
    assert plan.peak_bytes == result.peak_bytes == least
    cheapest = min(c for p, c in found if p <= least)
    assert result.compute == pytest.approx(cheapest)
    for budget in sorted({p for p, _ in found}):
        plan = reforward_plan(model, budget=budget)
        result = _measure(model, plan.segments)
        assert plan.exact
        assert plan.peak_bytes == result.peak_bytes <= budget
        assert result.compute == pytest.approx(min(c for p, c in found if p <= budget))
    with pytest.raises(InfeasibleError) as info:
        reforward_plan(model, budget=least - 1)
    assert info.value.least_bytes == least


# -- the exact dynamic program against exhaustive search ---------------------


@settings(max_examples=examples(25))
@given(chains(max_layers=6))
def test_least_peak_and_compute_match_exhaustive_search_on_small_chains(model):
    _check_against_exhaustive(model)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eight_layer_chains_match_exhaustive_search(seed):
    _check_against_exhaustive(random_chain(8, seed))


@pytest.mark.parametrize("seed", range(6))
def test_heavy_sinks_match_exhaustive_search(seed):
    # Re-forwarding the last segment would drop the logits before the head's
    # backward: never chosen, and the peak counts them there.
    model = with_heavy_sink(random_chain(3 + seed, seed) if seed % 2 else random_dag(4 + seed, seed))
    _check_against_exhaustive(model)
    plan = reforward_plan(model)
    assert plan.segments[-1][2] == STORE
    head = model.layers[-1].output_bytes
    assert plan.least_bytes >= model.input_bytes + 2 * head


@settings(max_examples=examples(15))
@given(dags(max_layers=8))
def test_dags_match_exhaustive_search_over_their_units(model):
    if len(splitting_units(model)) > 6:
        model = random_dag(6, 0)
    _check_against_exhaustive(model)


# -- the peak model is the simulator's ---------------------------------------


@settings(max_examples=examples(30))
@given(
    st.one_of(
        chains(max_layers=30), dags(max_layers=25), chains(max_layers=30, heavy_sink=True),
        dags(max_layers=25, heavy_sink=True),
    ),
    st.data(),
)
def test_predicted_peak_is_the_simulated_peak(model, data):
    least = reforward_plan(model).least_bytes
    budget = data.draw(st.one_of(st.none(), st.integers(least, 2 * least + 1)))
    plan = reforward_plan(model, budget=budget)
    assert plan.peak_bytes == _measure(model, plan.segments).peak_bytes
    if budget is not None:
        assert plan.peak_bytes <= budget


def test_predicted_peak_of_a_fork_counts_the_fresh_gradient():
    # Two units, a and then b..d, whose entry a is read by b and c: the backward
    # of b, the second of them, adds a fresh gradient of a (5000) into the one
    # c's backward started.
    model = model_from_dict(fork_document())
    plan = reforward_plan(model)
    assert plan.units == 2 and plan.least_bytes == 1 + 5000 + 5000 + 10 + 5000
    assert plan.peak_bytes == _measure(model, plan.segments).peak_bytes


@pytest.mark.parametrize("n,seed", [(60, 0), (120, 1)])
def test_predicted_peak_on_larger_random_models(n, seed):
    for model in (random_chain(n, seed), random_dag(n, seed, skip=0.05)):
        plan = reforward_plan(model)
        assert plan.peak_bytes == plan.least_bytes == _measure(model, plan.segments).peak_bytes
        store_all = solve(model, None, "store-all").result.peak_bytes
        for budget in (plan.least_bytes + (store_all - plan.least_bytes) // 2, store_all):
            fitted = reforward_plan(model, budget=budget)
            result = _measure(model, fitted.segments)
            assert fitted.peak_bytes == result.peak_bytes <= budget
        assert reforward_plan(model, budget=store_all).recompute == 0


def test_thinned_fronts_still_fit():
    model = random_chain(80, 3)
    least = reforward_plan(model).least_bytes
    store_all = solve(model, None, "store-all").result.peak_bytes
    budget = (least + store_all) // 2
    exact = reforward_plan(model, budget=budget, front_cap=100_000)
    thin = reforward_plan(model, budget=budget, front_cap=2)
    assert exact.exact and not thin.exact
    assert thin.peak_bytes == _measure(model, thin.segments).peak_bytes <= budget
    assert thin.recompute >= exact.recompute


def test_huge_sizes_use_exact_integers():
    big = 1 << 58  # the sums pass 2**61: the program switches to Python integers
    model = model_from_dict(
        {
            "format": "edgeplan-model/1",
            "name": "huge",
            "input_bytes": big,
            "layers": [
                {"name": f"L{i}", "forward": 1, "backward": 2, "output_bytes": big + i}
                for i in range(5)
            ],
        }
    )
    _check_against_exhaustive(model)


# -- through the registry: valid, fits, and the reference replay agrees ------


def _check_solution(model, budget):
    solution = solve(model, budget, "reforward")
    assert solution.result.valid
    ref = check_fits_and_replays(model, solution, budget)
    assert ref["forwards"] == solution.result.forwards
    return solution


@settings(max_examples=examples(30))
@given(st.one_of(chains(max_layers=12), dags(max_layers=12)).flatmap(
    lambda m: st.tuples(st.just(m), budgets(m))
))
def test_solutions_are_valid_fit_and_agree_with_the_reference(case):
    model, budget = case
    try:
        _check_solution(model, budget)
    except InfeasibleError as exc:
        least = reforward_plan(model).least_bytes
        assert budget < least == exc.least_bytes
        _check_solution(model, exc.least_bytes)


@pytest.mark.parametrize("name", SHARED_MODELS)
def test_shared_models(name):
    model = load_model(DATA / "models" / f"{name}.json")
    assert model.is_chain
    plan = reforward_plan(model)
    store_all = _check_solution(model, None)  # least peak
    assert store_all.result.peak_bytes == plan.least_bytes
    full = solve(model, None, "store-all").result
    assert plan.least_bytes <= full.peak_bytes
    previous = None
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        budget = int(plan.least_bytes + frac * (full.peak_bytes - plan.least_bytes))
        solution = _check_solution(model, budget)
        if previous is not None:  # more memory never costs more compute
            assert solution.result.compute <= previous + 1e-9
        previous = solution.result.compute
    assert previous == pytest.approx(model.baseline_compute)


def test_vgg16_least_peak_is_well_below_store_all():
    model = load_model(DATA / "models" / "vgg16-ops.json")
    plan = reforward_plan(model)
    full = solve(model, None, "store-all").result.peak_bytes
    assert plan.least_bytes < 0.6 * full
    # each layer is recomputed at most once
    ops = solve(model, None, "reforward").ops
    forwards = [op.layer for op in ops if op.kind.value == "forward"]
    assert max(forwards.count(i) for i in set(forwards)) <= 2


def test_infeasible_budget_names_the_least_peak():
    model = uniform_chain(10)
    least = reforward_plan(model).least_bytes
    with pytest.raises(InfeasibleError, match=f"at least {least} bytes") as info:
        solve(model, least - 1, "reforward")
    assert info.value.least_bytes == least
    assert solve(model, least, "reforward").result.peak_bytes == least


def test_reforward_returns_ops_and_params():
    model = uniform_chain(16)
    ops, params = reforward(model)
    assert set(params) == {"segments", "recomputed", "units"}
    assert params["units"] == 16
    assert simulate(model, insert_frees(model, ops)).valid


def test_front_cap_is_checked():
    for bad in (1, 2.5, True):
        with pytest.raises(ValueError, match="front_cap must be an integer of at least 2"):
            reforward_plan(uniform_chain(4), budget=10_000, front_cap=bad)


# -- the decomposition into independent segments ------------------------------


def test_units_of_a_chain_are_its_layers():
    assert splitting_units(uniform_chain(5)) == [(i, i + 1) for i in range(5)]


def _dag(edges, n):
    layers = []
    for i in range(n):
        ins = [("input" if j < 0 else f"N{j}") for j in edges.get(i, [i - 1])]
        layers.append(
            {"name": f"N{i}", "inputs": ins, "forward": 1, "backward": 2, "output_bytes": 10 + i}
        )
    return model_from_dict(
        {"format": "edgeplan-model/1", "name": "dag", "input_bytes": 5, "layers": layers}
    )


def test_units_of_residual_blocks():
    # 0 -> 1 -> 2 -> 3(+0) -> 4 -> 5(+3): two residual blocks after the stem
    model = _dag({0: [-1], 3: [2, 0], 5: [4, 3]}, 6)
    assert splitting_units(model) == [(0, 1), (1, 4), (4, 6)]
    # a layer reading the model input late joins everything before it
    model = _dag({0: [-1], 3: [2, -1]}, 5)
    assert splitting_units(model) == [(0, 4), (4, 5)]


@settings(max_examples=examples(30))
@given(dags(max_layers=15))
def test_only_the_exit_of_a_unit_is_read_later(model):
    units = splitting_units(model)
    assert units[0][0] == 0 and units[-1][1] == len(model)
    for (lo, hi), (nlo, _) in zip(units, units[1:]):
        assert hi == nlo
    for lo, hi in units:
        for i in range(lo, hi - 1):
            assert all(c < hi for c in model.consumers[i])
        if lo > 0:
            assert all(not model.layers[i].uses_input for i in range(lo, hi))
