import copy
import hashlib
import json
from pathlib import Path

import pytest

from planner.errors import ModelError
from planner.model import fingerprint, load_model, model_from_dict
from tests.reference import spec_fingerprint
from tests.conftest import DATA, EXAMPLES, fork_document
from tests.conftest import TWO_LAYER_MODEL as BASE


def doc(**changes):
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def with_layer(i, **fields):
    d = copy.deepcopy(BASE)
    d["layers"][i].update(fields)
    for key, value in list(fields.items()):
        if value is DELETE:
            del d["layers"][i][key]
    return d


DELETE = object()


def test_defaults_are_applied():
    m = model_from_dict(doc())
    a, b = m.layers
    assert m.is_chain
    assert a.uses_input and a.inputs == () and b.inputs == (0,)
    assert (a.saved_bytes, a.needs_inputs, a.needs_output) == (0, True, False)
    assert (a.workspace_forward, a.workspace_backward, a.params_bytes) == (0, 0, 0)
    assert m.consumers == ((1,), ())
    assert m.sink == 1
    assert m.baseline_compute == 6


def test_reverse_order_gradients_of_a_fork():
    # a is read by b and c: c's backward (the higher) starts a's gradient, b's makes a fresh one;
    # d, the sink, allocates its own gradient and those of b and c.
    model = model_from_dict(fork_document())
    assert model.reverse_order_gradients == ((0, 0, 5000, 40 + 10 + 20), (0, 5000, 0, 0))
    # a chain makes none: b, the sink, allocates its gradient (50) and a's (100)
    assert model_from_dict(BASE).reverse_order_gradients == ((0, 150), (0, 0))


def test_dag_with_skip():
    d = doc()
    d["layers"].append({"name": "c", "inputs": ["a", "b", "input"], "forward": 1, "backward": 1,
                        "output_bytes": 1})
    m = model_from_dict(d)
    assert not m.is_chain
    assert m.layers[2].inputs == (0, 1) and m.layers[2].uses_input
    assert m.consumers[0] == (1, 2)


MODEL_FILES = [
    p
    for p in sorted((DATA / "models").glob("*.json")) + sorted(EXAMPLES.glob("*.json"))
    if not p.name.endswith(".measured.json")  # measurements, not models
]


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_real_model_files_load(path):
    m = load_model(path)
    assert len(m) >= 10
    assert m.to_dict()["layers"][0]["name"] == m.layers[0].name
    # The full re-serialisation loads back to the same model.
    assert model_from_dict(m.to_dict()).layers == m.layers


def test_fingerprint_is_sha256_of_structure_and_sizes(tmp_path):
    # SPEC section 2, by hand for BASE: sorted keys, no spaces, defaults filled,
    # the inputs resolved, no times and no model name.
    text = (
        '{"input_bytes":10,"layers":['
        '{"inputs":["input"],"name":"a","needs_inputs":true,"needs_output":false,'
        '"output_bytes":100,"params_bytes":0,"saved_bytes":0,"workspace_backward":0,'
        '"workspace_forward":0},'
        '{"inputs":["a"],"name":"b","needs_inputs":true,"needs_output":false,'
        '"output_bytes":50,"params_bytes":0,"saved_bytes":0,"workspace_backward":0,'
        '"workspace_forward":0}]}'
    )
    expected = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert fingerprint(doc()) == expected == spec_fingerprint(doc())
    assert text in (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc(), indent=4))  # layout does not matter
    assert load_model(path).fingerprint == expected
    # Defaults spelled out give the same fingerprint.
    spelled = model_from_dict(model_from_dict(doc()).to_dict())
    assert spelled.fingerprint == expected


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_fingerprint_of_real_files_follows_the_spec(path):
    document = json.loads(path.read_text())
    assert load_model(path).fingerprint == spec_fingerprint(document)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["layers"][0].update(forward=123.5),
        lambda d: d["layers"][1].update(backward=0),
        lambda d: d.update(time_unit="flop", source="re-profiled on another machine"),
        lambda d: d.update(name="renamed"),
        lambda d: d.update(extra={"note": "fields not listed may be added"}),
        lambda d: d["layers"][1].update(comment="an extra layer field"),
        lambda d: d["layers"][1].update(inputs=["a"], saved_bytes=0, needs_output=False),
    ],
    ids=["forward", "backward", "time-unit-and-source", "model-name", "extra", "layer-extra",
         "defaults-spelled"],
)
def test_fingerprint_ignores_times_names_and_extras(change):
    d = doc()
    change(d)
    assert model_from_dict(d).fingerprint == model_from_dict(doc()).fingerprint


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(input_bytes=11),
        lambda d: d["layers"][0].update(name="a2") or d["layers"][1].update(inputs=["a2"]),
        lambda d: d["layers"][1].update(inputs=["a", "input"]),
        lambda d: d["layers"][0].update(output_bytes=101),
        lambda d: d["layers"][0].update(saved_bytes=1),
        lambda d: d["layers"][0].update(needs_inputs=False),
        lambda d: d["layers"][1].update(needs_output=True),
        lambda d: d["layers"][0].update(workspace_forward=1),
        lambda d: d["layers"][0].update(workspace_backward=1),
        lambda d: d["layers"][0].update(params_bytes=1),
    ],
    ids=["input_bytes", "layer-name", "inputs", "output_bytes", "saved_bytes", "needs_inputs",
         "needs_output", "workspace_forward", "workspace_backward", "params_bytes"],
)
def test_fingerprint_changes_with_structure_and_sizes(change):
    d = doc()
    change(d)
    assert model_from_dict(d).fingerprint != model_from_dict(doc()).fingerprint
    assert model_from_dict(d).fingerprint == spec_fingerprint(d)


@pytest.mark.parametrize(
    "document, message",
    [
        ([], "the top level must be a JSON object, not list"),
        (doc(format="edgeplan-model/2"), "field 'format': unsupported format"),
        ({k: v for k, v in BASE.items() if k != "format"}, "field 'format': missing"),
        (doc(name=""), "field 'name': must be a non-empty string"),
        (doc(input_bytes=-1), "field 'input_bytes': must be >= 0"),
        (doc(input_bytes=True), "field 'input_bytes': must be an integer"),
        (doc(input_bytes=2**63), "field 'input_bytes': .* beyond 2\\*\\*62"),
        (doc(input_bytes=10.0), "must be an integer number of bytes"),
        (doc(layers=[]), "field 'layers': must hold at least one layer"),
        (doc(layers={}), "field 'layers': must be a list"),
        (doc(time_unit=3), "field 'time_unit': must be a string"),
        (with_layer(0, forward=True), "layer #0 'a': field 'forward': must be a number, got true"),
        (with_layer(0, forward="1"), "layer #0 'a': field 'forward': must be a number"),
        (with_layer(0, forward=float("nan")), "field 'forward': must be a finite number"),
        (with_layer(1, backward=float("inf")), "layer #1 'b': field 'backward': must be a finite"),
        (with_layer(1, backward=-1), "field 'backward': must be a finite number"),
        (with_layer(1, backward=DELETE), "layer #1 'b': field 'backward': missing"),
        (with_layer(1, output_bytes=DELETE), "layer #1 'b': field 'output_bytes': missing"),
        (with_layer(1, output_bytes=-5), "layer #1 'b': field 'output_bytes': must be >= 0"),
        (with_layer(1, saved_bytes=1.5), "field 'saved_bytes': must be an integer >= 0"),
        (with_layer(1, workspace_forward=2**62 + 1), "field 'workspace_forward': .* beyond"),
        (with_layer(1, needs_inputs=1), "field 'needs_inputs': must be true or false"),
        (with_layer(1, needs_output="no"), "field 'needs_output': must be true or false"),
        (with_layer(1, name="a"), "layer #1 'a': field 'name': duplicate name"),
        (with_layer(1, name="input"), "field 'name': 'input' is reserved"),
        (with_layer(1, name=""), "layer #1: field 'name': must be a non-empty string"),
        (with_layer(1, name=DELETE), "layer #1: field 'name': missing"),
        (with_layer(1, inputs=["zzz"]), "layer #1 'b': field 'inputs': unknown layer 'zzz'"),
        (with_layer(1, inputs=["b"]), "field 'inputs': a layer cannot read its own output"),
        (with_layer(0, inputs=["b"]), "layer #0 'a': field 'inputs': reads 'b', which comes later"),
        (with_layer(1, inputs=[]), "field 'inputs': a layer must read the input or another"),
        (with_layer(1, inputs="a"), "field 'inputs': must be a list"),
        (with_layer(1, inputs=["input"]), "exactly one sink .* found 2: 'a', 'b'"),
    ],
)
def test_every_defect_is_named(document, message):
    with pytest.raises(ModelError, match=message):
        model_from_dict(document, source_name="model.json")


def test_messages_start_with_the_file_name():
    with pytest.raises(ModelError, match="^model.json: layer #1 'b': field 'forward'"):
        model_from_dict(with_layer(1, forward=None), source_name="model.json")


def test_cycle_is_rejected():
    d = doc()
    d["layers"][0]["inputs"] = ["b"]
    d["layers"][1]["inputs"] = ["a"]
    with pytest.raises(ModelError, match="comes later.*cycle"):
        model_from_dict(d)


def test_sink_must_come_last():
    d = doc()
    d["layers"] = [
        {"name": "a", "forward": 1, "backward": 1, "output_bytes": 1},
        {"name": "s", "inputs": ["a", "b"], "forward": 1, "backward": 1, "output_bytes": 1},
        {"name": "b", "inputs": ["a"], "forward": 1, "backward": 1, "output_bytes": 1},
    ]
    with pytest.raises(ModelError, match="comes later"):
        model_from_dict(d)


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"format": ', "not valid JSON: Expecting value at line 1"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"format": NaN}', "NaN is not valid JSON"),
        (b'{"a": 1, "a": 2}', "the key 'a' appears twice"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply|not valid JSON"),
    ],
    ids=["truncated", "utf8", "nan", "duplicate-key", "deep"],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="nope.json: cannot read model file"):
        load_model(tmp_path / "nope.json")
