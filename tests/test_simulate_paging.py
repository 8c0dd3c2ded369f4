"""SPEC section 5 in the simulator, the schedule files and the reference replay."""

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.device import Storage
from planner.errors import ModelError, ScheduleFormatError
from planner.lowering import insert_frees
from planner.model import model_from_dict
from planner.schedule import (
    SCHEDULE_FORMAT_PAGING,
    Schedule,
    backward,
    forward,
    free,
    pagein,
    pageout,
    schedule_from_dict,
)
from tests.conftest import mutated, schema_errors
from planner.simulate import simulate
from planner.solvers import solve
from tests.reference import reference_replay
from tests.strategies import examples, model_docs, op_sequences, paging_cases, paging_walks, timed

# 1 MB/s each way, 1 ms and 2 ms latencies: a 1000-byte output takes 2 ms to read, 3 ms to write.
STORAGE = Storage(1e6, 1e6, read_latency_s=1e-3, write_latency_s=2e-3)


def chain(time_unit="ms"):
    return model_from_dict(
        {
            "format": "edgeplan-model/1",
            "name": "p3",
            "input_bytes": 1,
            "time_unit": time_unit,
            "layers": [
                {"name": "a", "forward": 1, "backward": 2, "output_bytes": 1000},
                {"name": "b", "forward": 1, "backward": 2, "output_bytes": 10},
                {"name": "c", "forward": 1, "backward": 2, "output_bytes": 10},
            ],
        }
    )


def paged_ops():
    """a paged out and freed while b (kept, not saved) and c run, paged in for b's recomputation."""
    return [
        forward(0, True), pageout(0), forward(1, False), free(0),
        forward(2, True), backward(2), free(2), free(1),
        pagein(0), forward(1, True), free(1), backward(1), free(0),
        backward(0),
    ]


def test_paging_by_hand():
    m = chain()
    r = simulate(m, paged_ops(), storage=STORAGE, timeline=True)
    assert r.valid, r.error
    # a (1000 bytes) is out of memory from its free to its pagein; the pagein adds it back.
    assert list(r.timeline) == [
        1001, 1001, 1011, 11, 21, 41, 21, 11, 1011, 1021, 1011, 2011, 1001, 1001,
    ]
    assert r.peak_bytes == 2011 and r.peak_index == 11
    assert (r.pageouts, r.pageins, r.forwards) == (1, 1, 4)
    assert r.transfer == pytest.approx(3.0 + 2.0)  # ms: write 2 + 1, read 1 + 1
    assert r.compute == 4 + 6
    assert r.overhead == pytest.approx((10 + 5) / 9 - 1)
    predicted = r.predicted()
    assert predicted["transfer"] == r.transfer and predicted["pageouts"] == 1 and predicted["pageins"] == 1


@pytest.mark.parametrize("unit, factor", [("s", 1e-3), ("ms", 1.0), ("us", 1e3), ("ns", 1e6)])
def test_transfer_is_in_the_models_time_unit(unit, factor):
    r = simulate(chain(unit), paged_ops(), storage=STORAGE)
    assert r.transfer == pytest.approx(5.0 * factor)


@pytest.mark.parametrize("unit", ["flop", "", "min"])
def test_paging_needs_a_time_unit(unit):
    with pytest.raises(ModelError, match="time_unit is a time"):
        simulate(chain(unit), paged_ops(), storage=STORAGE)
    # Without paging ops the unit does not matter.
    assert simulate(chain(unit), insert_frees(chain(unit), [forward(0, True), forward(1, True),
                    forward(2, True), backward(2), backward(1), backward(0)]), storage=STORAGE).valid


@pytest.mark.parametrize(
    "ops, index, message",
    [
        ([pageout(0)], 0, "its output is not in memory"),
        ([forward(0, True), pageout(0), pageout(0)], 2, "already paged out"),
        ([forward(0, True), pagein(0)], 1, "not paged out"),
        ([forward(0, True), pageout(0), pagein(0)], 2, "already in memory"),
        ([forward(0, True), forward(1, True), forward(2, True), pageout(1), backward(2), free(1),
          backward(1), pagein(1)], 7, "not paged out"),  # backward removes it from P
    ],
)
def test_paging_rules(ops, index, message):
    r = simulate(chain(), ops, storage=STORAGE)
    assert not r.valid
    assert r.error.index == index
    assert message in str(r.error)


def test_pagein_after_backward_is_refused():
    # The backward removes L from P, so a pagein after it finds nothing paged.
    m = chain()
    ops = [forward(0, True), forward(1, True), forward(2, True), pageout(2), backward(2), free(2),
           pagein(2)]
    r = simulate(m, ops, storage=STORAGE)
    assert not r.valid and r.error.index == 6


def test_paging_without_storage_is_invalid():
    r = simulate(chain(), paged_ops())
    assert not r.valid and r.error.index == 1
    assert "needs a storage" in str(r.error)


def test_storage_capacity():
    m = chain()
    assert simulate(m, paged_ops(), storage=Storage(1e6, 1e6, bytes=1000)).valid
    r = simulate(m, paged_ops(), storage=Storage(1e6, 1e6, bytes=999))
    assert not r.valid and r.error.index == 1 and "storage is full" in str(r.error)


def test_schedule_file_round_trip_and_schema():
    m = chain()
    r = simulate(m, paged_ops(), storage=STORAGE)
    schedule = Schedule("p3", m.fingerprint, "hand", tuple(paged_ops()), predicted=r.predicted(),
                        storage=STORAGE)
    text = "".join(schedule.iter_json(m))
    doc = json.loads(text)
    assert doc["format"] == SCHEDULE_FORMAT_PAGING
    assert list(doc) == ["format", "model", "strategy", "params", "budget_bytes", "storage",
                         "predicted", "ops"]
    assert doc["storage"] == {"read_bytes_per_s": 1e6, "write_bytes_per_s": 1e6,
                              "read_latency_s": 1e-3, "write_latency_s": 2e-3}
    assert schema_errors(doc, "schedule.schema.json") == []
    back = schedule_from_dict(doc, m)
    assert back.ops == schedule.ops and back.storage == STORAGE
    assert "".join(back.iter_json(m)) == text
    ref = reference_replay(m.to_dict(), doc)
    assert ref["valid"] and ref["peak_bytes"] == r.peak_bytes
    assert ref["transfer"] == pytest.approx(r.transfer) and ref["overhead"] == pytest.approx(r.overhead)


def test_writer_refuses_paging_ops_without_storage(tmp_path):
    m = chain()
    schedule = Schedule("p3", m.fingerprint, "hand", tuple(paged_ops()))
    with pytest.raises(ValueError, match="needs a storage"):
        schedule.write(tmp_path / "s.json", m)
    assert list(tmp_path.iterdir()) == []  # nothing written half-way


def _doc():
    m = chain()
    r = simulate(m, paged_ops(), storage=STORAGE)
    return m, json.loads(
        "".join(Schedule("p3", m.fingerprint, "hand", tuple(paged_ops()), predicted=r.predicted(),
                         storage=STORAGE).iter_json(m))
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="edgeplan-schedule/1"),
         r"op #1: field 'op': pageout needs format \"edgeplan-schedule/2\""),
        (lambda d: d.pop("storage"), r"field 'storage': missing"),
        (lambda d: d["storage"].update(read_bytes_per_s=0), r"field 'storage.read_bytes_per_s': must be"),
        (lambda d: d["storage"].pop("write_bytes_per_s"), r"storage.write_bytes_per_s"),
        (lambda d: d["storage"].update(write_latency_s=-1), r"storage.write_latency_s'?: must be"),
        (lambda d: d["storage"].update(bytes=0), r"storage.bytes'?: must be"),
        (lambda d: d.update(format="edgeplan-schedule/4"), r"edgeplan-schedule/2\" or \"edgeplan-schedule/3"),
        (lambda d: d["ops"][1].update(op="swapout"), r"op #1: field 'op': unknown op \"swapout\""),
    ],
)
def test_loader_errors_name_the_field(edit, message):
    m, doc = _doc()
    edit(doc)
    with pytest.raises(ScheduleFormatError, match=message):
        schedule_from_dict(doc, m, source_name="s.json")
    assert schema_errors(doc, "schedule.schema.json") != []


def test_schedules_without_paging_stay_format_1():
    m = chain()
    solution = solve(m, None, "store-all", storage=STORAGE)
    doc = json.loads("".join(solution.schedule.iter_json(m)))
    assert doc["format"] == "edgeplan-schedule/1" and "storage" not in doc
    assert set(doc["predicted"]) == {"peak_bytes", "compute", "baseline_compute", "overhead", "forwards"}
    assert "".join(solution.schedule.iter_json(m)) == "".join(solve(m, None, "store-all").schedule.iter_json(m))


def _compare(doc, storage, ops):
    """The simulator and the reference replay agree on ``ops`` written as a /2 file."""
    model = model_from_dict(doc)
    result = simulate(model, ops, storage=storage)
    written = json.loads(
        "".join(Schedule(model.name, model.fingerprint, "walk", tuple(ops), storage=storage).iter_json(model))
    )
    ref = reference_replay(doc, written)
    assert ref["valid"] == result.valid, (ref, result.error)
    if not result.valid:
        assert ref["error"] == result.error.index, (ref, result.error)
        return result
    assert ref["peak_bytes"] == result.peak_bytes
    assert ref["forwards"] == result.forwards
    assert (ref["pageouts"], ref["pageins"]) == (result.pageouts, result.pageins)
    assert math.isclose(ref["compute"], result.compute, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(ref["transfer"], result.transfer, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(ref["overhead"], result.overhead, rel_tol=1e-9, abs_tol=1e-9)
    if result.time is not None:
        assert math.isclose(ref["time"], result.time, rel_tol=1e-9, abs_tol=1e-12)
    return result


@settings(max_examples=examples(300))
@given(data=st.data())
def test_simulator_agrees_with_reference_on_random_paging_walks(data):
    doc, model, storage = data.draw(paging_cases(max_layers=7), label="model")
    ops = data.draw(paging_walks(model), label="ops")
    _compare(doc, storage, ops)
    mutated = data.draw(op_sequences(model, ops, paging=True), label="mutated")
    _compare(doc, storage, mutated)


@settings(max_examples=examples(150))
@given(data=st.data())
def test_simulator_agrees_with_reference_on_overlapped_walks(data):
    """edgeplan-schedule/3: the same walks, transfers beside compute; the time is within its bounds."""
    doc, model, storage = data.draw(paging_cases(max_layers=6), label="model")
    storage = dataclasses.replace(storage, overlap=True)
    ops = data.draw(paging_walks(model), label="ops")
    result = _compare(doc, storage, ops)
    if result.valid and result.pages:
        # relative slack: in ns a 31 ms write is 3.1e7, where 1e-9 is below a float's resolution
        slack = 1e-9 + 1e-12 * (result.compute + result.transfer)
        assert result.compute - slack <= result.time <= result.compute + result.transfer + slack


def test_overlapped_paging_by_hand():
    """The pageout of a runs beside b's forward; the free of a waits for it (2 ms); the pagein
    is issued at b's recomputation, which waits for it (2 ms): 14 ms instead of 10 + 5."""
    m = chain()
    storage = dataclasses.replace(STORAGE, overlap=True)
    r = simulate(m, paged_ops(), storage=storage)
    serial = simulate(m, paged_ops(), storage=STORAGE)
    assert (r.peak_bytes, r.compute, r.transfer) == (serial.peak_bytes, serial.compute, serial.transfer)
    assert r.time == pytest.approx(14.0) and serial.time is None and serial.step_time == pytest.approx(15.0)
    assert r.overhead == pytest.approx(14 / 9 - 1)
    assert r.predicted()["time"] == r.time
    doc = json.loads("".join(Schedule("p3", m.fingerprint, "hand", tuple(paged_ops()), predicted=r.predicted(),
                                      storage=storage).iter_json(m)))
    assert doc["format"] == "edgeplan-schedule/3" and doc["storage"]["overlap"] is True
    assert schema_errors(doc, "schedule.schema.json") == []
    assert schedule_from_dict(doc, m).storage == storage
    doc["format"] = "edgeplan-schedule/2"  # a /2 is serial: its storage may not overlap
    with pytest.raises(ScheduleFormatError, match="storage.overlap"):
        schedule_from_dict(doc, m)


def test_random_walks_reach_complete_paging_schedules():
    """The walks the property above draws are not all broken: many are complete and page."""
    found = []

    @settings(max_examples=400, database=None)
    @given(data=st.data())
    def run(data):
        doc = data.draw(timed(model_docs(max_layers=5)))
        model = model_from_dict(doc)
        ops = data.draw(paging_walks(model))
        result = simulate(model, ops, storage=Storage(1e6, 1e6))
        if result.valid and result.pageins:
            found.append(result)

    run()
    assert len(found) >= 10


# --- the schema's fast acceptance check agrees with jsonschema on /2 and device documents

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.sampled_from(["pageout", "pagein", "forward", "edgeplan-schedule/1", "edgeplan-schedule/2",
                       "edgeplan-device/1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)
_PATHS_2 = [("format",), ("storage",), ("storage", "read_bytes_per_s"), ("storage", "write_bytes_per_s"),
            ("storage", "read_latency_s"), ("storage", "bytes"), ("predicted", "transfer"),
            ("predicted", "pageouts"), ("predicted", "pageins"), ("ops", 1, "op"), ("ops", 7, "op")]
_PATHS_DEVICE = [("format",), ("name",), ("memory_bytes",), ("source",), ("storage",),
                 ("storage", "read_bytes_per_s"), ("storage", "write_latency_s"), ("storage", "bytes")]


@settings(max_examples=examples(200), deadline=None)
@given(st.sampled_from(_PATHS_2 + [("device",) + p for p in _PATHS_DEVICE]), _VALUES, st.booleans())
def test_fast_check_agrees_with_jsonschema(path, value, delete):
    from planner.device import PRESETS
    from tests.conftest import fast_accepts

    if path[0] == "device":
        filename, doc = "device.schema.json", mutated(PRESETS["rpi4-4gb-sd"].to_dict(), path[1:], value, delete=delete)
    else:
        filename, doc = "schedule.schema.json", mutated(_doc()[1], path, value, delete=delete)
    assert fast_accepts(doc, filename) == (not schema_errors(doc, filename))
