"""Paging backward records (docs/format.md, "Paging backward records"): simulator, timing, reference."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import ScheduleFormatError
from planner.device import Storage
from planner.model import model_from_dict
from planner.schedule import (
    Schedule,
    backward,
    drop_saved,
    forward,
    free,
    pagein_saved,
    pageout,
    pageout_saved,
    schedule_from_dict,
)
from planner.simulate import simulate
from tests.conftest import schema_errors
from tests.reference import reference_replay
from tests.strategies import budgets, examples, paging_cases

# 1 MB/s each way, 1 ms read and 2 ms write latency: a 1000-byte record takes 3 ms out, 2 ms in.
STORAGE = Storage(1e6, 1e6, read_latency_s=1e-3, write_latency_s=2e-3)
OVERLAP = dataclasses.replace(STORAGE, overlap=True)


def chain():
    """a's record (1000 bytes) is most of the memory; its backward is the last."""
    return model_from_dict(
        {
            "format": "edgeplan-model/1",
            "name": "records",
            "input_bytes": 1,
            "time_unit": "ms",
            "layers": [
                {"name": "a", "forward": 1, "backward": 2, "output_bytes": 10, "saved_bytes": 1000},
                {"name": "b", "forward": 1, "backward": 2, "output_bytes": 10, "saved_bytes": 100},
                {"name": "c", "forward": 1, "backward": 2, "output_bytes": 10, "saved_bytes": 10},
            ],
        }
    )


def record_ops():
    """a's record written out during b's forward, released, read back during c's backward."""
    return [
        forward(0, True), pageout_saved(0), forward(1, True), drop_saved(0), forward(2, True),
        backward(2), free(2), pagein_saved(0), backward(1), free(1), free(0), backward(0),
    ]


def document(ops, storage):
    m = chain()
    r = simulate(m, ops, storage=storage)
    schedule = Schedule("records", m.fingerprint, "hand", tuple(ops), predicted=r.predicted(), storage=storage)
    return json.loads("".join(schedule.iter_json(m)))


def test_paging_a_record_by_hand():
    m = chain()
    r = simulate(m, record_ops(), storage=STORAGE, timeline=True)
    assert r.valid, r.error
    # drop_saved a takes 1000 bytes out of memory; pagein_saved a puts them back.
    assert list(r.timeline) == [1011, 1011, 1121, 121, 141, 161, 131, 1131, 1141, 1021, 1011, 1011]
    assert r.peak_bytes == 1141 and r.peak_index == 8
    store_all = [forward(0, True), forward(1, True), forward(2, True), backward(2), free(2),
                 backward(1), free(1), free(0), backward(0)]
    assert simulate(m, store_all).peak_bytes == 1161
    assert (r.pageouts, r.pageins, r.forwards) == (1, 1, 3)
    assert r.transfer == pytest.approx(3.0 + 2.0)
    assert r.compute == 9 and r.overhead == pytest.approx((9 + 5) / 9 - 1)


def test_the_copy_engine_waits_for_a_record():
    # forward a ends at 1, the write runs 1..4; drop_saved waits for it (compute stands 2..4);
    # c's backward ends at 7, the read runs 7..9; b's backward 7..9, a's backward waits for nothing more: 9..11.
    r = simulate(chain(), record_ops(), storage=OVERLAP)
    assert r.time == pytest.approx(11.0)
    # Reading a's record back before c's backward hides the read behind it: a's backward still ends at 11,
    # and the wait for the write stays.
    early = record_ops()
    early.insert(5, early.pop(7))  # pagein_saved a right after forward c
    e = simulate(chain(), early, storage=OVERLAP)
    assert e.valid and e.time == pytest.approx(11.0) and e.peak_bytes == 1161


@pytest.mark.parametrize("storage", [STORAGE, OVERLAP])
def test_the_reference_replays_records(storage):
    doc = document(record_ops(), storage)
    assert schema_errors(doc, "schedule.schema.json") == []
    ref = reference_replay(chain().to_dict(), doc)
    r = simulate(chain(), record_ops(), storage=storage)
    assert ref["valid"] and ref["peak_bytes"] == r.peak_bytes
    assert ref["transfer"] == pytest.approx(r.transfer) and ref["overhead"] == pytest.approx(r.overhead)
    if storage.overlap:
        assert ref["time"] == pytest.approx(r.time)
    assert schedule_from_dict(doc, chain()).ops == tuple(record_ops())


@pytest.mark.parametrize(
    "ops, index, message",
    [
        ([pageout_saved(0)], 0, "its saved data is not in memory"),
        ([forward(0, True), drop_saved(0)], 1, "not paged out (pageout_saved it first)"),
        ([forward(0, True), pageout_saved(0), pageout_saved(0)], 2, "already paged out"),
        ([forward(0, True), pagein_saved(0)], 1, "its saved data is not paged out"),
        ([forward(0, True), pageout_saved(0), pagein_saved(0)], 2, "already in memory"),
        ([forward(0, True), pageout_saved(0), drop_saved(0), free(0), forward(0, True)], 4,
         "its saved data is paged out"),
        ([forward(0, True), pageout_saved(0), drop_saved(0), forward(1, True), forward(2, True),
          backward(2), backward(1), backward(0)], 7, "saved data is not in memory"),
        ([forward(0, True), forward(1, True), forward(2, True), pageout_saved(2), backward(2),
          pagein_saved(2)], 5, "its saved data is not paged out"),  # backward removes it from PS
        ([forward(0, False), pageout_saved(0)], 1, "its saved data is not in memory"),
    ],
)
def test_record_rules(ops, index, message):
    r = simulate(chain(), ops, storage=STORAGE)
    assert not r.valid and r.error.index == index
    assert message in str(r.error)
    ref = reference_replay(chain().to_dict(), {"format": "edgeplan-schedule/3", "storage": {**STORAGE.to_dict(), "overlap": False},
                                               "ops": [_op_doc(op) for op in ops]})
    assert not ref["valid"] and ref["error"] == index


def _op_doc(op):
    doc = {"op": op.kind.value, "layer": "abc"[op.layer]}
    if op.kind.value == "forward":
        doc["save"] = op.save
    return doc


def test_a_dropped_record_no_longer_pins_its_inputs():
    m = chain()
    pinned = simulate(m, [forward(0, True), forward(1, True), free(0)], storage=STORAGE)
    assert pinned.error.index == 2 and "'b' still reads it" in str(pinned.error)
    ops = [forward(0, True), forward(1, True), pageout_saved(1), drop_saved(1), free(0)]
    assert simulate(m, ops, storage=STORAGE).error.index is None  # only unfinished
    # and pins again once read back
    r = simulate(m, [*ops[:4], pagein_saved(1), free(0)], storage=STORAGE)
    assert r.error.index == 5


def test_records_without_storage_and_over_capacity():
    r = simulate(chain(), record_ops())
    assert r.error.index == 1 and "needs a storage" in str(r.error)
    assert simulate(chain(), record_ops(), storage=Storage(1e6, 1e6, bytes=1000)).valid
    full = simulate(chain(), record_ops(), storage=Storage(1e6, 1e6, bytes=999))
    assert full.error.index == 1 and "storage is full" in str(full.error)


# --- page-records: dp-paging planned with more memory, records paged out to fit -------------------


def test_page_records_by_hand_fits_what_dp_paging_cannot():
    from planner.errors import InfeasibleError
    from planner.solvers import solve

    m = chain()
    with pytest.raises(InfeasibleError) as info:
        solve(m, 1011, "dp-paging", storage=OVERLAP)  # a's record is held with b's at b's backward
    assert info.value.least_bytes == 1021
    solution = solve(m, 1011, "page-records", storage=OVERLAP)
    r = solution.result
    assert r.valid and r.peak_bytes <= 1011 and solution.params["records"] == ["a"]
    # Where dp-paging fits, page-records is never slower (it keeps dp-paging's plan at 1141).
    assert solve(m, 1141, "page-records", storage=OVERLAP).result.step_time == 10.0
    ref = reference_replay(m.to_dict(), json.loads("".join(solution.schedule.iter_json(m))))
    assert ref["valid"] and ref["peak_bytes"] == r.peak_bytes and ref["time"] == pytest.approx(r.time)


@settings(max_examples=examples(30), deadline=None)
@given(data=st.data())
def test_page_records_schedules_are_valid_fit_and_beat_dp_paging(data):
    """Random chains and storages with a copy engine: every schedule replays (simulator and reference,
    time included), fits its budget, and is never slower than dp-paging's at the same budget."""
    from planner.errors import InfeasibleError
    from planner.solvers import solve

    _, model, storage = data.draw(paging_cases(max_layers=7, dag=False), label="model")
    storage = dataclasses.replace(storage, overlap=True)
    budget = data.draw(budgets(model), label="budget")
    try:
        solution = solve(model, budget, "page-records", storage=storage)
    except InfeasibleError as exc:
        assert budget is not None and exc.least_bytes is not None and budget < exc.least_bytes
        return
    r = solution.result
    assert r.valid and (budget is None or r.peak_bytes <= budget)
    doc = json.loads("".join(solution.schedule.iter_json(model)))
    assert schema_errors(doc, "schedule.schema.json") == []
    ref = reference_replay(model.document or model.to_dict(), doc)
    assert ref["valid"] and ref["peak_bytes"] == r.peak_bytes and ref["forwards"] == r.forwards
    if r.pages:
        assert ref["transfer"] == pytest.approx(r.transfer, rel=1e-9, abs=1e-12)
        assert ref["time"] == pytest.approx(r.time, rel=1e-9, abs=1e-12)
    try:
        plain = solve(model, budget, "dp-paging", storage=storage).result
    except InfeasibleError:
        return
    assert r.step_time <= plain.step_time * (1 + 1e-9)


def test_page_records_on_random_chains_is_never_slower_than_dp_paging_and_often_faster():
    from planner.lowering import store_all_ops
    from planner.solvers import solve
    from planner.synthetic import random_chain
    from tests.paging_setup import random_storage, timed

    faster = 0
    for seed in range(8):
        model = timed(random_chain(8, seed))
        storage = dataclasses.replace(random_storage(seed), overlap=True)
        budget = int(simulate(model, store_all_ops(model)).peak_bytes * 0.6)
        records = solve(model, budget, "page-records", storage=storage)
        plain = solve(model, budget, "dp-paging", storage=storage)
        assert records.result.peak_bytes <= budget
        assert records.result.step_time <= plain.result.step_time * (1 + 1e-12)
        faster += records.result.step_time < plain.result.step_time * 0.99 and bool(records.params["records"])
    assert faster >= 6


def _pinning_chain():
    """Five layers whose backwards read their own output (4000 bytes; records of 1000)."""
    layers = [{"name": f"L{i}", "forward": 10.0, "backward": 20.0, "output_bytes": 4000, "saved_bytes": 1000,
               "needs_output": True, "needs_inputs": False} for i in range(5)]
    return model_from_dict({"format": "edgeplan-model/1", "name": "pins", "input_bytes": 0, "time_unit": "ms",
                            "layers": layers})


def test_page_records_pages_the_outputs_its_records_pin():
    """Missing before (issue 21): with a record paged out, the output it pinned stayed in memory from
    its forward to its backward, so store-all's order with every record paged still held all five
    outputs at the sink's backward (more than 20,000 bytes) and did not fit 14,000 bytes. Paged out
    as well once its record is, it fits without recomputation."""
    from planner.solvers import solve
    from planner.solvers._overlap import overlap
    from planner.solvers.page_records import page_records

    m, budget = _pinning_chain(), 14000
    store_all = solve(m, None, "store-all").ops
    _, records_only = page_records(m, store_all, OVERLAP, budget, outputs=False)
    assert records_only.valid and records_only.peak_bytes > 20000
    ops, r = page_records(m, store_all, OVERLAP, budget)
    assert r.valid and r.peak_bytes <= budget and r.forwards == len(m.layers)
    dropped = [ops.index(drop_saved(i)) for i in range(4)]
    assert all(ops.index(pageout(i)) > dropped[i] or ops.index(free(i)) > dropped[i] for i in range(4))
    assert any(pageout(i) in ops for i in range(4))
    schedule = Schedule("pins", m.fingerprint, "hand", tuple(ops), predicted=r.predicted(), storage=OVERLAP)
    ref = reference_replay(m.to_dict(), json.loads("".join(schedule.iter_json(m))))
    assert ref["valid"] and ref["peak_bytes"] == r.peak_bytes and ref["time"] == pytest.approx(r.time)
    _, fast = overlap(m, ops, OVERLAP, budget)  # as page-records runs it on the copy engine
    assert fast.peak_bytes <= budget
    assert fast.step_time < solve(m, budget, "dp-paging", storage=OVERLAP).result.step_time


def test_insert_frees_places_record_ops_as_reading_no_output():
    from planner.lowering import insert_frees

    compute = [op for op in record_ops() if op.kind.value != "free"]
    ops = insert_frees(chain(), compute)
    r = simulate(chain(), ops, storage=STORAGE)
    assert r.valid, r.error
    assert r.peak_bytes <= simulate(chain(), record_ops(), storage=STORAGE).peak_bytes  # frees b sooner
    # b's output is last read by c's backward (c's record reads it): a later record op of b's does not
    # keep it (it used to count as a read, as a pageout does).
    compute = [forward(0, True), forward(1, True), forward(2, True), pageout_saved(1), backward(2),
               drop_saved(1), pagein_saved(1), backward(1), backward(0)]
    ops = insert_frees(chain(), compute)
    assert simulate(chain(), ops, storage=STORAGE).valid
    assert ops.index(free(1)) < ops.index(drop_saved(1))


def test_records_are_schedule_3_only_so_that_spec_section_5s_2_stays_as_it_is():
    doc = document(record_ops(), STORAGE)  # a serial storage
    assert doc["format"] == "edgeplan-schedule/3" and doc["storage"]["overlap"] is False
    assert schedule_from_dict(doc, chain()).storage.overlap is False
    old = {**doc, "format": "edgeplan-schedule/2", "storage": STORAGE.to_dict()}
    with pytest.raises(ScheduleFormatError, match='pageout_saved needs format "edgeplan-schedule/3"'):
        schedule_from_dict(old, chain())
    assert not reference_replay(chain().to_dict(), old)["valid"]
