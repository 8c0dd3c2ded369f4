"""page-all: POET's paging-only baseline, checked by the simulator and the reference replay."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.device import Storage
from planner.model import model_from_dict
from planner.schedule import OpKind
from planner.solvers import solve
from tests.reference import replay_solution
from tests.strategies import examples, paging_cases

STORAGE = Storage(1e6, 1e6, read_latency_s=1e-3, write_latency_s=1e-3)


def skip_model():
    """a feeds r (whose backward does not read it) and, much later, c: a skip connection.

    b's forward workspace is the largest moment of the step, and a need not be
    in memory then.
    """
    return model_from_dict({
        "format": "edgeplan-model/1", "name": "skip", "input_bytes": 1, "time_unit": "ms",
        "layers": [
            {"name": "a", "forward": 1, "backward": 2, "output_bytes": 10_000},
            {"name": "r", "forward": 1, "backward": 2, "output_bytes": 10, "needs_inputs": False,
             "needs_output": True},
            {"name": "b", "forward": 1, "backward": 2, "output_bytes": 10, "workspace_forward": 30_000},
            {"name": "c", "forward": 1, "backward": 2, "output_bytes": 10, "inputs": ["b", "a"],
             "needs_inputs": False},
        ],
    })


def test_page_all_pages_the_skip_connection_out_during_b():
    m = skip_model()
    plain = solve(m, None, "store-all")
    paged = solve(m, None, "page-all", storage=STORAGE)
    assert plain.result.peak_bytes == 1 + 10_000 + 10 + 10 + 30_000
    assert paged.result.peak_bytes == 1 + 10 + 10 + 30_000
    ops = [(op.kind.value, m.layers[op.layer].name) for op in paged.ops]
    assert ops[:4] == [("forward", "a"), ("pageout", "a"), ("forward", "r"), ("free", "a")]
    assert ops.index(("pagein", "a")) == ops.index(("forward", "c")) - 1
    r = paged.result
    assert (r.pageouts, r.pageins, r.forwards) == (1, 1, 4)
    assert r.compute == r.baseline_compute  # no recomputation
    assert r.transfer == pytest.approx(2 * (1 + 10_000 / 1e6 * 1e3))  # ms
    assert r.overhead == pytest.approx(r.transfer / r.baseline_compute)
    assert paged.schedule.format == "edgeplan-schedule/2"
    assert paged.params == {"paged": 1}
    ref = replay_solution(m, paged)
    assert ref["valid"] and ref["peak_bytes"] == r.peak_bytes
    assert ref["transfer"] == pytest.approx(r.transfer)


def test_page_all_respects_the_storage_capacity():
    m = skip_model()
    full = solve(m, None, "page-all", storage=Storage(1e6, 1e6, bytes=9_999))
    assert full.result.pageouts == 0 and full.schedule.format == "edgeplan-schedule/1"
    assert full.result.peak_bytes == solve(m, None, "store-all").result.peak_bytes
    fits = solve(m, None, "page-all", storage=Storage(1e6, 1e6, bytes=10_000))
    assert fits.result.pageouts == 1


def test_page_all_is_store_all_when_saved_data_pins_every_read():
    """A plain chain (every backward reads its input): nothing can be released without recomputing."""
    m = model_from_dict({
        "format": "edgeplan-model/1", "name": "c", "input_bytes": 1, "time_unit": "s",
        "layers": [{"name": f"l{i}", "forward": 1, "backward": 1, "output_bytes": 100} for i in range(5)],
    })
    paged = solve(m, None, "page-all", storage=STORAGE)
    plain = solve(m, None, "store-all")
    assert paged.result.pageouts == 0 and paged.params == {"paged": 0}
    assert paged.ops == plain.ops and paged.schedule.format == "edgeplan-schedule/1"


@settings(max_examples=examples(60))
@given(data=st.data())
def test_page_all_on_random_models(data):
    _, model, storage = data.draw(paging_cases(max_layers=10), label="model")
    paged = solve(model, None, "page-all", storage=storage)
    plain = solve(model, None, "store-all")
    r = paged.result
    assert r.valid
    assert r.peak_bytes <= plain.result.peak_bytes
    assert r.forwards == len(model) and r.compute == plain.result.compute
    assert sorted(op.layer for op in paged.ops if op.kind is OpKind.PAGEOUT) == sorted(
        set(op.layer for op in paged.ops if op.kind is OpKind.PAGEOUT)
    )
    if storage.bytes is not None:
        paged_bytes = sum(model.layers[op.layer].output_bytes for op in paged.ops
                          if op.kind is OpKind.PAGEOUT)
        assert paged_bytes <= storage.bytes
    ref = replay_solution(model, paged)
    assert ref["valid"], ref
    assert ref["peak_bytes"] == r.peak_bytes
    if r.pages:
        assert ref["transfer"] == pytest.approx(r.transfer)
        assert json.loads("".join(paged.schedule.iter_json(model)))["predicted"]["pageins"] == r.pageins
