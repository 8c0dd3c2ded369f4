"""Tests of the Checkmate/Moccasin importer (planner.io.checkmate) and ``edgeplan import``.

The published graphs are read from ../shared/benchmarks/moccasin/data (GPL-3.0,
never copied into this repository); the format tests build small node-link
documents of their own.
"""

import json

import pytest
from click.testing import CliRunner

from cli import main
from planner import solvers
from planner.errors import ModelError
from planner.io.checkmate import checkmate_to_model, import_checkmate
from planner.model import model_from_dict
from tests.conftest import MOCCASIN as DATA

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason="the Moccasin graphs live in ../shared/benchmarks/moccasin/data"
)

# PROVENANCE.md's anchors: (file prefix, nodes, no-remat peak, total cost_cpu).
ANCHORS = [
    ("VGG16 (MLSys)_256", 45, 15825108992, 15500),
    ("VGG19 (MLSys)_256", 51, 17058234368, 9493135),
    ("MobileNet (MLSys)_512", 185, 34701056000, 162080),
    ("ResNet50 (MLSys)_256", 353, 38059356160, 405670),
    ("fcn_8_vgg (MLSys)_32", 73, 13484795520, 10275337746048),
    ("segnet (MLSys)_32", 77, 19943884288, 4933130),
    ("vgg_unet (MLSys)_32", 71, 20959461376, 31005),
]


def _file(prefix, kind="train"):
    matches = sorted(DATA.glob(f"{prefix}*_{kind}_nx.json"))
    assert len(matches) == 1, prefix
    return matches[0]


def _training_graph():
    """a -> b -> c, with c also reading a; Loss reads c; backward nodes as Checkmate makes them."""
    nodes = [
        {"id": 0, "name": "a", "backward": False, "cost_cpu": 10, "cost_ram": 400},
        {"id": 1, "name": "b", "backward": False, "cost_cpu": 20, "cost_ram": 800},
        {"id": 2, "name": "c", "backward": False, "cost_cpu": 5, "cost_ram": 200},
        {"id": 3, "name": "Loss", "backward": True, "cost_cpu": 1, "cost_ram": 4},
        {"id": 4, "name": "c_backward", "backward": True, "cost_cpu": 7, "cost_ram": 200},
        {"id": 5, "name": "b_backward", "backward": True, "cost_cpu": 30, "cost_ram": 800},
        {"id": 6, "name": "a_backward", "backward": True, "cost_cpu": 15, "cost_ram": 400},
    ]
    edges = [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (2, 4), (4, 5), (1, 5), (2, 5), (5, 6), (0, 6),
             (1, 6), (0, 5)]
    return {
        "directed": True, "multigraph": False, "graph": {"name": "tiny_train"},
        "nodes": nodes, "links": [{"source": u, "target": v} for u, v in edges],
    }


def _write(tmp_path, doc, name="g.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


# ---- the published graphs ------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("prefix, nodes, peak, total", ANCHORS, ids=[a[0].split()[0] for a in ANCHORS])
def test_training_graphs_match_moccasins_baseline(prefix, nodes, peak, total):
    doc = import_checkmate(_file(prefix))
    model = model_from_dict(doc)
    assert len(model) == (nodes - 1) // 2 + 1  # forward nodes and the Loss
    assert model.layers[-1].name == "Loss"
    store_all = solvers.solve(model, None, "store-all")
    # the no-remat peak and compute of Moccasin's util, to the byte
    assert store_all.result.peak_bytes == peak
    assert model.baseline_compute == total
    assert "estimated" not in doc["source"]
    assert all(layer.needs_output and not layer.needs_inputs for layer in model.layers[:-1])


@needs_data
def test_vgg16_layers_and_backward_costs():
    model = model_from_dict(import_checkmate(_file("VGG16 (MLSys)_256")))
    assert model.is_chain
    first = model.layers[0]
    assert (first.name, first.forward, first.backward, first.output_bytes) == (
        "block1_conv1", 385.0, 390.0, 3288334336,
    )
    assert first.uses_input and model.input_bytes == 0
    assert model.layers[-1].forward == 1170.0 and model.layers[-1].backward == 0.0


@needs_data
def test_resnet50_is_a_dag_with_skip_connections():
    model = model_from_dict(import_checkmate(_file("ResNet50 (MLSys)_256")))
    assert not model.is_chain
    assert sum(len(layer.inputs) == 2 for layer in model.layers) == 16  # the residual adds


@needs_data
def test_forward_only_graphs_estimate_the_backward():
    doc = import_checkmate(_file("VGG16 (MLSys)_256", "test"))
    model = model_from_dict(doc)
    assert len(model) == 22
    assert all(layer.backward == 2 * layer.forward for layer in model.layers)
    assert all(layer.needs_inputs and not layer.needs_output for layer in model.layers)
    assert "estimated" in doc["source"]


@needs_data
def test_random_layered_graph():
    path = next(DATA.glob("random_layered_n100_*.json"))
    doc = import_checkmate(path)
    model = model_from_dict(doc)
    raw = json.loads(path.read_text())
    assert len(model) == 100
    assert [layer.name for layer in model.layers] == [str(v) for v in raw["graph"]["order"]]
    assert model.layers[-1].name == "1"  # the target node is the sink
    assert sum(len(layer.inputs) for layer in model.layers) == len(raw["links"])
    assert "estimated" in doc["source"]


# ---- the format, on small graphs -----------------------------------------------------------


def test_training_graph_mapping():
    model = model_from_dict(checkmate_to_model(_training_graph()))
    names = [layer.name for layer in model.layers]
    assert names == ["a", "b", "c", "Loss"]
    a, b, c, loss = model.layers
    assert (a.forward, a.backward, a.output_bytes) == (10, 15, 400)
    assert b.inputs == (0,) and c.inputs == (0, 1)  # producers in topological order
    assert b.needs_output and b.needs_inputs  # a -> b_backward: input_dep
    assert c.needs_output and not c.needs_inputs
    assert loss.inputs == (2,) and loss.backward == 0 and loss.output_bytes == 4
    assert model.name == "tiny_train"
    assert model.baseline_compute == 10 + 20 + 5 + 1 + 7 + 30 + 15


def test_missing_backward_node_is_estimated():
    doc = _training_graph()
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] != "b_backward"]
    doc["links"] = [l for l in doc["links"] if 5 not in (l["source"], l["target"])]
    out = checkmate_to_model(doc)
    b = out["layers"][1]
    assert b["backward"] == 40 and b["needs_inputs"] and not b["needs_output"]
    assert "1 layers without a backward node" in out["source"]


def test_several_sinks_get_a_loss_layer():
    doc = {
        "nodes": [{"name": v, "out_cost": 10, "duration": 3} for v in ("s", "x", "y")],
        "links": [{"0": "s", "1": "x"}, {"0": "s", "1": "y"}],
    }
    model = model_from_dict(checkmate_to_model(doc))
    assert [layer.name for layer in model.layers] == ["s", "x", "y", "loss"]
    assert model.layers[-1].inputs == (1, 2)


def test_names_are_made_unique_and_never_input():
    doc = {
        "nodes": [
            {"id": 0, "name": "input", "backward": False, "cost_cpu": 1, "cost_ram": 8},
            {"id": 1, "name": "dup", "backward": False, "cost_cpu": 1, "cost_ram": 8},
            {"id": 2, "name": "dup", "backward": False, "cost_cpu": 1, "cost_ram": 8},
        ],
        "links": [{"source": 0, "target": 1}, {"source": 1, "target": 2}],
    }
    model = model_from_dict(checkmate_to_model(doc))
    assert [layer.name for layer in model.layers] == ["input#0", "dup", "dup#2"]


@pytest.mark.parametrize(
    "doc, message",
    [
        ([1, 2], "must be a JSON object"),
        ({"links": []}, "missing 'nodes'"),
        ({"nodes": {}, "links": []}, "'nodes' must be a list"),
        ({"nodes": [], "links": []}, "'nodes' is empty"),
        ({"nodes": [{"cost_cpu": 1}], "links": []}, "needs an 'id'"),
        ({"nodes": [{"id": 0, "name": "a"}, {"id": 0, "name": "b"}], "links": []}, "duplicate id 0"),
        ({"nodes": [{"id": 0, "name": "a", "cost_cpu": 1, "cost_ram": 4}],
          "links": [{"source": 0, "target": 9}]}, "unknown node 9"),
        ({"nodes": [{"id": 0, "name": "a", "cost_cpu": 1, "cost_ram": 4}],
          "links": [{"source": 0}]}, "link #0 must be an object"),
        ({"nodes": [{"id": 0, "name": "a", "cost_cpu": -1, "cost_ram": 4}], "links": []},
         "'cost_cpu' must be a number >= 0"),
        ({"nodes": [{"id": 0, "name": "a", "cost_cpu": 1, "cost_ram": 4.5}], "links": []},
         "'cost_ram' must be a whole number"),
        ({"nodes": [{"id": 0, "name": "a", "cost_cpu": 1}], "links": []}, "missing 'cost_ram'"),
        ({"nodes": [{"id": 0, "name": "a"}], "links": []}, "unknown graph"),
        ({"nodes": [{"id": v, "name": str(v), "cost_cpu": 1, "cost_ram": 4} for v in (0, 1)],
          "links": [{"source": 0, "target": 1}, {"source": 1, "target": 0}]}, "cycle"),
        ({"nodes": [{"id": 0, "name": "a", "backward": False, "cost_cpu": 1, "cost_ram": 4},
                    {"id": 1, "name": "Loss", "backward": True, "cost_cpu": 1, "cost_ram": 4},
                    {"id": 2, "name": "z_backward", "backward": True, "cost_cpu": 1, "cost_ram": 4}],
          "links": []}, "no forward node named 'z'"),
        ({"nodes": [{"id": 0, "name": "a", "backward": False, "cost_cpu": 1, "cost_ram": 4},
                    {"id": 1, "name": "a_backward", "backward": True, "cost_cpu": 1, "cost_ram": 4}],
          "links": []}, "exactly one loss node"),
        ({"nodes": [{"id": 0, "name": "a", "backward": "no", "cost_cpu": 1, "cost_ram": 4}],
          "links": []}, "'backward' must be true or false"),
    ],
)
def test_malformed_graphs_are_model_errors(doc, message):
    with pytest.raises(ModelError, match=message):
        checkmate_to_model(doc, source_name="g.json")


def test_unreadable_files_name_the_file(tmp_path):
    path = _write(tmp_path, "{not json")
    with pytest.raises(ModelError, match="g.json: not valid JSON"):
        import_checkmate(path)
    with pytest.raises(ModelError, match="cannot read"):
        import_checkmate(tmp_path / "missing.json")


# ---- edgeplan import -----------------------------------------------------------------------


def test_cli_import_writes_a_valid_model(tmp_path):
    src = _write(tmp_path, _training_graph(), "tiny_train.json")
    out = tmp_path / "model.json"
    result = CliRunner().invoke(main, ["import", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 layers" in result.stderr and "backward costs from the file" in result.stderr
    model = model_from_dict(json.loads(out.read_text()))
    assert [layer.name for layer in model.layers] == ["a", "b", "c", "Loss"]
    solved = CliRunner().invoke(main, ["solve", str(out), "--memory", "10kB", "--json"])
    assert solved.exit_code == 0, solved.output


def test_cli_import_json_and_estimated_summary(tmp_path):
    doc = {"nodes": [{"name": v, "out_cost": 10, "duration": 3} for v in (0, 1)],
           "links": [{"0": 0, "1": 1}], "graph": {"order": [0, 1]}}
    src = _write(tmp_path, doc, "layered.data")
    result = CliRunner().invoke(main, ["import", str(src), "--from", "checkmate", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layers"][1]["backward"] == 6
    assert "estimated" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["g.txt"], "cannot tell the format"),
        (["g.json", "--input", "x:1,2"], "--input applies to ONNX models only"),
        (["bad.json"], "field 'nodes' must be a list"),
        (["missing.json"], "cannot read"),
    ],
)
def test_cli_import_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    _write(tmp_path, _training_graph(), "g.json")
    _write(tmp_path, _training_graph(), "g.txt")
    _write(tmp_path, {"nodes": 1, "links": []}, "bad.json")
    out = tmp_path / "out.json"
    args = [str(tmp_path / args[0])] + args[1:]
    result = CliRunner().invoke(main, ["import", *args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("bad", ["x", "x:", "x:0,3", ":1,2", "x:a,b"])
def test_cli_import_rejects_bad_input_shapes(tmp_path, bad):
    result = CliRunner().invoke(main, ["import", "m.onnx", "--input", bad])
    assert result.exit_code == 2
    assert "NAME:SHAPE" in result.stderr or "SHAPE must be" in result.stderr


def test_import_file_says_whether_costs_are_estimated(tmp_path):
    from planner.io import import_file

    full = import_file(_write(tmp_path, _training_graph(), "tiny_train.json"))
    assert full.source_format == "checkmate" and not full.estimated
    assert full.model.layers == model_from_dict(full.document).layers
    partial = _training_graph()
    partial["nodes"] = [n for n in partial["nodes"] if n["name"] != "b_backward"]
    partial["links"] = [l for l in partial["links"] if 5 not in (l["source"], l["target"])]
    assert import_file(_write(tmp_path, partial, "partial.json")).estimated
    layered = {"nodes": [{"name": v, "out_cost": 10, "duration": 3} for v in (0, 1)], "links": [{"0": 0, "1": 1}]}
    assert import_file(_write(tmp_path, layered, "layered.data"), source_format="checkmate").estimated
    with pytest.raises(ModelError, match="cannot tell the format"):
        import_file(_write(tmp_path, layered, "layered.data"))
    with pytest.raises(ModelError, match="--input applies to ONNX models only"):
        import_file(_write(tmp_path, layered, "g.json"), input_shapes={"x": (1,)})


def test_one_unique_naming_scheme():
    from planner.io import unique_names

    # Empty names become their key; taken names and "input" get "#key".
    assert unique_names(["a", "a", "", "input", "a#1"]) == ["a", "a#1", "2", "input#3", "a#1#4"]
    assert unique_names(["x", "x"], keys=["n7", "n9"]) == ["x", "x#n9"]
    assert unique_names(["input", "input#0"], keys=[0, 1]) == ["input#0", "input#0#1"]
