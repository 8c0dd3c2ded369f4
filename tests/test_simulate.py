import json
import re

import numpy as np
import pytest

from planner.model import model_from_dict
from planner.schedule import Schedule, backward, forward, free
from planner.simulate import replay, simulate
from planner.errors import ScheduleError
from planner.synthetic import random_chain, random_dag, uniform_chain
from planner.solvers import solve
from tests.conftest import chain_document, fork_document
from tests.reference import reference_replay


def chain3():
    return model_from_dict(
        {
            "format": "edgeplan-model/1",
            "name": "c3",
            "input_bytes": 1,
            "layers": [
                {"name": "a", "forward": 1, "backward": 10, "output_bytes": 100, "saved_bytes": 1000,
                 "workspace_forward": 7, "workspace_backward": 70000},
                {"name": "b", "forward": 2, "backward": 20, "output_bytes": 200, "needs_output": True,
                 "needs_inputs": False},
                {"name": "c", "forward": 3, "backward": 30, "output_bytes": 400},
            ],
        }
    )


def test_memory_accounting_by_hand():
    m = chain3()
    ops = [
        forward(0, True),   # A={a} S={a}: 1 + 100 + 1000, +7 workspace
        forward(1, True),   # + 200
        forward(2, True),   # + 400
        free(2),            # not allowed: the loss reads the sink's output until its backward
    ]
    r = simulate(m, ops)
    assert not r.valid
    assert r.error.index == 3 and r.error.layer == "c"
    assert "read by the loss" in str(r.error)
    ops = [
        forward(0, True), forward(1, True), forward(2, True),
        backward(2),        # sink gradient 400, grad of b 200: 1+100+1000+200+400+400+200 = 2301
        free(1),            # not allowed: b in S with needs_output -> must wait
    ]
    r = simulate(m, ops)
    assert not r.valid
    assert r.error.index == 4 and r.error.layer == "b"
    assert "needs_output" in str(r.error)
    ops = [
        forward(0, True), forward(1, True), forward(2, True),
        backward(2),        # 2301, then the sink's gradient is released: 1901
        free(2),            # the sink's output may go once its backward ran: 1501
        backward(1),        # grad of a (100) allocated: 1501 + 100 = 1601, then release
        free(1),
        backward(0),        # 1+100+1000+100 + 70000 workspace
        free(0),
    ]
    r = simulate(m, ops, timeline=True)
    assert r.valid, r.error
    assert r.peak_bytes == 1 + 100 + 1000 + 100 + 70000
    assert r.peak_index == 7
    assert list(r.timeline) == [1108, 1301, 1701, 2301, 1501, 1601, 1201, 71201, 1]
    assert r.compute == 66 and r.baseline_compute == 66 and r.overhead == 0 and r.forwards == 3
    assert r.n_ops == len(ops)


def test_sink_output_is_held_until_the_sink_backward():
    # The sink is the largest tensor and its backward does not read its output
    # (needs_output false), like an LM head whose logits feed a cross-entropy:
    # the loss still holds it, and the peak at the sink's backward counts it.
    m = model_from_dict(chain_document("lm", [("body", 1, 1, 100), ("head", 1, 1, 5000)]))
    early = [forward(0, True), forward(1, True), free(1), backward(1), free(0), backward(0)]
    r = simulate(m, early)
    assert not r.valid and r.error.index == 2 and r.error.layer == "head"
    assert reference_replay(m.document, _doc(m, early))["error"] == 2
    ops = [forward(0, True), forward(1, True), backward(1), free(1), free(0), backward(0)]
    r = replay(m, ops)
    # input + body + head + head's gradient + body's gradient
    assert r.peak_bytes == 10 + 100 + 5000 + 5000 + 100
    assert reference_replay(m.document, _doc(m, ops))["peak_bytes"] == r.peak_bytes
    # Forwarding the sink without save first cannot work: it cannot be freed
    # to be forwarded again with save.
    r = simulate(m, [forward(0, True), forward(1, False), free(1)])
    assert not r.valid and "read by the loss" in str(r.error)


def _doc(model, ops):
    return json.loads("".join(Schedule(model.name, model.fingerprint, "x", tuple(ops)).iter_json(model)))


def test_recompute_counts_compute_and_forwards():
    m = chain3()
    ops = [forward(0, False), forward(1, False), free(0), forward(2, True),
           backward(2), free(2), free(1), forward(0, True), forward(1, True), backward(1), backward(0)]
    r = replay(m, ops)
    assert r.forwards == 5
    assert r.compute == 66 + 3
    assert r.overhead == pytest.approx(3 / 66)


@pytest.mark.parametrize(
    "ops, index, message",
    [
        ([forward(1, True)], 0, "input 'a' is not in memory"),
        ([forward(0, True), forward(0, False)], 1, "already in memory"),
        ([forward(0, True), free(0), forward(0, True)], 2, "saved data is already in memory"),
        ([backward(0)], 0, "saved data is not in memory"),
        ([forward(0, True), forward(1, True), forward(2, True), backward(1)], 3,
         "consumer 'c' has not run"),
        ([forward(0, True), forward(1, True), forward(2, True), backward(2), backward(2)], 4,
         "already run"),
        ([free(0)], 0, "not in memory"),
        ([forward(0, True), forward(1, True), forward(2, False), free(2)], 3, "read by the loss"),
        ([forward(0, False), forward(1, False), forward(2, True), free(1)], 3,
         "the saved data of its consumer 'c' still reads it"),
        ([forward(0, True), forward(1, True), free(1)], 2, "its own saved data still reads its output"),
    ],
)
def test_rules(ops, index, message):
    r = simulate(chain3(), ops)
    assert not r.valid
    assert r.error.index == index
    assert isinstance(r.error, ScheduleError)

    assert re.search(message, str(r.error)), str(r.error)


def test_free_allowed_when_the_saved_consumer_does_not_read_it():
    # b does not need its inputs, so a can go while b is saved.
    r = simulate(chain3(), [forward(0, False), forward(1, True), free(0)])
    assert r.error.index is None  # only incomplete, no broken rule


def test_incomplete_schedule():
    r = simulate(chain3(), [forward(0, True)])
    assert not r.valid and r.error.index is None and "3 missing" in str(r.error)
    with pytest.raises(ScheduleError, match="before every backward ran"):
        replay(chain3(), [])


def test_backward_after_done_forward_is_rejected():
    m = uniform_chain(1)
    r = simulate(m, [forward(0, True), backward(0), free(0), forward(0, True)])
    assert not r.valid and "backward has already run" in str(r.error)


def _random_ops(model, rng, length):
    """Random op sequences: mostly invalid, exercising every rule."""
    n = len(model)
    kinds = [lambda i: forward(i, True), lambda i: forward(i, False), backward, free]
    return [kinds[rng.integers(4)](int(rng.integers(n))) for _ in range(length)]


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_reference_on_random_and_solved_schedules(seed):
    rng = np.random.default_rng(seed)
    model = random_dag(8, seed) if seed % 2 else random_chain(8, seed)
    doc = model.document

    def to_doc(ops):
        return json.loads("".join(Schedule(model.name, model.fingerprint, "x", tuple(ops)).iter_json(model)))

    candidates = [_random_ops(model, rng, int(rng.integers(1, 30))) for _ in range(20)]
    candidates.append(list(solve(model, None, "store-all").ops))
    for ops in candidates:
        ours = simulate(model, ops)
        ref = reference_replay(doc, to_doc(ops))
        assert ours.valid == ref["valid"]
        if ours.valid:
            assert ours.peak_bytes == ref["peak_bytes"]
            assert ours.compute == pytest.approx(ref["compute"])
            assert ours.forwards == ref["forwards"]
        else:
            assert ours.error.index == ref["error"]


def test_streams_a_generator_of_a_million_ops():
    m = uniform_chain(2)

    def ops():
        # Forward and free layer 0 over and over (valid prefix), then a proper finish.
        for _ in range(333_333):
            yield forward(0, False)
            yield free(0)
        yield forward(0, True)
        yield forward(1, True)
        yield backward(1)
        yield backward(0)

    r = simulate(m, ops())
    assert r.valid
    assert r.forwards == 333_335
    assert r.n_ops == 666_670


def _fork_ops(first, second):
    """Store-all on the fork of :func:`tests.conftest.fork_document`, ``first``'s backward before ``second``'s."""
    return [
        forward(0, True), forward(1, True), forward(2, True), forward(3, True),
        backward(3), free(3),
        backward(first), free(first),
        backward(second), free(second),
        backward(0), free(0),
    ]


@pytest.mark.parametrize(
    "first, second, peak",
    [
        # input 1, a (5000) and its gradient started by the first consumer's
        # backward (5000), the second consumer's output and gradient, and the
        # fresh gradient of a (5000) that the second consumer's backward adds in.
        (2, 1, 1 + 5000 + 5000 + 10 + 10 + 5000),
        (1, 2, 1 + 5000 + 5000 + 20 + 20 + 5000),
    ],
)
def test_the_second_consumer_backward_makes_a_fresh_gradient(first, second, peak):
    m = model_from_dict(fork_document())
    ops = _fork_ops(first, second)
    r = simulate(m, ops, timeline=True)
    assert r.valid, r.error
    # The peak is at the second consumer's backward; without the fresh gradient
    # it would be 5000 lower (and reached at that same op).
    assert r.peak_bytes == peak
    assert r.peak_index == 8
    # The fresh gradient is gone when the op ends: after it, a's gradient is held once.
    kept = 1 + 5000 + 5000 + (10 if second == 1 else 20)
    assert r.timeline[8] == peak and r.timeline[9] == kept - (10 if second == 1 else 20)
    assert reference_replay(m.document, _doc(m, ops))["peak_bytes"] == peak


def test_fresh_gradient_counts_with_the_backward_workspace():
    doc = fork_document()
    doc["layers"][1]["workspace_backward"] = 7
    m = model_from_dict(doc)
    ops = _fork_ops(2, 1)
    r = simulate(m, ops)
    assert r.peak_bytes == 1 + 5000 + 5000 + 10 + 10 + 5000 + 7
    assert reference_replay(m.document, _doc(m, ops))["peak_bytes"] == r.peak_bytes


def test_chains_make_no_fresh_gradient():
    # Every layer of a chain has one consumer: each gradient is made once.
    m = chain3()
    ops = [forward(0, True), forward(1, True), forward(2, True),
           backward(2), free(2), backward(1), free(1), backward(0), free(0)]
    r = simulate(m, ops, timeline=True)
    assert list(r.timeline) == [1108, 1301, 1701, 2301, 1501, 1601, 1201, 71201, 1]
