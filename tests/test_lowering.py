import itertools

import pytest

from planner.lowering import RECOMPUTE, STORE, insert_frees, segments_to_ops
from planner.schedule import OpKind, backward, forward, free
from planner.simulate import simulate
from planner.synthetic import random_chain, random_dag, uniform_chain


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
