"""Checkmate and Moccasin computation graphs -> ``edgeplan-model/1`` documents.

The graphs are networkx ``node_link_data`` JSON files, as published with
Moccasin (Bartan et al. 2023), in two flavours:

* Checkmate graphs (``dfgraph_from_keras`` of Jain et al. 2020).  Nodes have
  ``id``, ``name``, ``backward``, ``cost_cpu`` and ``cost_ram``; links are
  ``{"source": u, "target": v}`` (v reads u).  A *training* graph holds the
  forward nodes, one ``Loss`` node and a ``<name>_backward`` node per forward
  node; a *test* graph holds the forward nodes only.
* Random layered graphs (Gagrani et al. 2022, appendix A).  Nodes have
  ``name`` (the node id), ``out_cost`` and ``duration``; links use the keys
  ``"0"`` (source) and ``"1"`` (target); ``graph.order`` may give a
  topological order.

Mapping of a training graph: every forward node becomes a layer (forward time
``cost_cpu``, ``output_bytes`` ``cost_ram``), in topological order (ties by
id); its backward time is the ``cost_cpu`` of its ``_backward`` node;
``needs_output`` is true when the node links to its own backward node and
``needs_inputs`` when one of its producers does (Checkmate's ``output_dep``
and ``input_dep``).  Checkmate's remaining links into a backward node (from
the consumers' outputs and the consumers' backward nodes) say that the
gradient of a layer is made from its consumers' outputs and gradients: in
edgeplan that is the consumers' backward, which reads its own output
(``needs_output``) while the layer's saved data holds the layer's output, so
the memory present is the same.  The ``Loss`` node becomes the sink layer:
forward time and output as in the file, backward time 0, reading the forward
nodes that link to it (and any other forward node nothing reads).

Forward-only graphs (test graphs and random layered graphs) have no backward
costs: each layer gets ``backward = 2 x forward`` (Checkmate's own default
cost model), ``needs_inputs`` true and ``needs_output`` false, and the
document's ``source`` says that the backward costs are estimated.  A graph
with several sinks gets a zero-cost ``loss`` layer that reads them all.

What the files do not hold is zero: ``input_bytes`` (Moccasin does not count
the model input either), ``saved_bytes``, workspaces and ``params_bytes``.
"""

import math
import os

import networkx as nx

from planner.errors import ModelError
from planner.io import unique_names
from planner.model import INPUT, MODEL_FORMAT, read_json_file

__all__ = ["import_checkmate", "read_checkmate", "checkmate_to_model"]

_BACKWARD_SUFFIX = "_backward"


def import_checkmate(path):
    """Read a Checkmate or Moccasin graph file and return an ``edgeplan-model/1`` document.

    Parameters
    ----------
    path : str or os.PathLike
        A networkx node-link JSON file (see the module docstring).

    Returns
    -------
    dict
        The model document; validate it with
        :func:`planner.model.model_from_dict`.

    Raises
    ------
    ModelError
        The file cannot be read, is not JSON, or is not a Checkmate/Moccasin
        graph (missing or wrongly typed fields, unknown node ids in links,
        cycles, backward nodes without a forward node, ...).  The message
        names the file and the node.

    Notes
    -----
    O(V + E) for V nodes and E links.

    References
    ----------
    Jain et al., "Checkmate: Breaking the Memory Wall with Optimal Tensor
    Rematerialization", MLSys 2020.  Bartan et al., "Moccasin: Efficient
    Tensor Rematerialization for Neural Networks", ICML 2023.
    """
    return read_checkmate(path)[0]


def read_checkmate(path):
    """(document, estimated) of a graph file: :func:`import_checkmate`, and whether it estimated costs.

    ``estimated`` is true when some backward costs are ``2 x forward`` rather
    than read from the file (forward-only graphs, or backward nodes missing).
    """
    data = read_json_file(path, what="Checkmate/Moccasin graph")
    stem = os.path.splitext(os.path.basename(str(path)))[0]
    return _convert(data, source_name=str(path), default_name=stem)


def checkmate_to_model(data, *, source_name="<graph>", default_name="graph"):
    """Convert a parsed node-link document (see :func:`import_checkmate`)."""
    return _convert(data, source_name=source_name, default_name=default_name)[0]


def _convert(data, *, source_name, default_name):
    """(model document, estimated) of a parsed node-link document."""

    def fail(message):
        raise ModelError(f"{source_name}: {message}")

    if not isinstance(data, dict):
        fail(f"not a node-link graph: the top level must be a JSON object, not {type(data).__name__}")
    for key in ("nodes", "links"):
        if key not in data:
            fail(f"not a node-link graph: missing '{key}'")
        if not isinstance(data[key], list):
            fail(f"field '{key}' must be a list")
    nodes = data["nodes"]
    if not nodes:
        fail("field 'nodes' is empty")
    for position, node in enumerate(nodes):
        if not isinstance(node, dict):
            fail(f"node #{position} must be a JSON object")
    if all("id" in node for node in nodes):
        id_key = "id"
    elif all("name" in node for node in nodes):
        id_key = "name"
    else:
        fail("every node needs an 'id' (Checkmate) or a 'name' (random layered graphs)")
    graph = data.get("graph")
    graph = graph if isinstance(graph, dict) else {}
    name = graph.get("name")
    if not isinstance(name, str) or not name.strip():
        name = default_name or "graph"

    ids = {}
    for position, node in enumerate(nodes):
        node_id = node[id_key]
        if isinstance(node_id, bool) or not isinstance(node_id, (int, str)):
            fail(f"node #{position}: field '{id_key}' must be an integer or a string")
        if node_id in ids:
            fail(f"node #{position}: duplicate {id_key} {node_id!r}")
        ids[node_id] = node

    # networkx writes "source"/"target"; the random layered graphs use "0"/"1"
    first = data["links"][0] if data["links"] else {}
    if isinstance(first, dict) and "0" in first and "source" not in first:
        source_key, target_key = "0", "1"
    else:
        source_key, target_key = "source", "target"
    edges = []
    for position, link in enumerate(data["links"]):
        if not isinstance(link, dict) or source_key not in link or target_key not in link:
            fail(
                f"link #{position} must be an object with '{source_key}' and '{target_key}' "
                "(node-link format)"
            )
        u, v = link[source_key], link[target_key]
        for end in (u, v):
            if isinstance(end, bool) or not isinstance(end, (int, str)) or end not in ids:
                fail(f"link #{position} names an unknown node {end!r}")
        if u == v:
            fail(f"link #{position}: node {u!r} links to itself")
        edges.append((u, v))

    if any("cost_cpu" in node for node in nodes):
        layers, source, estimated = _checkmate_layers(ids, edges, fail, os.path.basename(source_name))
    elif any("duration" in node for node in nodes):
        layers, source, estimated = _random_layers(ids, edges, graph, fail, os.path.basename(source_name))
    else:
        fail(
            "unknown graph: nodes need 'cost_cpu' and 'cost_ram' (Checkmate) or "
            "'duration' and 'out_cost' (random layered graphs)"
        )
    document = {
        "format": MODEL_FORMAT,
        "name": name,
        "input_bytes": 0,
        "source": source,
        "layers": layers,
    }
    return document, estimated


def _number(node, key, fail, label):
    if key not in node:
        fail(f"node {label}: missing '{key}'")
    value = node[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        fail(f"node {label}: field '{key}' must be a number >= 0, got {value!r}"[:200])
    return value


def _size(node, key, fail, label):
    value = _number(node, key, fail, label)
    if isinstance(value, float):
        if not value.is_integer():
            fail(f"node {label}: field '{key}' must be a whole number of bytes, got {value!r}")
        value = int(value)
    return value


def _label(node_id, node):
    name = node.get("name")
    return f"{node_id!r}" + (f" ({name!r})" if isinstance(name, str) and name != node_id else "")


def _order(graph, preferred, fail):
    """A topological order of ``graph``: ``preferred`` when it is one, else ties by id."""
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        fail(f"the graph has a cycle through node {cycle[0][0]!r}")
    if preferred is not None:
        position = {v: k for k, v in enumerate(preferred)}
        if len(position) == len(preferred) == graph.number_of_nodes() and set(position) == set(graph):
            if all(position[u] < position[v] for u, v in graph.edges):
                return list(preferred)
    return list(nx.lexicographical_topological_sort(graph, key=lambda v: (str(type(v)), v)))


def _names(order, wanted):
    """``{node id: layer name}``: ``wanted`` made unique, keyed by the node ids (``dup#7``)."""
    return dict(zip(order, unique_names(wanted, keys=order)))


def _forward_only_layers(graph, order, forward_of, size_of, names):
    position = {v: k for k, v in enumerate(order)}
    layers = []
    for v in order:
        preds = sorted(graph.predecessors(v), key=position.__getitem__)
        layers.append(
            {
                "name": names[v],
                "inputs": [names[u] for u in preds] or [INPUT],
                "forward": forward_of[v],
                "backward": 2 * forward_of[v],
                "output_bytes": size_of[v],
                "needs_inputs": True,
                "needs_output": False,
            }
        )
    _add_loss(layers, graph, order, names)
    return layers


def _add_loss(layers, graph, order, names):
    """With several sinks, a zero-cost layer reading them all becomes the one sink."""
    sinks = [v for v in order if graph.out_degree(v) == 0]
    if len(sinks) <= 1:
        return
    layers.append(
        {
            "name": unique_names([layer["name"] for layer in layers] + ["loss"])[-1],
            "inputs": [names[v] for v in sinks],
            "forward": 0.0,
            "backward": 0.0,
            "output_bytes": 0,
            "needs_inputs": False,
            "needs_output": False,
        }
    )


def _classify(ids, fail):
    """(forward node ids, loss node ids, {forward id: its backward node id}) of a Checkmate graph."""
    forward_ids, loss_ids, backward_ids = [], [], []
    for node_id, node in ids.items():
        label = _label(node_id, node)
        name = node.get("name")
        if not isinstance(name, str):
            fail(f"node {label}: field 'name' must be a string")
        flag = node.get("backward", False)
        if not isinstance(flag, bool):
            fail(f"node {label}: field 'backward' must be true or false")
        _number(node, "cost_cpu", fail, label)
        _size(node, "cost_ram", fail, label)
        if not flag:
            forward_ids.append(node_id)
        elif name.endswith(_BACKWARD_SUFFIX):
            backward_ids.append(node_id)
        else:
            loss_ids.append(node_id)
    if not forward_ids:
        fail("the graph has no forward node (backward: false)")
    by_name = {}
    for v in forward_ids:
        by_name.setdefault(ids[v]["name"], v)
    grad_of = {}  # forward id -> backward id
    for b in backward_ids:
        fname = ids[b]["name"][: -len(_BACKWARD_SUFFIX)]
        if fname not in by_name:
            fail(f"backward node {_label(b, ids[b])} has no forward node named {fname!r}")
        v = by_name[fname]
        if v in grad_of:
            fail(f"forward node {_label(v, ids[v])} has two backward nodes")
        grad_of[v] = b
    return forward_ids, loss_ids, grad_of


def _checkmate_layers(ids, edges, fail, filename):
    """(layers, source, estimated) of a Checkmate graph, training or forward-only."""
    forward_ids, loss_ids, grad_of = _classify(ids, fail)
    training = bool(grad_of or loss_ids)
    if training and len(loss_ids) != 1:
        fail(
            f"a training graph needs exactly one loss node (backward: true, not named "
            f"'*{_BACKWARD_SUFFIX}'); found {len(loss_ids)}"
        )
    forward_set = set(forward_ids)
    fgraph = nx.DiGraph()
    fgraph.add_nodes_from(forward_ids)
    fgraph.add_edges_from((u, v) for u, v in edges if u in forward_set and v in forward_set)
    order = _order(fgraph, None, fail)
    cost = {v: ids[v]["cost_cpu"] for v in ids}
    ram = {v: _size(ids[v], "cost_ram", fail, "") for v in ids}
    names = _names(order, [ids[v]["name"] for v in order])
    if not training:
        layers = _forward_only_layers(fgraph, order, cost, ram, names)
        source = (
            f"Checkmate graph {filename} (forward only): forward costs and output sizes from the "
            "file; backward = 2 x forward (estimated)"
        )
        return layers, source, True

    links = set(edges)
    position = {v: k for k, v in enumerate(order)}
    layers = []
    estimated = 0
    for v in order:
        preds = sorted(fgraph.predecessors(v), key=position.__getitem__)
        layer = {
            "name": names[v],
            "inputs": [names[u] for u in preds] or [INPUT],
            "forward": cost[v],
            "output_bytes": ram[v],
        }
        grad = grad_of.get(v)
        if grad is None:
            estimated += 1
            layer.update(backward=2 * cost[v], needs_inputs=True, needs_output=False)
        else:
            layer.update(
                backward=cost[grad],
                needs_inputs=any((u, grad) in links for u in preds),
                needs_output=(v, grad) in links,
            )
        layers.append(layer)
    loss = loss_ids[0]
    loss_inputs = [u for u in order if (u, loss) in links or fgraph.out_degree(u) == 0]
    wanted = ids[loss]["name"] if ids[loss]["name"].strip() else "Loss"
    layers.append(
        {
            "name": _names(order + [loss], [layer["name"] for layer in layers] + [wanted])[loss],
            "inputs": [names[u] for u in loss_inputs],
            "forward": cost[loss],
            "backward": 0.0,
            "output_bytes": ram[loss],
            "needs_inputs": False,
            "needs_output": False,
        }
    )
    source = (
        f"Checkmate graph {filename}: forward and backward costs (cost_cpu) and output sizes "
        "(cost_ram) from the file"
    )
    if estimated:
        source += f"; {estimated} layers without a backward node: backward = 2 x forward (estimated)"
    return layers, source, estimated > 0


def _random_layers(ids, edges, graph_attrs, fail, filename):
    cost, size, wanted = {}, {}, {}
    for node_id, node in ids.items():
        label = _label(node_id, node)
        cost[node_id] = _number(node, "duration", fail, label)
        size[node_id] = _size(node, "out_cost", fail, label)
        wanted[node_id] = str(node_id)
    graph = nx.DiGraph()
    graph.add_nodes_from(ids)
    graph.add_edges_from(edges)
    preferred = graph_attrs.get("order")
    if not (isinstance(preferred, list) and all(not isinstance(v, (list, dict)) for v in preferred)):
        preferred = None
    try:
        order = _order(graph, preferred, fail)
    except TypeError:  # pragma: no cover - ids of mixed types in the order
        order = _order(graph, None, fail)
    names = _names(order, [wanted[v] for v in order])
    layers = _forward_only_layers(graph, order, cost, size, names)
    source = (
        f"Moccasin random layered graph {filename} (forward only): forward costs (duration) and "
        "output sizes (out_cost) from the file; backward = 2 x forward (estimated)"
    )
    return layers, source, True
