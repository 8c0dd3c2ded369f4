"""Hostile input files through the command line, and the package's safety rules.

Every malformed model or schedule file must end in exit code 2 and exactly one
error message that names the file (and the layer and the field where there is
one): never a traceback, never a file written to ``-o``.  Schedules whose ops
break the rules of SPEC section 3 are an answer, not an error: exit 1 with
``valid: false``.  An exception edgeplan does not expect is one line and exit
code 3.
"""

import ast
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import cli
from cli import main
from planner import model as model_module
from planner.errors import InfeasibleError, ModelError, ScheduleFormatError, SolverBug, TooLargeError
from planner.model import model_from_dict
from planner.schedule import schedule_from_dict
from planner.simulate import simulate
from planner.solvers import solve
from tests.conftest import ROOT, run_edgeplan
from tests.strategies import examples, model_docs, models

BASE_LAYERS = [
    {"name": "a", "forward": 1.0, "backward": 2.0, "output_bytes": 1000},
    {"name": "b", "forward": 1.5, "backward": 3.0, "output_bytes": 2000, "saved_bytes": 500},
    {"name": "c", "forward": 0.5, "backward": 1.0, "output_bytes": 500},
]


def base_doc(**top):
    doc = {
        "format": "edgeplan-model/1",
        "name": "hostile",
        "input_bytes": 100,
        "layers": [dict(layer) for layer in BASE_LAYERS],
    }
    doc.update(top)
    return doc


def with_layer(index, **fields):
    """The base model with layer ``index``'s fields replaced (``None`` deletes)."""
    doc = base_doc()
    for key, value in fields.items():
        if value is None:
            doc["layers"][index].pop(key, None)
        else:
            doc["layers"][index][key] = value
    return doc


def with_layers(layers):
    return base_doc(layers=layers)


def text(doc):
    return json.dumps(doc).encode()


def replace_in(doc, old, new):
    """JSON text of ``doc`` with one literal fragment replaced (for non-JSON values)."""
    raw = json.dumps(doc)
    assert raw.count(old) == 1, old
    return raw.replace(old, new).encode()


def deep(depth):
    return b"[" * depth + b"]" * depth


# (id, file content, fragments the single message must contain besides the file name)
MODEL_CASES = [
    # malformed JSON
    ("truncated", text(base_doc())[:-7], ["not valid JSON", "line 1"]),
    ("trailing-comma", b'{"format": "edgeplan-model/1",}', ["not valid JSON"]),
    ("single-quotes", b"{'format': 'edgeplan-model/1'}", ["not valid JSON"]),
    ("garbage", b"\x00\x01\x02binary", ["not valid JSON"]),
    ("empty-file", b"", ["empty"]),
    ("blank-file", b"  \n\t\n", ["empty"]),
    ("invalid-utf8", b'{"format": "edgeplan-model/1", "name": "\xff\xfe"}', ["UTF-8"]),
    ("utf8-bom", b"\xef\xbb\xbf" + text(base_doc()), ["BOM"]),
    ("lone-surrogate", replace_in(with_layer(1, name="SURR"), '"SURR"', '"\\ud800"'), ["surrogate"]),
    ("deep-100000", deep(100_000), ["nested too deeply"]),
    ("deep-in-extra-field",
     replace_in(with_layer(0, comment="DEEP"), '"DEEP"', deep(50_000).decode()), ["nested too deeply"]),
    ("duplicate-key",
     replace_in(base_doc(), '"forward": 1.5', '"forward": 1.5, "forward": 2.5'),
     ["layer #1", "'forward'", "twice"]),
    # not an object at the top
    ("root-list", b"[]", ["top level", "JSON object"]),
    ("root-number", b"42", ["top level"]),
    ("root-string", b'"edgeplan-model/1"', ["top level"]),
    ("root-null", b"null", ["top level"]),
    ("root-true", b"true", ["top level"]),
    # format and top-level fields
    ("format-missing", text({k: v for k, v in base_doc().items() if k != "format"}), ["'format'"]),
    ("format-wrong", text(base_doc(format="edgeplan-model/2")), ["'format'", "edgeplan-model/2"]),
    ("format-schedule", text(base_doc(format="edgeplan-schedule/1")), ["'format'"]),
    ("format-number", text(base_doc(format=1)), ["'format'"]),
    ("name-missing", text({k: v for k, v in base_doc().items() if k != "name"}), ["'name'"]),
    ("name-number", text(base_doc(name=5)), ["'name'"]),
    ("input-bytes-missing",
     text({k: v for k, v in base_doc().items() if k != "input_bytes"}), ["'input_bytes'"]),
    ("input-bytes-bool", text(base_doc(input_bytes=True)), ["'input_bytes'"]),
    ("input-bytes-negative", text(base_doc(input_bytes=-1)), ["'input_bytes'"]),
    ("input-bytes-string", text(base_doc(input_bytes="100")), ["'input_bytes'"]),
    ("time-unit-number", text(base_doc(time_unit=3)), ["'time_unit'"]),
    ("layers-missing", text({k: v for k, v in base_doc().items() if k != "layers"}), ["'layers'"]),
    ("layers-empty", text(base_doc(layers=[])), ["'layers'", "at least one"]),
    ("layers-object", text(base_doc(layers={"a": {}})), ["'layers'"]),
    ("layer-not-object", text(base_doc(layers=[5])), ["layer #0"]),
    # wrong types in a layer
    ("time-string", text(with_layer(1, forward="1.5")), ["layer #1 'b'", "'forward'"]),
    ("time-bool", text(with_layer(1, backward=True)), ["layer #1 'b'", "'backward'"]),
    ("time-missing", text(with_layer(1, backward=None)), ["layer #1 'b'", "'backward'"]),
    ("time-list", text(with_layer(2, forward=[1])), ["layer #2 'c'", "'forward'"]),
    ("size-bool", text(with_layer(0, output_bytes=True)), ["layer #0 'a'", "'output_bytes'"]),
    ("size-false", text(with_layer(0, saved_bytes=False)), ["layer #0 'a'", "'saved_bytes'"]),
    ("size-float", text(with_layer(0, output_bytes=1.5)), ["layer #0 'a'", "'output_bytes'"]),
    ("size-integral-float", text(with_layer(0, output_bytes=100.0)), ["layer #0 'a'", "'output_bytes'"]),
    ("size-string", text(with_layer(0, output_bytes="100")), ["layer #0 'a'", "'output_bytes'"]),
    ("size-missing", text(with_layer(2, output_bytes=None)), ["layer #2 'c'", "'output_bytes'"]),
    ("flag-number", text(with_layer(1, needs_inputs=1)), ["layer #1 'b'", "'needs_inputs'"]),
    ("flag-string", text(with_layer(1, needs_output="true")), ["layer #1 'b'", "'needs_output'"]),
    ("inputs-string", text(with_layer(1, inputs="a")), ["layer #1 'b'", "'inputs'"]),
    ("inputs-number", text(with_layer(1, inputs=[0])), ["layer #1 'b'", "'inputs'"]),
    ("inputs-empty", text(with_layer(1, inputs=[])), ["layer #1 'b'", "'inputs'"]),
    # NaN and infinity, as literals and as overflowing numbers
    ("nan-literal", replace_in(base_doc(), '"forward": 1.5', '"forward": NaN'),
     ["layer #1 'b'", "'forward'", "NaN"]),
    ("infinity-literal", replace_in(base_doc(), '"backward": 1.0', '"backward": Infinity'),
     ["layer #2 'c'", "'backward'", "Infinity"]),
    ("minus-infinity", replace_in(base_doc(), '"forward": 1.0', '"forward": -Infinity'),
     ["layer #0 'a'", "'forward'"]),
    ("nan-size", replace_in(base_doc(), '"output_bytes": 500', '"output_bytes": NaN'),
     ["layer #2 'c'", "'output_bytes'"]),
    ("nan-extra-field", replace_in(with_layer(0, note="X"), '"note": "X"', '"note": NaN'),
     ["layer #0 'a'", "'note'"]),
    ("nan-input-bytes", replace_in(base_doc(), '"input_bytes": 100', '"input_bytes": NaN'),
     ["'input_bytes'"]),
    ("1e999-time", replace_in(base_doc(), '"forward": 1.5', '"forward": 1e999'),
     ["layer #1 'b'", "'forward'", "1e999"]),
    ("-1e999-size", replace_in(base_doc(), '"output_bytes": 2000', '"output_bytes": -1e999'),
     ["layer #1 'b'", "'output_bytes'"]),
    ("huge-int-literal", replace_in(base_doc(), '"forward": 1.5', '"forward": ' + "9" * 5000),
     ["layer #1 'b'", "'forward'", "digits"]),
    ("int-beyond-float-time", text(with_layer(1, forward=10**330)), ["layer #1 'b'", "'forward'"]),
    ("time-too-large", text(with_layer(1, forward=1e300)), ["layer #1 'b'", "'forward'"]),
    ("times-sum-too-large", text(with_layers([dict(x, forward=5e199) for x in BASE_LAYERS])),
     ["'layers'", "times"]),
    # sizes
    ("negative-size", text(with_layer(1, output_bytes=-1)), ["layer #1 'b'", "'output_bytes'"]),
    ("negative-saved", text(with_layer(1, saved_bytes=-5)), ["layer #1 'b'", "'saved_bytes'"]),
    ("negative-workspace", text(with_layer(2, workspace_backward=-1)),
     ["layer #2 'c'", "'workspace_backward'"]),
    ("negative-params", text(with_layer(2, params_bytes=-1)), ["layer #2 'c'", "'params_bytes'"]),
    ("negative-time", text(with_layer(0, forward=-0.5)), ["layer #0 'a'", "'forward'"]),
    ("size-beyond-2**62", text(with_layer(0, output_bytes=2**62 + 1)),
     ["layer #0 'a'", "'output_bytes'", "2**62"]),
    ("size-10**30", text(with_layer(0, workspace_forward=10**30)),
     ["layer #0 'a'", "'workspace_forward'"]),
    ("sizes-sum-beyond-2**62", text(with_layers([dict(x, output_bytes=2**61) for x in BASE_LAYERS])),
     ["'layers'", "2**62"]),
    # names and the graph
    ("name-empty", text(with_layer(1, name="")), ["layer #1", "'name'"]),
    ("name-blank", text(with_layer(1, name="   ")), ["layer #1", "'name'"]),
    ("name-number-layer", text(with_layer(1, name=7)), ["layer #1", "'name'"]),
    ("name-missing-layer", text(with_layer(1, name=None)), ["layer #1", "'name'"]),
    ("name-input", text(with_layer(1, name="input")), ["layer #1 'input'", "'name'", "reserved"]),
    ("name-duplicate", text(with_layer(2, name="a")), ["layer #2 'a'", "'name'", "duplicate"]),
    ("inputs-unknown", text(with_layer(1, inputs=["zzz"])), ["layer #1 'b'", "'inputs'", "'zzz'"]),
    ("self-loop", text(with_layer(1, inputs=["b"])), ["layer #1 'b'", "'inputs'", "self-loop"]),
    ("cycle", text(with_layers([
        dict(BASE_LAYERS[0], inputs=["c"]),
        dict(BASE_LAYERS[1], inputs=["a"]),
        dict(BASE_LAYERS[2], inputs=["b"]),
    ])), ["layer #0 'a'", "'inputs'", "'c'"]),
    ("not-topological", text(with_layers([
        dict(BASE_LAYERS[1], inputs=["a"]),
        dict(BASE_LAYERS[0], inputs=["input"]),
        dict(BASE_LAYERS[2], inputs=["b"]),
    ])), ["layer #0 'b'", "'inputs'", "topological"]),
    ("two-sinks", text(with_layer(2, inputs=["a"])), ["'layers'", "sink", "'b'", "'c'"]),
    ("long-name", text(with_layer(1, name="x" * 100_000, forward="slow")), ["layer #1 'xxx", "'forward'"]),
]


def check_rejected(result, path, fragments, *, code=2):
    """Exit ``code``, one message naming ``path`` with the fragments, no traceback."""
    assert isinstance(result.exception, SystemExit) or result.exception is None, result.exception
    assert result.exit_code == code, result.output
    stderr = result.stderr
    assert "Traceback" not in result.output
    lines = [line for line in stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if "error" in line.lower()]
    assert len(error_lines) == 1, stderr
    message = error_lines[0]
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert len(message) < 600, message
    return message


def check_stdout(stdout, as_json):
    """No data on failure; with --json, exactly one document: the error of stderr (issue 10)."""
    if not as_json:
        assert stdout in ("", b""), stdout
        return
    doc = json.loads(stdout)
    assert list(doc) == ["error"] and doc["error"], doc


@pytest.mark.parametrize("case, content, fragments", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_hostile_model_file_solve(runner, tmp_path, case, content, fragments):
    path = tmp_path / "model.json"
    path.write_bytes(content)
    out = tmp_path / "out.json"
    result = runner.invoke(main, ["solve", str(path), "--memory", "1GB", "-o", str(out)])
    check_rejected(result, path, fragments)
    assert result.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


@pytest.mark.parametrize(
    "case, content, fragments",
    [c for c in MODEL_CASES if c[0] in ("truncated", "nan-literal", "two-sinks", "time-bool")],
    ids=lambda c: c if isinstance(c, str) else "",
)
@pytest.mark.parametrize(
    "command", ["solve-json", "compare", "compare-json", "simulate", "simulate-json", "sweep", "sweep-json"]
)
def test_hostile_model_file_every_command(runner, tmp_path, command, case, content, fragments):
    path = tmp_path / "model.json"
    path.write_bytes(content)
    schedule = tmp_path / "schedule.json"
    schedule.write_text("{}")
    name, _, flag = command.partition("-")
    args = {"solve": ["solve", str(path), "--memory", "1GB"],
            "compare": ["compare", str(path), "--memory", "1GB"],
            "simulate": ["simulate", str(path), str(schedule)],
            "sweep": ["sweep", str(path)]}[name]
    if flag:
        args.append("--json")
    result = runner.invoke(main, args)
    check_rejected(result, path, fragments)
    check_stdout(result.stdout, bool(flag))
    if flag:
        assert str(path) in json.loads(result.stdout)["error"]


@pytest.mark.parametrize("memory, code", [("1GB", 2), ("1", 1)], ids=["bad-model", "infeasible"])
def test_an_existing_output_file_is_left_alone_on_failure(runner, tmp_path, memory, code):
    path = tmp_path / "model.json"
    path.write_bytes(text(with_layer(1, forward="x")) if code == 2 else text(base_doc()))
    out = tmp_path / "out.json"
    out.write_text("previous schedule")
    result = runner.invoke(main, ["solve", str(path), "--memory", memory, "-o", str(out)])
    assert result.exit_code == code, result.output
    assert out.read_text() == "previous schedule"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "out.json"]


def test_a_write_that_fails_halfway_leaves_nothing(runner, tmp_path, monkeypatch):
    from planner.schedule import Schedule

    def disk_full(self, model):
        yield "{"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Schedule, "iter_json", disk_full)
    path = tmp_path / "model.json"
    path.write_bytes(text(base_doc()))
    out = tmp_path / "out.json"
    result = runner.invoke(main, ["solve", str(path), "--memory", "1GB", "-o", str(out)])
    check_rejected(result, out, ["No space left on device"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_missing_file(runner, tmp_path):
    path = tmp_path / "nope.json"
    out = tmp_path / "out.json"
    result = runner.invoke(main, ["solve", str(path), "--memory", "1GB", "-o", str(out)])
    check_rejected(result, path, ["No such file"])
    assert not out.exists()


def test_directory_instead_of_file(runner, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    out = tmp_path / "out.json"
    result = runner.invoke(main, ["solve", str(folder), "--memory", "1GB", "-o", str(out)])
    check_rejected(result, folder, ["directory"])
    assert not out.exists()
    # The library reports it the same way when no click check comes first.
    with pytest.raises(ModelError, match="cannot read model file"):
        model_module.load_model(folder)


def test_file_larger_than_the_limit(runner, tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    path.write_bytes(text(base_doc()))
    monkeypatch.setattr(model_module, "MAX_FILE_BYTES", 100)
    result = runner.invoke(main, ["solve", str(path), "--memory", "1GB"])
    check_rejected(result, path, ["larger than 100 bytes"])


def test_very_large_document_reports_the_right_layer(runner, tmp_path):
    n = 30_000
    layers = [{"name": f"L{i}", "forward": 1, "backward": 1, "output_bytes": 8} for i in range(n)]
    layers[-1]["backward"] = "slow"
    path = tmp_path / "big.json"
    path.write_bytes(text(base_doc(layers=layers)))
    result = runner.invoke(main, ["solve", str(path), "--memory", "1GB"])
    check_rejected(result, path, [f"layer #{n - 1} 'L{n - 1}'", "'backward'"])


def test_control_characters_in_names_are_not_sent_to_the_terminal(runner, tmp_path):
    path = tmp_path / "model.json"
    path.write_bytes(text(with_layer(1, name="\x1b[2J\x1b[31mred", forward="x")))
    result = runner.invoke(main, ["solve", str(path), "--memory", "1GB"])
    message = check_rejected(result, path, ["'forward'"])
    assert "\x1b" not in result.stderr
    assert "\\x1b" in message
    # A valid model whose name carries escapes: printed, but defused.
    path.write_bytes(text(base_doc(name="evil\x1b]0;title\x07\rname")))
    result = runner.invoke(main, ["solve", str(path), "--memory", "1GB", "--strategy", "store-all"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr and "evil\\x1b" in result.stderr


# ---------------------------------------------------------------- schedules


@pytest.fixture
def model_and_schedule(tmp_path):
    """A valid model file and a valid store-all schedule for it."""
    model_path = tmp_path / "model.json"
    model_path.write_bytes(text(base_doc()))
    schedule_path = tmp_path / "good.json"
    result = CliRunner().invoke(
        main, ["solve", str(model_path), "--memory", "1GB", "--strategy", "store-all", "-o", str(schedule_path)]
    )
    assert result.exit_code == 0, result.output
    return model_path, json.loads(schedule_path.read_text())


def _sched(good, **fields):
    doc = json.loads(json.dumps(good))
    for key, value in fields.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def _op(good, n, **fields):
    doc = json.loads(json.dumps(good))
    doc["ops"][n].update(fields)
    for key, value in fields.items():
        if value is None:
            del doc["ops"][n][key]
    return doc


SCHEDULE_CASES = [
    ("truncated", lambda g: json.dumps(g).encode()[:-10], ["not valid JSON"]),
    ("empty-file", lambda g: b"", ["empty"]),
    ("invalid-utf8", lambda g: b'{"format": "\xc3\x28"}', ["UTF-8"]),
    ("deep", lambda g: deep(100_000), ["nested too deeply"]),
    ("root-list", lambda g: b"[]", ["top level"]),
    ("format-missing", lambda g: text(_sched(g, format=None)), ["'format'"]),
    ("format-model", lambda g: text(_sched(g, format="edgeplan-model/1")), ["'format'"]),
    ("model-missing", lambda g: text(_sched(g, model=None)), ["'model'"]),
    ("fingerprint-number", lambda g: text(_sched(g, model={"name": "x", "fingerprint": 3})), ["fingerprint"]),
    ("strategy-number", lambda g: text(_sched(g, strategy=3)), ["'strategy'"]),
    ("budget-bool", lambda g: text(_sched(g, budget_bytes=True)), ["'budget_bytes'"]),
    ("budget-negative", lambda g: text(_sched(g, budget_bytes=-1)), ["'budget_bytes'"]),
    ("ops-missing", lambda g: text(_sched(g, ops=None)), ["'ops'"]),
    ("ops-object", lambda g: text(_sched(g, ops={})), ["'ops'"]),
    ("op-not-object", lambda g: text(_sched(g, ops=[5])), ["op #0"]),
    ("op-unknown", lambda g: text(_op(g, 1, op="jump")), ["op #1", "'op'", "jump"]),
    ("op-missing-kind", lambda g: text(_op(g, 1, op=None)), ["op #1", "'op'"]),
    ("layer-unknown", lambda g: text(_op(g, 0, layer="zzz")), ["op #0", "'layer'", "'zzz'"]),
    ("layer-number", lambda g: text(_op(g, 0, layer=0)), ["op #0", "'layer'"]),
    ("save-missing", lambda g: text(_op(g, 0, save=None)), ["op #0", "'save'"]),
    ("save-string", lambda g: text(_op(g, 0, save="yes")), ["op #0", "'save'"]),
    ("nan-predicted", lambda g: json.dumps(g).replace('"compute": ', '"compute": NaN, "x": ', 1).encode(),
     ["predicted.compute", "NaN"]),
    ("duplicate-op-key", lambda g: json.dumps(g).replace('"op": "backward"', '"op": "backward", "op": "free"', 1).encode(),
     ["op #", "twice"]),
]


@pytest.mark.parametrize("case, make, fragments", SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_hostile_schedule_file(runner, tmp_path, model_and_schedule, case, make, fragments, as_json):
    model_path, good = model_and_schedule
    path = tmp_path / "schedule.json"
    path.write_bytes(make(good))
    args = ["simulate", str(model_path), str(path), "--memory", "1GB"] + (["--json"] if as_json else [])
    result = runner.invoke(main, args)
    check_rejected(result, path, fragments)
    check_stdout(result.stdout, as_json)


def test_schedule_directory_and_missing(runner, tmp_path, model_and_schedule):
    model_path, _ = model_and_schedule
    for path, fragment in ((tmp_path, "directory"), (tmp_path / "nope.json", "No such file")):
        result = runner.invoke(main, ["simulate", str(model_path), str(path)])
        check_rejected(result, path, [fragment])


def _drop(good, n):
    doc = json.loads(json.dumps(good))
    del doc["ops"][n]
    return doc


def _swap_first_backward_forward(good):
    doc = json.loads(json.dumps(good))
    first_backward = next(k for k, op in enumerate(doc["ops"]) if op["op"] == "backward")
    doc["ops"].insert(0, doc["ops"].pop(first_backward))
    return doc


INVALID_OPS = [
    ("backward-first", _swap_first_backward_forward, "op #0 (backward c)"),
    ("forward-twice", lambda g: _sched(g, ops=[g["ops"][0]] + g["ops"]), "op #1 (forward a)"),
    ("free-not-held", lambda g: _sched(g, ops=[{"op": "free", "layer": "a"}] + g["ops"]), "op #0 (free a)"),
    ("truncated-ops", lambda g: _sched(g, ops=g["ops"][:-1]), "ends before every backward"),
    ("no-ops", lambda g: _sched(g, ops=[]), "ends before every backward"),
    ("input-missing", lambda g: _drop(g, 0), "op #0 (forward b)"),
    ("free-held-by-saved", lambda g: _sched(g, ops=[g["ops"][0], g["ops"][1], {"op": "free", "layer": "a"}]),
     "op #2 (free a)"),
]


@pytest.mark.parametrize("case, make, fragment", INVALID_OPS, ids=[c[0] for c in INVALID_OPS])
def test_invalid_ops_are_an_answer(runner, tmp_path, model_and_schedule, case, make, fragment):
    model_path, good = model_and_schedule
    path = tmp_path / "schedule.json"
    path.write_bytes(text(make(good)))
    result = runner.invoke(main, ["simulate", str(model_path), str(path), "--json"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    assert fragment in doc["error"]
    result = runner.invoke(main, ["simulate", str(model_path), str(path)])
    assert result.exit_code == 1
    assert fragment in result.stderr


def test_the_good_schedule_is_valid(runner, tmp_path, model_and_schedule):
    model_path, good = model_and_schedule
    path = tmp_path / "schedule.json"
    path.write_bytes(text(good))
    result = runner.invoke(main, ["simulate", str(model_path), str(path), "--json", "--memory", "1GB"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["valid"] is True


def test_output_path_problems(runner, tmp_path):
    model_path = tmp_path / "model.json"
    model_path.write_bytes(text(base_doc()))
    result = runner.invoke(main, ["solve", str(model_path), "--memory", "1GB", "-o", str(tmp_path / "no" / "x.json")])
    check_rejected(result, tmp_path / "no" / "x.json", ["cannot write"])
    result = runner.invoke(main, ["solve", str(model_path), "--memory", "1GB", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize("size", ["12 parsecs", "-5MB", "1e9", "١٢", "NaN", "inf", "", "9" * 30])
def test_bad_memory_is_a_usage_error(runner, tmp_path, size):
    model_path = tmp_path / "model.json"
    model_path.write_bytes(text(base_doc()))
    out = tmp_path / "out.json"
    result = runner.invoke(main, ["solve", str(model_path), "--memory", size, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "--memory" in result.stderr
    assert not out.exists()


# ------------------------------------------------------ unexpected exceptions


@pytest.mark.parametrize(
    "exc, code, fragment",
    [
        (RuntimeError("solver exploded\nsecond line"), 3, "internal error: RuntimeError: solver exploded second line"),
        (KeyError("k"), 3, "internal error: KeyError"),
        (RecursionError("maximum recursion depth exceeded"), 3, "internal error: RecursionError"),
        (MemoryError(), 3, "out of memory"),
        (ModelError("m.json: layer #1 'b': field 'forward': bad"), 2, "field 'forward'"),
        (InfeasibleError("nothing fits"), 1, "nothing fits"),
        (PermissionError(13, "Permission denied", "/x/y"), 2, "/x/y: Permission denied"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (SolverBug("strategy 'x' produced an invalid schedule"), 3, "internal error: SolverBug: strategy 'x'"),
        (TooLargeError("dp: too large; use revolve"), 2, "too large; use revolve"),
    ],
    ids=["runtime", "key", "recursion", "memory", "model-error", "infeasible", "oserror", "ctrl-c",
         "solver-bug", "too-large"],
)
def test_unexpected_exceptions_are_one_line(runner, tmp_path, monkeypatch, exc, code, fragment):
    model_path = tmp_path / "model.json"
    model_path.write_bytes(text(base_doc()))
    out = tmp_path / "out.json"

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli.solvers, "solve", boom)
    monkeypatch.setattr(cli.solvers, "run_all", boom)
    for args in (["solve", str(model_path), "--memory", "1GB", "-o", str(out)],
                 ["compare", str(model_path), "--memory", "1GB", "--json"]):
        result = runner.invoke(main, args)
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == code, result.output
        lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert len(lines) == 1 and fragment in lines[0], result.stderr
        check_stdout(result.stdout, "--json" in args)
        assert not out.exists()


# ------------------------------------------------------------ real processes


@pytest.mark.parametrize("case", ["nan-literal", "deep-100000", "invalid-utf8", "two-sinks", "lone-surrogate"])
def test_no_traceback_reaches_stderr(tmp_path, case):
    content, fragments = next((c[1], c[2]) for c in MODEL_CASES if c[0] == case)
    path = tmp_path / "model.json"
    path.write_bytes(content)
    out = tmp_path / "out.json"
    proc = run_edgeplan("solve", str(path), "--memory", "1GB", "-o", str(out))
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1 and str(path) in stderr, stderr
    assert all(fragment in stderr for fragment in fragments), stderr
    assert proc.stdout == b""
    assert not out.exists()


def test_bad_schedule_in_a_real_process(tmp_path, model_and_schedule):
    model_path, good = model_and_schedule
    path = tmp_path / "schedule.json"
    path.write_bytes(json.dumps(good).replace('"compute": ', '"compute": Infinity, "x": ', 1).encode())
    proc = run_edgeplan("simulate", str(model_path), str(path), "--json")
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    assert str(path) in stderr and "predicted.compute" in stderr
    check_stdout(proc.stdout, True)


def test_internal_error_in_a_real_process(tmp_path):
    path = tmp_path / "model.json"
    path.write_bytes(text(base_doc()))
    prelude = "import cli; cli.plan = lambda *a, **k: {}['boom']; "
    proc = run_edgeplan("solve", str(path), "--memory", "1GB", prelude=prelude)
    stderr = proc.stderr.decode()
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1 and "internal error: KeyError" in stderr


def test_closed_pipe_is_quiet(tmp_path):
    """``edgeplan solve ... | head -c 100`` gives no traceback."""
    doc = base_doc(layers=[{"name": f"L{i}", "forward": 1, "backward": 1, "output_bytes": 8} for i in range(5000)])
    path = tmp_path / "model.json"
    path.write_bytes(text(doc))
    code = "import sys; from cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "solve", str(path), "--memory", "1GB", "--strategy", "store-all"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    proc.stdout.read(100)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


# ------------------------------------------------------------------ library


def test_model_from_dict_with_non_json_values():
    """Values that cannot come from JSON (numpy ints, sets) still give a ModelError."""
    np = pytest.importorskip("numpy")
    doc = with_layer(0, output_bytes=np.int64(5))
    with pytest.raises(ModelError, match=r"layer #0 'a': field 'output_bytes': must be an integer"):
        model_from_dict(doc, source_name="doc")
    doc = with_layer(0, forward={1, 2})
    with pytest.raises(ModelError, match=r"layer #0 'a': field 'forward': must be a number"):
        model_from_dict(doc, source_name="doc")


def test_valid_model_with_extras_and_unicode_still_loads(tmp_path):
    doc = with_layer(1, name="ñame ☃", comment={"nested": [1, 2.5, None]})
    doc["layers"][2]["inputs"] = ["ñame ☃"]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    model = model_module.load_model(path)
    assert model.layers[1].name == "ñame ☃"
    assert model.document == doc
    solution = solve(model, None, "store-all")
    assert solution.result.valid


# ------------------------------------------------------------------- safety

# Modules that deserialise code or reach the network; edgeplan reads JSON only.
BANNED_MODULES = {
    "pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib",
    "socket", "ssl", "urllib", "urllib3", "http", "requests", "httpx", "ftplib", "smtplib",
    "telnetlib", "xmlrpc", "asyncio", "yaml",
}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}
# Importing code by name: the solver registry imports its own modules; only
# `profile`, `verify` and `fit` (planner/torch/) import user code.
IMPORTERS_ALLOWED = ("planner/solvers/__init__.py", "planner/torch/")


def _python_files():
    files = [ROOT / "cli.py"] + sorted((ROOT / "planner").rglob("*.py"))
    assert len(files) > 10
    return files


def _findings(path, rel=None):
    rel = rel or path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"{node.module or ''}.{alias.name}" for alias in node.names]
        else:
            names = []
        for name in names:
            top = name.split(".")[0]
            if top in BANNED_MODULES:
                found.append(f"{rel}:{node.lineno}: imports {name}")
            if name.startswith(("importlib.resources", "importlib.metadata")):
                continue  # package data and versions, not code
            if top in ("importlib", "runpy") and not rel.startswith(IMPORTERS_ALLOWED):
                found.append(f"{rel}:{node.lineno}: imports {name} (code loading)")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if isinstance(func, ast.Name) and name in BANNED_CALLS:
                found.append(f"{rel}:{node.lineno}: calls {name}()")
            if name == "load" and isinstance(func, ast.Attribute):
                owner = ast.unparse(func.value)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if owner == "torch" and keywords.get("weights_only") != "True":
                    found.append(f"{rel}:{node.lineno}: torch.load without weights_only=True (pickle)")
                if keywords.get("allow_pickle") == "True":
                    found.append(f"{rel}:{node.lineno}: {owner}.load(allow_pickle=True)")
    return found


def test_no_pickle_eval_exec_or_network_in_the_package():
    findings = [f for path in _python_files() for f in _findings(path)]
    assert findings == []


def test_the_safety_scan_catches_what_it_should(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import pickle\nfrom urllib.request import urlopen\nimport importlib\n"
        "from importlib import resources\n"
        "eval('1')\nexec('x = 1')\nimport torch\ntorch.load('f')\n"
        "torch.load('g', weights_only=True)\n"
    )
    found = _findings(probe, rel="planner/probe.py")
    assert len(found) == 6, found
    allowed = _findings(probe, rel="planner/torch/probe.py")
    assert len(allowed) == 5 and not any("code loading" in f for f in allowed), allowed


def test_reading_files_does_not_touch_the_network(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):  # pragma: no cover - must never run
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    path = tmp_path / "model.json"
    path.write_bytes(text(base_doc()))
    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["solve", str(path), "--memory", "1GB", "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["simulate", str(path), str(out), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["valid"] is True


# ------------------------------------------------------------------- fuzzing

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
_LAYER_KEYS = ["name", "inputs", "forward", "backward", "output_bytes", "saved_bytes", "needs_inputs",
               "needs_output", "workspace_forward", "workspace_backward", "params_bytes", "extra"]
_TOP_KEYS = ["format", "name", "input_bytes", "layers", "time_unit", "source"]


@st.composite
def _mutated_model_docs(draw):
    doc = draw(model_docs(max_layers=5))
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            target, keys = doc, _TOP_KEYS
        else:
            layers = doc.get("layers")
            if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
                continue
            target, keys = draw(st.sampled_from(layers)), _LAYER_KEYS
            if not isinstance(target, dict):
                continue
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(_JSON | st.sampled_from(["input", "L0", "L1", "L4"]))
    return doc


@settings(max_examples=examples(120))
@given(doc=_mutated_model_docs())
def test_fuzzed_model_documents_load_or_raise_model_error(doc):
    """Any JSON value anywhere: a Model or a ModelError naming the source, nothing else."""
    try:
        model = model_from_dict(doc, source_name="fuzz.json")
    except ModelError as exc:
        assert str(exc).startswith("fuzz.json: ")
        assert "\n" not in str(exc) and len(str(exc)) < 600
        return
    assert model.fingerprint.startswith("sha256:")
    assert solve(model, None, "store-all").result.valid


@settings(max_examples=examples(80))
@given(data=st.data())
def test_fuzzed_schedule_documents_load_or_raise_schedule_format_error(data):
    model = data.draw(models(max_layers=5))
    doc = json.loads("".join(solve(model, None, "store-all").schedule.iter_json(model)))
    for _ in range(data.draw(st.integers(1, 3))):
        ops = doc.get("ops")
        if isinstance(ops, list) and ops and data.draw(st.booleans()):
            target = data.draw(st.sampled_from(ops))
            if not isinstance(target, dict):
                continue
            key = data.draw(st.sampled_from(["op", "layer", "save", "extra"]))
        else:
            target = doc
            key = data.draw(st.sampled_from(["format", "model", "strategy", "params", "budget_bytes",
                                             "predicted", "ops"]))
        target[key] = data.draw(_JSON | st.sampled_from(["forward", "backward", "free", "L0", "input"]))
    try:
        schedule = schedule_from_dict(doc, model, source_name="fuzz.json")
    except ScheduleFormatError as exc:
        assert str(exc).startswith("fuzz.json: ") and "\n" not in str(exc)
        return
    result = simulate(model, schedule.ops)
    assert result.valid in (True, False)


def test_one_exception_tree():
    """Every error edgeplan raises on purpose is an EdgeplanError, internal bugs included."""
    from planner import errors, solvers

    assert solvers.SolverBug is errors.SolverBug
    assert issubclass(errors.SolverBug, errors.InternalError)
    assert issubclass(errors.InternalError, errors.EdgeplanError)
    assert not issubclass(errors.TooLargeError, errors.NotApplicableError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.EdgeplanError), name
