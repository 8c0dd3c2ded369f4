import itertools
import json

import pytest

from planner.lowering import (
    RECOMPUTE,
    STORE,
    chain_segments_peak,
    hold_segment_inputs,
    insert_frees,
    segments_to_ops,
)
from planner.schedule import OpKind, Schedule, backward, forward, free
from planner.simulate import simulate
from planner.synthetic import random_chain, random_dag, uniform_chain
from tests.reference import reference_replay
from tests.strategies import with_heavy_sink


def test_store_all_frees_as_autograd_does():
    m = uniform_chain(3)
    ops = insert_frees(m, segments_to_ops(m, [(0, 3, STORE)]))
    # L2 is the sink: the loss reads its output until its backward, although
    # that backward itself needs only its input (SPEC section 3).
    assert ops[:4] == [forward(0, True), forward(1, True), forward(2, True), backward(2)]
    assert ops[4:] == [free(1), free(2), backward(1), free(0), backward(0)]


def test_recompute_segment_frees_intermediates():
    m = uniform_chain(4)
    ops = insert_frees(m, segments_to_ops(m, [(0, 2, RECOMPUTE), (2, 4, STORE)]))
    r = simulate(m, ops)
    assert r.valid, r.error
    assert r.forwards == 6
    assert ops[:3] == [forward(0, False), forward(1, False), free(0)]


@pytest.mark.parametrize("seed", range(30))
def test_insert_frees_is_valid_and_never_worse_than_keeping(seed):
    m = random_dag(10, seed) if seed % 2 else random_chain(10, seed)
    n = len(m)
    cuts = sorted(set([0, n] + [int(x) for x in (seed * 7 % n, seed * 3 % n)]))
    modes = itertools.cycle([RECOMPUTE, STORE])
    segments = [(a, b, next(modes)) for a, b in zip(cuts, cuts[1:])]
    segments[-1] = segments[-1][:2] + (STORE,)
    compute = segments_to_ops(m, segments)
    lowered = insert_frees(m, compute)
    r = simulate(m, lowered)
    assert r.valid, r.error
    # Same computations, in the same order.
    assert [op for op in lowered if op.kind is not OpKind.FREE] == compute
    # Dropping any single free never lowers the peak (frees are as early as allowed),
    # and moving a free one op earlier is never valid.
    for k, op in enumerate(lowered):
        if op.kind is OpKind.FREE and k > 0 and lowered[k - 1].kind is not OpKind.FREE:
            earlier = lowered[: k - 1] + [op, lowered[k - 1]] + lowered[k + 1 :]
            assert not simulate(m, earlier).valid


def test_frees_in_the_input_are_replaced():
    m = uniform_chain(2)
    ops = [forward(0, True), free(0)]  # a wrong free: L0 is still needed
    ops += [forward(1, True), backward(1), backward(0)]
    assert simulate(m, insert_frees(m, ops)).valid


@pytest.mark.parametrize(
    "segments",
    [[(0, 2, STORE)], [(0, 1, STORE), (2, 3, STORE)], [(0, 3, "bogus")], [(1, 3, STORE)]],
)
def test_segments_must_partition(segments):
    with pytest.raises(ValueError):
        segments_to_ops(uniform_chain(3), segments)


@pytest.mark.parametrize("seed", range(12))
def test_a_heavy_sink_is_held_until_its_backward(seed):
    # The logits of a language model: the largest tensor, not read by its own
    # backward, but by the loss, until the sink's backward.
    model = with_heavy_sink(random_chain(2 + seed % 7, seed))
    n = len(model)
    sink = model.layers[-1]
    ops = insert_frees(model, segments_to_ops(model, [(0, n, STORE)]))
    assert ops.index(free(n - 1)) > ops.index(backward(n - 1))
    r = simulate(model, ops)
    assert r.valid, r.error
    # At the sink's backward: its output and its gradient, and the gradient of its input.
    assert r.peak_bytes >= model.input_bytes + 2 * sink.output_bytes + model.layers[-2].output_bytes
    doc = json.loads("".join(Schedule(model.name, model.fingerprint, "x", tuple(ops)).iter_json(model)))
    assert reference_replay(model.document, doc)["peak_bytes"] == r.peak_bytes
    # The segment evaluator agrees with the simulator on every segmentation.
    for k in range(1 << (n - 1)):
        starts = [0] + [i for i in range(1, n) if k >> (i - 1) & 1]
        segments = [(a, b, RECOMPUTE) for a, b in zip(starts, starts[1:] + [n])]
        segments[-1] = segments[-1][:2] + (STORE,)
        for hold in (False, True):
            lowered = insert_frees(model, segments_to_ops(model, segments))
            if hold:
                lowered = hold_segment_inputs(lowered, segments)
            sim = simulate(model, lowered)
            assert sim.valid, sim.error
            assert chain_segments_peak(model, starts, hold_inputs=hold) == sim.peak_bytes
