"""Import an ONNX graph as an ``edgeplan-model/1`` document.

Every ONNX node becomes a layer whose inputs are the nodes that produce its
input tensors (a graph input is ``"input"``; initializers are the layer's
parameters).  Tensor sizes come from ``onnx.shape_inference``; costs are
estimates: the forward cost is the FLOP count for ``Conv``, ``ConvTranspose``,
``Gemm`` and ``MatMul`` and the number of output elements for every other op,
the backward cost twice the forward (``time_unit`` is ``flop`` and ``source``
says the costs are estimated).

What a node's backward reads is guessed from its op type (a small table:
``Relu`` reads its output, ``Add`` nothing, ``Conv`` its inputs, ...);
``saved_bytes`` is 0.  For measured numbers profile the PyTorch model
instead (``edgeplan profile``).

Graph shape rules:

- Symbolic dimensions of the graph inputs (``N``, ``batch``, unknown) must be
  bound by ``input_shapes``; otherwise :class:`ModelError` names them.
- Nodes that read no graph input, directly or not (``Constant``, folded
  shape arithmetic), are constants, not layers.
- Nodes whose outputs reach no graph output are dropped.
- A node with several outputs (``Split``, ``TopK``) counts the sum of them.
- With several graph outputs, a layer named ``loss`` (no cost, no output
  bytes) reads all of them and is the sink, as a training step sums the
  losses; with one, the node producing it is the sink.

onnx is imported inside the functions: ``pip install edgeplan[onnx]``.
"""

import os
from dataclasses import dataclass

from planner.io import unique_names
from planner.errors import ModelError
from planner.model import INPUT, MODEL_FORMAT, model_from_dict

__all__ = ["import_onnx", "node_flops"]

# Op types whose backward reads nothing of the activations (sums, reshapes).
_READS_NOTHING = {
    "Add", "Sub", "Neg", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Concat", "Split", "Slice", "Gather", "Pad", "Expand", "Tile",
    "GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum", "Cast", "Dropout",
    "Shape", "Size", "Constant", "ConstantOfShape",
}
# Op types whose backward reads their own output only.
_READS_OUTPUT = {"Relu", "Sigmoid", "Tanh", "Exp", "Softmax", "LogSoftmax", "Elu", "Sqrt"}


def _require_onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - CI installs onnx
        raise ModelError("onnx is not installed: pip install edgeplan[onnx]") from None
    return onnx


def _elem_size(onnx, elem_type, what):
    try:
        import numpy as np

        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{what}: unsupported element type {elem_type}") from None


def _numel(dims):
    n = 1
    for d in dims:
        n *= d
    return n


def _dims(type_proto):
    """Static dims of a tensor type, or None where one is symbolic/unknown."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(d.dim_value)
        else:
            return None
    return dims


def node_flops(op_type, in_shapes, out_shapes, attrs):
    """Forward cost of one node: FLOPs for Conv/ConvTranspose/Gemm/MatMul, else output elements.

    Parameters
    ----------
    op_type : str
    in_shapes, out_shapes : list of list of int
        Static shapes (None for an absent optional input).
    attrs : dict
        Node attributes (``group``).

    Returns
    -------
    int

    Notes
    -----
    Multiply-adds count as 2 FLOPs; biases are not counted.
    """
    out_elems = sum(_numel(s) for s in out_shapes if s is not None)
    if op_type == "Conv" and len(in_shapes) >= 2 and in_shapes[1] and out_shapes:
        w = in_shapes[1]  # (M, C/group, k...)
        return 2 * _numel(out_shapes[0]) * _numel(w[1:])
    if op_type == "ConvTranspose" and len(in_shapes) >= 2 and in_shapes[1] and in_shapes[0]:
        w = in_shapes[1]  # (C, M/group, k...)
        return 2 * _numel(in_shapes[0]) * _numel(w[1:])
    if op_type == "Gemm" and len(in_shapes) >= 2 and in_shapes[0] and in_shapes[1]:
        a, b = in_shapes[0], in_shapes[1]
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return 2 * m * n * k
    if op_type == "MatMul" and len(in_shapes) >= 2 and in_shapes[0] and in_shapes[1] and out_shapes:
        a = in_shapes[0]
        k = a[-1] if a else 1
        return 2 * _numel(out_shapes[0]) * k
    return out_elems


def import_onnx(path, input_shapes=None):
    """Read an ONNX file into an ``edgeplan-model/1`` document.

    Parameters
    ----------
    path : str or os.PathLike
    input_shapes : dict of str to sequence of int, optional
        Shapes for the graph inputs; required for every input with a symbolic
        or unknown dimension, allowed for any input.

    Returns
    -------
    dict
        A validated ``edgeplan-model/1`` document (``time_unit`` ``flop``);
        every cost in it is an estimate.

    Raises
    ------
    ModelError
        Unreadable or invalid file, a symbolic dimension left unbound, a shape
        that inference cannot determine, an ``input_shapes`` entry for no
        input, or a graph that yields no layer.

    Notes
    -----
    O(nodes + edges) after ``onnx.shape_inference`` (strict mode, with data
    propagation).
    """
    onnx = _require_onnx()
    where = str(path)
    model, inputs = _load(onnx, where, dict(input_shapes or {}))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise ModelError(f"{where}: ONNX shape inference failed: {text}") from None
    g = inferred.graph
    tensors = _Tensors.of(onnx, g, where)
    input_names = {vi.name for vi in inputs}
    producer = {out: k for k, node in enumerate(g.node) for out in node.output if out}
    layer_nodes, sinks = _layer_nodes(g, producer, input_names, where)
    names = unique_names([g.node[k].name or f"{g.node[k].op_type}_{k}" for k in layer_nodes], keys=layer_nodes)
    name_of = dict(zip(layer_nodes, names))
    input_bytes = sum(tensors.nbytes(vi.name, f"input {vi.name!r}") for vi in inputs)
    layers = [_layer(onnx, g.node[k], name_of[k], name_of, producer, input_names, tensors) for k in layer_nodes]
    if len(sinks) > 1:
        layers.append(
            {
                "name": unique_names(names + ["loss"])[-1],
                "inputs": [name_of[k] for k in sinks],
                "forward": 0.0,
                "backward": 0.0,
                "output_bytes": 0,
                "needs_inputs": False,
            }
        )
    doc = {
        "format": MODEL_FORMAT,
        "name": g.name or os.path.splitext(os.path.basename(where))[0] or "onnx",
        "time_unit": "flop",
        "source": (
            f"edgeplan import of {os.path.basename(where)} (ONNX opset "
            f"{max((o.version for o in model.opset_import), default=0)}): sizes from "
            "onnx.shape_inference; forward = FLOPs (Conv, ConvTranspose, Gemm, MatMul) or output "
            "elements; backward = 2 x forward, estimated; needs_inputs/needs_output from the op "
            "type, saved_bytes 0 (estimated)"
        ),
        "input_bytes": int(input_bytes),
        "layers": layers,
    }
    model_from_dict(doc, source_name=where)
    return doc


def _load(onnx, where, shapes):
    """(model proto, graph inputs that are not initializers), with ``shapes`` bound into it."""
    if not os.path.isfile(where):
        raise ModelError(f"{where}: no such file")
    try:
        model = onnx.load(where, load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base class
        raise ModelError(f"{where}: not a readable ONNX file: {type(exc).__name__}: {exc}") from None
    graph = model.graph
    if not graph.node:
        raise ModelError(f"{where}: the ONNX graph has no nodes")
    init_names = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in init_names]
    if not inputs:
        raise ModelError(f"{where}: the ONNX graph has no input (every input is an initializer)")
    known = {vi.name for vi in inputs}
    for key in shapes:
        if key not in known:
            raise ModelError(
                f"{where}: input shape given for {key!r}, but the graph inputs are "
                + ", ".join(repr(n) for n in sorted(known))
            )
    for vi in inputs:
        if vi.name in shapes:
            _bind_shape(vi, [int(d) for d in shapes[vi.name]], where)
        else:
            _check_static(vi, where)
    return model, inputs


def _bind_shape(vi, bound, where):
    """Give graph input ``vi`` the shape ``bound``, where it agrees with the file's."""
    tensor_type = vi.type.tensor_type
    if any(d <= 0 for d in bound):
        raise ModelError(f"{where}: input {vi.name!r}: sizes must be positive, got {bound}")
    old = list(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
    if old is not None and len(old) != len(bound):
        raise ModelError(
            f"{where}: input {vi.name!r} has {len(old)} dimensions, the shape given has {len(bound)}"
        )
    for k, (d, b) in enumerate(zip(old or [], bound)):
        if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != b:
            raise ModelError(
                f"{where}: input {vi.name!r} dimension {k} is {d.dim_value}, the shape given says {b}"
            )
    tensor_type.ClearField("shape")
    for b in bound:
        tensor_type.shape.dim.add().dim_value = b


def _check_static(vi, where):
    """Graph input ``vi`` has no shape given: every one of its dimensions must be fixed."""
    tensor_type = vi.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise ModelError(
            f"{where}: input {vi.name!r} has no shape; bind it with an input shape "
            f"(e.g. {vi.name}=1,3,224,224)"
        )
    dims = tensor_type.shape.dim
    free = [(k, d.dim_param or "?") for k, d in enumerate(dims) if not (d.HasField("dim_value") and d.dim_value > 0)]
    if free:
        listed = ", ".join(f"dimension {k} ({name!r})" for k, name in free)
        example = ",".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else "8" for d in dims)
        raise ModelError(
            f"{where}: input {vi.name!r} has symbolic dimensions: {listed}; bind them "
            f"with an input shape (e.g. {vi.name}={example})"
        )


def _layer_nodes(g, producer, input_names, where):
    """(indices of the nodes that become layers, in a topological order; the sink nodes).

    Layers are the nodes that depend on a graph input (the others are
    constants) and that some graph output depends on.
    """
    dynamic = set(input_names)
    layer_nodes = []
    for k in _topological(g.node, producer, where):
        node = g.node[k]
        if any(name in dynamic for name in node.input if name):
            layer_nodes.append(k)
            dynamic.update(o for o in node.output if o)
    layer_set = set(layer_nodes)
    sinks = [producer[o.name] for o in g.output if o.name in producer and producer[o.name] in layer_set]
    sinks = list(dict.fromkeys(sinks))
    if not sinks:
        raise ModelError(f"{where}: no graph output depends on a graph input: nothing to train")
    live = set()
    stack = list(sinks)
    while stack:
        k = stack.pop()
        if k in live:
            continue
        live.add(k)
        for name in g.node[k].input:
            if name in producer and producer[name] in layer_set:
                stack.append(producer[name])
    return [k for k in layer_nodes if k in live], sinks


@dataclass(frozen=True)
class _Tensors:
    """Shapes and sizes of the tensors of an inferred graph."""

    onnx: object
    where: str
    types: dict
    init_shape: dict
    init_bytes: dict

    @classmethod
    def of(cls, onnx, g, where):
        types = {vi.name: vi.type for vi in list(g.input) + list(g.value_info) + list(g.output)}
        init_bytes = {
            t.name: _numel(t.dims) * _elem_size(onnx, t.data_type, f"{where}: initializer {t.name!r}")
            for t in g.initializer
        }
        return cls(onnx, where, types, {t.name: list(t.dims) for t in g.initializer}, init_bytes)

    def nbytes(self, name, what):
        if name in self.init_bytes:
            return self.init_bytes[name]
        t = self.types.get(name)
        dims = _dims(t) if t is not None else None
        if dims is None:
            raise ModelError(
                f"{self.where}: {what}: the shape of tensor {name!r} is unknown after shape inference"
            )
        return _numel(dims) * _elem_size(self.onnx, t.tensor_type.elem_type, f"{self.where}: tensor {name!r}")

    def shape(self, name):
        if name in self.init_shape:
            return self.init_shape[name]
        t = self.types.get(name)
        return _dims(t) if t is not None else None


def _layer(onnx, node, me, name_of, producer, input_names, tensors):
    """The layer ``me`` of one node: what it reads, its parameters, its estimated costs."""
    reads = []
    params = 0
    for name in node.input:
        if not name:
            continue
        if name in input_names:
            if INPUT not in reads:
                reads.append(INPUT)
        elif name in producer and producer[name] in name_of:
            p = name_of[producer[name]]
            if p not in reads:
                reads.append(p)
        elif name in tensors.init_bytes:
            params += tensors.init_bytes[name]
    what = f"node {me!r} ({node.op_type})"
    out_bytes = sum(tensors.nbytes(o, what) for o in node.output if o)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    flops = node_flops(
        node.op_type,
        [tensors.shape(n) if n else None for n in node.input],
        [tensors.shape(o) for o in node.output if o],
        attrs,
    )
    return {
        "name": me,
        "inputs": reads,
        "forward": float(flops),
        "backward": float(2 * flops),
        "output_bytes": int(out_bytes),
        "saved_bytes": 0,
        "needs_inputs": node.op_type not in _READS_NOTHING and node.op_type not in _READS_OUTPUT,
        "needs_output": node.op_type in _READS_OUTPUT,
        "params_bytes": int(params),
    }


def _topological(nodes, producer, where):
    """Node indices in a topological order (file order among the ready ones)."""
    import heapq

    deps = []
    users = [[] for _ in nodes]
    for k, node in enumerate(nodes):
        ds = {producer[n] for n in node.input if n and n in producer}
        ds.discard(k)
        if any(producer.get(n) == k for n in node.input if n):
            raise ModelError(f"{where}: node {node.name or node.op_type!r} reads its own output")
        deps.append(len(ds))
        for d in ds:
            users[d].append(k)
    ready = [k for k in range(len(nodes)) if deps[k] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            deps[u] -= 1
            if deps[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ModelError(f"{where}: the ONNX graph has a cycle")
    return order
