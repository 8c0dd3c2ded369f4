"""Tests for planner.io.onnx.import_onnx (graphs built with onnx.helper)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from planner import solvers
from planner.errors import ModelError
from planner.io.onnx import import_onnx, node_flops
from planner.model import model_from_dict
from tests.reference import replay_solution


def _weight(name, *shape):
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def _save(tmp_path, nodes, inputs, outputs, initializers, name="g", filename="m.onnx"):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / filename
    onnx.save(model, str(path))
    return path


@pytest.fixture
def skip_onnx(tmp_path):
    """conv1 -> relu1 -> conv2 -> add(conv2, relu1) -> relu2 -> pool -> flatten -> gemm; batch symbolic."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    inits = [_weight("w1", 4, 3, 3, 3), _weight("b1", 4), _weight("w2", 4, 4, 3, 3), _weight("wf", 10, 4), _weight("bf", 10)]
    return _save(tmp_path, nodes, inputs, outputs, inits, name="skipnet")


def test_skip_connection_imports_with_two_inputs_and_sizes(skip_onnx):
    doc = import_onnx(skip_onnx, {"x": (2, 3, 8, 8)})
    model = model_from_dict(doc)
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert [l["name"] for l in doc["layers"]] == ["conv1", "relu1", "conv2", "add", "relu2", "pool", "flat", "fc"]
    assert layers["add"]["inputs"] == ["conv2", "relu1"]
    assert layers["conv1"]["inputs"] == ["input"]
    act = 2 * 4 * 8 * 8 * 4
    assert doc["input_bytes"] == 2 * 3 * 8 * 8 * 4
    for name in ("conv1", "relu1", "conv2", "add", "relu2"):
        assert layers[name]["output_bytes"] == act
    assert layers["pool"]["output_bytes"] == 2 * 4 * 4
    assert layers["fc"]["output_bytes"] == 2 * 10 * 4
    assert layers["conv1"]["params_bytes"] == (4 * 3 * 9 + 4) * 4
    assert layers["fc"]["params_bytes"] == (40 + 10) * 4
    # Costs: FLOPs for Conv and Gemm, elements otherwise, backward twice forward.
    assert layers["conv1"]["forward"] == 2 * (2 * 4 * 8 * 8) * (3 * 9)
    assert layers["fc"]["forward"] == 2 * 2 * 10 * 4
    assert layers["relu1"]["forward"] == 2 * 4 * 8 * 8
    assert all(l["backward"] == 2 * l["forward"] for l in doc["layers"])
    assert "estimated" in doc["source"] and doc["time_unit"] == "flop"
    assert layers["relu1"]["needs_output"] and not layers["relu1"]["needs_inputs"]
    assert not layers["add"]["needs_inputs"]
    assert not model.is_chain and model.sink == len(model) - 1
    for strategy in solvers.applicable(model):
        solution = solvers.solve(model, None, strategy, time_limit=5) if strategy == "milp" else solvers.solve(model, None, strategy)
        ref = replay_solution(model, solution)
        assert ref["valid"] and ref["peak_bytes"] == solution.result.peak_bytes


def test_symbolic_dimension_must_be_bound(skip_onnx):
    with pytest.raises(ModelError, match=r"input 'x' has symbolic dimensions: dimension 0 \('N'\)"):
        import_onnx(skip_onnx)
    with pytest.raises(ModelError, match="input shape given for 'z'"):
        import_onnx(skip_onnx, {"x": (1, 3, 8, 8), "z": (1,)})
    with pytest.raises(ModelError, match="dimension 2 is 8, the shape given says 9"):
        import_onnx(skip_onnx, {"x": (1, 3, 9, 8)})
    with pytest.raises(ModelError, match="has 4 dimensions, the shape given has 2"):
        import_onnx(skip_onnx, {"x": (1, 3)})
    doc = import_onnx(skip_onnx, {"x": [5, 3, 8, 8]})
    assert doc["input_bytes"] == 5 * 3 * 8 * 8 * 4


def test_bad_files(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        import_onnx(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff")
    with pytest.raises(ModelError, match="junk.onnx"):
        import_onnx(junk)


def test_several_outputs_get_a_loss_sink_and_constants_fold(tmp_path):
    nodes = [
        helper.make_node("Constant", [], ["k"], name="two",
                         value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("Mul", ["x", "k"], ["m"], name="scale"),
        helper.make_node("MatMul", ["m", "w"], ["y1"], name="proj"),
        helper.make_node("Tanh", ["m"], ["y2"], name="act"),
        helper.make_node("Sigmoid", ["x"], ["dead"], name="unused"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])]
    outputs = [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)]
    path = _save(tmp_path, nodes, inputs, outputs, [_weight("w", 6, 3)])
    doc = import_onnx(path)
    model_from_dict(doc)
    names = [l["name"] for l in doc["layers"]]
    assert names == ["scale", "proj", "act", "loss"]  # Constant folded, dead node dropped
    loss = doc["layers"][-1]
    assert loss["inputs"] == ["proj", "act"] and loss["forward"] == 0 and loss["output_bytes"] == 0
    proj = doc["layers"][1]
    assert proj["forward"] == 2 * 4 * 3 * 6 and proj["output_bytes"] == 4 * 3 * 4


def test_node_flops():
    assert node_flops("Conv", [[1, 2, 5, 5], [3, 2, 3, 3]], [[1, 3, 3, 3]], {}) == 2 * 27 * 18
    assert node_flops("Gemm", [[4, 5], [5, 6]], [[4, 6]], {}) == 2 * 4 * 6 * 5
    assert node_flops("Gemm", [[5, 4], [6, 5]], [[4, 6]], {"transA": 1, "transB": 1}) == 2 * 4 * 6 * 5
    assert node_flops("MatMul", [[2, 3, 4], [4, 5]], [[2, 3, 5]], {}) == 2 * 30 * 4
    assert node_flops("Relu", [[7]], [[7]], {}) == 7


def test_import_file_onnx_is_estimated(skip_onnx):
    from planner.io import import_file

    imported = import_file(skip_onnx, input_shapes={"x": (2, 3, 8, 8)})
    assert imported.source_format == "onnx" and imported.estimated
    assert imported.document == import_onnx(skip_onnx, {"x": (2, 3, 8, 8)})
    assert len(imported.model) == 8
