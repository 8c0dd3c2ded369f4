"""The published JSON Schemas, and the loaders' use of them.

Everything edgeplan writes validates against them (checked with jsonschema
itself, not with edgeplan's fast acceptance check); the shipped copies and the
copies in schedules/ are identical; the fast check agrees with jsonschema.
"""

import copy
import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import solvers
from planner.errors import ModelError, ScheduleFormatError
from planner.model import load_model, model_from_dict
from planner.schedule import schedule_from_dict
from planner.schemas import SCHEMA_NAMES, check_model_document, load_schema
from planner.synthetic import random_chain, random_dag, uniform_chain
from tests.conftest import ROOT, mutated, schema_errors
from tests.conftest import TWO_LAYER_MODEL as BASE
from tests.conftest import fast_accepts as is_valid  # the compiled validator the loaders use

EXAMPLES = sorted((ROOT / "examples").glob("*.json"))


def assert_valid(document, filename):
    errors = [e.message for e in schema_errors(document, filename)]
    assert errors == []
    jsonschema.validate(document, load_schema(filename), cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("filename", sorted(SCHEMA_NAMES.values()))
def test_schemas_are_draft_2020_12_and_published_copies_match(filename):
    schema = load_schema(filename)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    shipped = (ROOT / "planner" / "schemas" / filename).read_bytes()
    assert (ROOT / "schedules" / filename).read_bytes() == shipped


def test_schema_files_are_package_data():
    setup = (ROOT / "setup.cfg").read_text()
    assert "planner = schemas/*.json" in setup
    assert {SCHEMA_NAMES[k] for k in SCHEMA_NAMES} == {p.name for p in (ROOT / "planner" / "schemas").glob("*.json")}
    assert load_schema("model.schema.json")["title"] == "edgeplan-model/1"
    assert load_schema("schedule.schema.json")["title"] == "edgeplan-schedule/2"
    assert load_schema("device.schema.json")["title"] == "edgeplan-device/1"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path):
    assert EXAMPLES, "examples/ has model files"
    assert_valid(json.loads(path.read_text()), "model.schema.json")
    assert_valid(load_model(path).to_dict(), "model.schema.json")


def _models():
    return [uniform_chain(6), random_chain(9, 2), random_dag(9, 4), load_model(EXAMPLES[0])]


@pytest.mark.parametrize("index", range(4))
def test_every_strategy_writes_valid_schedules_and_models(index):
    model = _models()[index]
    assert_valid(model.to_dict(), "model.schema.json")
    options = {"time_limit": 5}  # milp runs on every model, briefly
    outcomes = solvers.run_all(model, None, options=options)
    assert any(o.feasible for o in outcomes)
    for outcome in outcomes:
        if outcome.feasible:
            doc = json.loads("".join(outcome.solution.schedule.iter_json(model)))
            assert_valid(doc, "schedule.schema.json")
            assert set(doc) >= {"format", "model", "strategy", "params", "budget_bytes", "predicted", "ops"}
    names = {o.strategy for o in outcomes}
    assert names == set(solvers.applicable(model, options))


def test_cli_outputs_validate(tmp_path):
    from click.testing import CliRunner

    from cli import main

    out = tmp_path / "s.json"
    r = CliRunner().invoke(main, ["solve", str(EXAMPLES[0]), "--memory", "1GB", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert_valid(json.loads(out.read_text()), "schedule.schema.json")
    for ref in sorted((ROOT / "schedules" / "reference").glob("*.json")):
        assert_valid(json.loads(ref.read_text()), "schedule.schema.json")


# --- the loaders use the schema ------------------------------------------------------

def layer_doc(**fields):
    doc = copy.deepcopy(BASE)
    doc["layers"][1].update(fields)
    return doc


@pytest.mark.parametrize(
    "document, message",
    [
        (layer_doc(forward=-1), r"^m\.json: layer #1 'b': field 'forward': must be >= 0, got -1$"),
        (layer_doc(output_bytes="9"), r"^m\.json: layer #1 'b': field 'output_bytes': must be an integer >= 0, got \"9\"$"),
        (layer_doc(needs_output=1), r"^m\.json: layer #1 'b': field 'needs_output': must be true or false, got 1$"),
        (layer_doc(inputs=["a", 3]), r"^m\.json: layer #1 'b': field 'inputs': must be a string, got 3$"),
        (layer_doc(name="input"), r"^m\.json: layer #1 'input': field 'name': 'input' is reserved"),
        (layer_doc(saved_bytes=2**63), r"^m\.json: layer #1 'b': field 'saved_bytes': .* is beyond 2\*\*62 bytes$"),
        (dict(BASE, layers=[]), r"^m\.json: field 'layers': must hold at least one item$"),
        (dict(BASE, format="edgeplan-model/9"), r"^m\.json: field 'format': expected \"edgeplan-model/1\""),
        ({k: v for k, v in BASE.items() if k != "input_bytes"}, r"^m\.json: field 'input_bytes': missing$"),
        ([], r"^m\.json: the top level must be a JSON object, not list$"),
    ],
)
def test_schema_messages_name_file_layer_field(document, message):
    with pytest.raises(ModelError, match=message):
        check_model_document(document, source_name="m.json")
    with pytest.raises(ModelError, match=r"^m\.json: "):
        model_from_dict(document, source_name="m.json")


def test_schedule_schema_catches_what_the_loader_did_not():
    model = uniform_chain(2)
    doc = json.loads("".join(solvers.solve(model, None, "store-all").schedule.iter_json(model)))
    schedule_from_dict(doc, model)
    bad = dict(doc, model={"name": "x", "fingerprint": "md5:abc"})
    with pytest.raises(ScheduleFormatError, match=r"^s\.json: field 'model\.fingerprint': must match"):
        schedule_from_dict(bad, model, source_name="s.json")
    bad = dict(doc, predicted=dict(doc["predicted"], peak_bytes="big"))
    with pytest.raises(ScheduleFormatError, match=r"^s\.json: field 'predicted\.peak_bytes': must be an integer"):
        schedule_from_dict(bad, model, source_name="s.json")
    bad = copy.deepcopy(doc)
    del bad["ops"][0]["save"]
    with pytest.raises(ScheduleFormatError, match=r"op #0"):
        schedule_from_dict(bad, model, source_name="s.json")


def test_fast_check_accepts_long_files():
    # How much faster than jsonschema it is: benchmarks, not a timed test.
    layer = {"forward": 1.0, "backward": 2.0, "output_bytes": 100, "saved_bytes": 0, "needs_inputs": True}
    doc = dict(BASE, layers=[dict(layer, name=f"L{i}") for i in range(20_000)])
    assert is_valid(doc, "model.schema.json")
    doc["layers"][19_999]["output_bytes"] = -1
    assert not is_valid(doc, "model.schema.json")


# --- the fast acceptance check agrees with jsonschema ----------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False)
    | st.text(max_size=5) | st.sampled_from(["input", "forward", "free", "edgeplan-model/1", "sha256:ab"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)
MODEL_PATHS = [("format",), ("name",), ("input_bytes",), ("layers",), ("time_unit",), ("layers", 0),
               ("layers", 1, "inputs"), ("layers", 1, "inputs", 0)] + [
    ("layers", 1, key) for key in ("name", "forward", "backward", "output_bytes", "saved_bytes",
                                   "needs_inputs", "needs_output", "workspace_forward", "params_bytes", "extra")
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(MODEL_PATHS), JSON_VALUES, st.booleans())
def test_fast_check_agrees_with_jsonschema_on_models(path, value, delete):
    doc = mutated(layer_doc(inputs=["a"]), path, value, delete=delete)
    expected = not schema_errors(doc, "model.schema.json")
    assert is_valid(doc, "model.schema.json") == expected


SCHEDULE_PATHS = [("format",), ("model",), ("model", "fingerprint"), ("strategy",), ("params",),
                  ("budget_bytes",), ("predicted",), ("predicted", "overhead"), ("predicted", "forwards"),
                  ("ops",), ("ops", 0), ("ops", 0, "op"), ("ops", 0, "save"), ("ops", 1, "layer"),
                  ("ops", 1, "save")]


_TWO = uniform_chain(2)
SCHEDULE_BASE = json.loads("".join(solvers.solve(_TWO, None, "store-all").schedule.iter_json(_TWO)))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SCHEDULE_PATHS), JSON_VALUES, st.booleans())
def test_fast_check_agrees_with_jsonschema_on_schedules(path, value, delete):
    doc = mutated(SCHEDULE_BASE, path, value, delete=delete)
    expected = not schema_errors(doc, "schedule.schema.json")
    assert is_valid(doc, "schedule.schema.json") == expected


def test_schema_files_exist_once():
    # schedules/*.schema.json, where the README points, are links to the package's files.
    for filename in SCHEMA_NAMES.values():
        link = ROOT / "schedules" / filename
        assert link.is_symlink()
        assert link.resolve() == (ROOT / "planner" / "schemas" / filename).resolve()


def test_validation_leaves_the_document_as_it_is():
    # The schemas' defaults document the format; they are not filled in
    # (the fingerprint is the one of the document as read).
    doc = copy.deepcopy(BASE)
    assert is_valid(doc, "model.schema.json")
    check_model_document(doc, source_name="m.json")
    assert doc == BASE and "saved_bytes" not in doc["layers"][0]
