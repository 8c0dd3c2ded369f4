import json

import pytest

from planner.errors import ScheduleFormatError
from planner.schedule import (
    Op,
    OpKind,
    Schedule,
    backward,
    forward,
    free,
    load_schedule,
    schedule_from_dict,
)
from planner.solvers import solve
from planner.synthetic import random_chain, uniform_chain


def test_ops_are_interned_and_frozen():
    assert forward(3, True) is forward(3, True)
    assert forward(3, True) is not forward(3, False)
    assert backward(2) == Op(OpKind.BACKWARD, 2)
    with pytest.raises(AttributeError):
        free(1).layer = 2


def test_roundtrip_and_determinism(tmp_path):
    m = random_chain(12, 3)
    sol = solve(m, None, "sequential", segments=3)
    text = "".join(sol.schedule.iter_json(m))
    assert text == "".join(sol.schedule.iter_json(m))
    doc = json.loads(text)
    assert doc["format"] == "edgeplan-schedule/1"
    assert doc["model"] == {"name": m.name, "fingerprint": m.fingerprint}
    assert doc["strategy"] == "sequential" and doc["params"] == {"segments": 3}
    assert set(doc["predicted"]) == {"peak_bytes", "compute", "baseline_compute", "overhead", "forwards"}
    assert doc["ops"][0] == {"op": "forward", "layer": "L0", "save": False}
    path = tmp_path / "s.json"
    sol.schedule.write(path, m)
    assert path.read_text() == text
    back = load_schedule(path, m)
    assert back.ops == sol.ops
    assert back.predicted == sol.schedule.predicted
    assert back.budget_bytes is None


def test_empty_schedule_is_valid_json():
    m = uniform_chain(2)
    s = Schedule(m.name, m.fingerprint, "x", ())
    assert json.loads("".join(s.iter_json(m)))["ops"] == []


def base(m, **changes):
    doc = json.loads("".join(solve(m, None, "store-all").schedule.iter_json(m)))
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "x"}, "field 'format': expected"),
        ({"model": 3}, "field 'model': must be an object"),
        ({"model": {"name": "m"}}, "field 'model.fingerprint': must be a string"),
        ({"strategy": 1}, "field 'strategy': must be a string"),
        ({"params": []}, "field 'params': must be an object"),
        ({"budget_bytes": -1}, "field 'budget_bytes'"),
        ({"budget_bytes": True}, "field 'budget_bytes'"),
        ({"predicted": 1}, "field 'predicted'"),
        ({"ops": {}}, "field 'ops': must be a list"),
        ({"ops": [1]}, "op #0: must be an object"),
        ({"ops": [{"op": "jump", "layer": "L0"}]}, "op #0: field 'op': unknown op \"jump\""),
        ({"ops": [{"op": "free"}]}, "op #0: field 'layer': must be a layer name"),
        ({"ops": [{"op": "free", "layer": "ZZ"}]}, "op #0: field 'layer': the model has no layer 'ZZ'"),
        ({"ops": [{"op": "forward", "layer": "L0"}]}, "op #0 \\('L0'\\): field 'save': must be true or false"),
    ],
)
def test_format_errors(changes, message):
    m = uniform_chain(3)
    with pytest.raises(ScheduleFormatError, match=message):
        schedule_from_dict(base(m, **changes), m)


def test_top_level_must_be_object():
    with pytest.raises(ScheduleFormatError, match="top level must be a JSON object"):
        schedule_from_dict([], uniform_chain(2))
