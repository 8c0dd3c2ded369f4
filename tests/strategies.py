"""Hypothesis strategies for edgeplan: random chains, DAGs, budgets and op sequences.

Importable by every test module::

    from tests.strategies import chains, dags, models, budgets, examples

Models are drawn as ``edgeplan-model/1`` documents (so they shrink to small,
readable counterexamples) and validated by :func:`planner.model.model_from_dict`.
Costs and flags are random: zero sizes and times, saved data, workspaces,
``needs_inputs``/``needs_output`` in every combination, several layers reading
the model input, skip connections.
"""

import json

from hypothesis import settings
from hypothesis import strategies as st

from planner.model import MODEL_FORMAT, model_from_dict
from planner.device import TIME_UNITS, Storage
from planner.schedule import backward, forward, free, pagein, pageout

__all__ = [
    "examples",
    "layer_fields",
    "model_docs",
    "chains",
    "dags",
    "models",
    "budgets",
    "store_all_peak",
    "op_sequences",
    "with_heavy_sink",
    "storages",
    "timed",
    "paging_cases",
    "paging_walks",
    "block_dags",
]


def examples(n):
    """``n`` examples under the ``ci`` profile, scaled by the loaded profile.

    The profiles are registered in ``tests/conftest.py`` (``HYPOTHESIS_PROFILE``
    selects one: ``dev`` 0.2x, ``ci`` 1x, ``nightly`` 20x).
    """
    return max(1, round(n * settings.default.max_examples / 100))


_SIZES = st.one_of(
    st.just(0),
    st.integers(1, 16),
    st.integers(1, 100).map(lambda k: k * 1000),
    st.integers(0, 10**6),
)
_TIMES = st.one_of(
    st.just(0.0),
    st.integers(1, 40).map(float),
    st.floats(0.0, 1000.0, allow_nan=False, allow_infinity=False),
)


@st.composite
def layer_fields(draw, *, workspaces=True):
    """The cost fields of one layer (no ``name``/``inputs``); optional ones may be absent."""
    fields = {
        "forward": draw(_TIMES),
        "backward": draw(_TIMES),
        "output_bytes": draw(_SIZES),
    }
    optional = {
        "saved_bytes": _SIZES,
        "needs_inputs": st.booleans(),
        "needs_output": st.booleans(),
        "params_bytes": _SIZES,
    }
    if workspaces:
        optional["workspace_forward"] = _SIZES
        optional["workspace_backward"] = _SIZES
    for key, values in optional.items():
        if draw(st.booleans()):
            fields[key] = draw(values)
    return fields


_NAME_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), min_codepoint=32), min_size=1, max_size=8
).filter(lambda s: s.strip() and s != "input")


@st.composite
def _names(draw, n, *, fancy):
    if not fancy or not draw(st.booleans()):
        return [f"L{i}" for i in range(n)]
    return draw(st.lists(_NAME_TEXT, min_size=n, max_size=n, unique=True))


@st.composite
def model_docs(draw, *, min_layers=1, max_layers=12, dag=True, max_inputs=3, workspaces=True,
               fancy_names=True, heavy_sink=False):
    """An ``edgeplan-model/1`` document: a chain, or (``dag=True``) any DAG with one sink.

    Each layer reads 1..``max_inputs`` of the earlier layers and the model
    input; every layer but the last then gets a consumer, so the last layer is
    the only sink.  With ``dag=False`` every layer reads the one before it
    (``inputs`` spelled out or left to its default at random).  With
    ``heavy_sink`` the sink's output is larger than everything else together
    and its backward does not read it (a language model's logits, which only
    the loss holds until the sink's backward).
    """
    n = draw(st.integers(min_layers, max_layers))
    names = draw(_names(n, fancy=fancy_names))
    if dag:
        sources = []
        for i in range(n):
            pool = list(range(-1, i))
            k = draw(st.integers(1, min(max_inputs, len(pool))))
            chosen = draw(st.lists(st.sampled_from(pool), min_size=k, max_size=k, unique=True))
            sources.append(sorted(chosen))
        for j in range(n - 2, -1, -1):
            if not any(j in sources[k] for k in range(j + 1, n)):
                k = draw(st.integers(j + 1, n - 1))
                sources[k] = sorted(sources[k] + [j])
    else:
        sources = [[i - 1] for i in range(n)]
    layers = []
    for i in range(n):
        layer = {"name": names[i]}
        layer.update(draw(layer_fields(workspaces=workspaces)))
        spelled = ["input" if j < 0 else names[j] for j in sources[i]]
        if dag or draw(st.booleans()):
            layer["inputs"] = spelled
        layers.append(layer)
    input_bytes = draw(_SIZES)
    if heavy_sink:
        others = input_bytes + sum(
            layer["output_bytes"] + layer.get("saved_bytes", 0) for layer in layers[:-1]
        )
        layers[-1]["output_bytes"] = draw(st.integers(others + 1, 3 * others + 1000))
        layers[-1]["needs_output"] = False
    return {
        "format": MODEL_FORMAT,
        "name": "hypothesis",
        "input_bytes": input_bytes,
        "layers": layers,
    }


def chains(*, min_layers=1, max_layers=12, **kwargs):
    """Validated chain :class:`~planner.model.Model` objects."""
    return model_docs(min_layers=min_layers, max_layers=max_layers, dag=False, **kwargs).map(
        model_from_dict
    )


def dags(*, min_layers=1, max_layers=10, **kwargs):
    """Validated DAG models (a chain now and then, by chance)."""
    return model_docs(min_layers=min_layers, max_layers=max_layers, dag=True, **kwargs).map(
        model_from_dict
    )


def models(*, max_layers=10, chain_only=False):
    """Chains, or chains and DAGs; some with a sink whose output dominates (``heavy_sink``)."""
    found = [chains(max_layers=max_layers), chains(max_layers=max_layers, heavy_sink=True)]
    if not chain_only:
        found += [dags(max_layers=max_layers), dags(max_layers=max_layers, heavy_sink=True)]
    return st.one_of(*found)


def with_heavy_sink(model, *, factor=3):
    """``model`` with its sink's output ``factor`` times everything else together.

    The sink's backward does not read its output (``needs_output`` false), as
    a language model's head: only the loss holds the logits until the sink's
    backward, the case where SPEC section 3's sink rule decides the peak.
    """
    doc = model.document if model.document is not None else model.to_dict()
    doc = json.loads(json.dumps(doc))
    layers = doc["layers"]
    others = doc["input_bytes"] + sum(
        layer["output_bytes"] + layer.get("saved_bytes", 0) for layer in layers[:-1]
    )
    layers[-1]["output_bytes"] = factor * others + 1
    layers[-1]["needs_output"] = False
    doc["name"] = doc["name"] + "-heavy-sink"
    return model_from_dict(doc)


def store_all_peak(model):
    """Peak activation memory of plain autograd (no recomputation) on ``model``."""
    from planner.solvers import solve

    return solve(model, None, "store-all").result.peak_bytes


@st.composite
def budgets(draw, model, *, unlimited=True):
    """An activation budget for ``model``: tight, generous, hopeless, or None.

    Drawn around the store-all peak ``P``: exactly ``P`` and ``P - 1``, the
    input size, 0, anywhere in ``[0, 1.2 P]``, and (with ``unlimited``) None.
    """
    peak = store_all_peak(model)
    choices = [
        st.integers(0, peak + peak // 5 + 1),
        st.sampled_from([peak, max(peak - 1, 0), model.input_bytes, 0]),
        st.integers(model.input_bytes, max(model.input_bytes, peak)),
    ]
    if unlimited:
        choices.append(st.none())
    return draw(st.one_of(*choices))


@st.composite
def op_sequences(draw, model, valid_ops, *, paging=False):
    """``valid_ops`` (a valid schedule) mutated a few times: many invalid, some valid.

    Mutations drop, duplicate, move or insert ops, flip ``save`` flags, or cut
    the schedule short.  For checking the simulator against the reference.
    With ``paging``, inserted ops may be pageouts and pageins too.
    """
    ops = list(valid_ops)
    n = len(model)
    any_op = st.one_of(
        st.builds(forward, st.integers(0, n - 1), st.booleans()),
        st.builds(backward, st.integers(0, n - 1)),
        st.builds(free, st.integers(0, n - 1)),
    )
    if paging:
        any_op = st.one_of(
            any_op, st.builds(pageout, st.integers(0, n - 1)), st.builds(pagein, st.integers(0, n - 1))
        )
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop", "dup", "move", "insert", "flip", "cut"]))
        if not ops and kind != "insert":
            continue
        k = draw(st.integers(0, max(len(ops) - 1, 0)))
        if kind == "drop":
            del ops[k]
        elif kind == "dup":
            ops.insert(draw(st.integers(0, len(ops))), ops[k])
        elif kind == "move":
            op = ops.pop(k)
            ops.insert(draw(st.integers(0, len(ops))), op)
        elif kind == "insert":
            ops.insert(draw(st.integers(0, len(ops))), draw(any_op))
        elif kind == "flip" and ops[k].kind.value == "forward":
            ops[k] = forward(ops[k].layer, not ops[k].save)
        elif kind == "cut":
            ops = ops[:k]
    return ops


@st.composite
def storages(draw, *, capacity_hint=None):
    """A random :class:`~planner.device.Storage`: rates from 1 kB/s to 100 GB/s, latencies, capacity.

    ``capacity_hint`` (bytes) centres the drawn capacity, when there is one.
    """
    rate = st.floats(1e3, 1e11, allow_nan=False, allow_infinity=False)
    latency = st.one_of(st.just(0.0), st.floats(0.0, 0.05, allow_nan=False))
    hint = max(int(capacity_hint or 10**6), 1)
    capacity = st.one_of(st.none(), st.integers(1, 2 * hint))
    return Storage(
        draw(rate), draw(rate), read_latency_s=draw(latency), write_latency_s=draw(latency),
        bytes=draw(capacity),
    )


def timed(docs):
    """Model documents given a ``time_unit`` that is a time (paging needs one)."""
    return st.tuples(docs, st.sampled_from(sorted(TIME_UNITS))).map(
        lambda pair: dict(pair[0], time_unit=pair[1])
    )


@st.composite
def paging_cases(draw, *, max_layers=8, dag=True):
    """A timed model document, its model, and a storage sized around the model's outputs.

    The setup of the paging properties: the document is drawn by
    :func:`model_docs` (``dag=False``: chains only) and given a time unit by
    :func:`timed`; the storage's capacity is drawn around the sum of the
    layers' outputs (:func:`storages`).  Returns ``(doc, model, storage)``.
    """
    doc = draw(timed(model_docs(max_layers=max_layers, dag=dag)))
    model = model_from_dict(doc)
    storage = draw(storages(capacity_hint=sum(x.output_bytes for x in model.layers)))
    return doc, model, storage


@st.composite
def paging_walks(draw, model, *, max_steps=None):
    """A random walk of ops over the states of SPEC sections 3 and 5, paging ops included.

    At each step one op is drawn among those that the walk's own, simple
    reading of the rules enables (pageout and pagein among them), so most
    walks are valid and many are complete; the simulator and the reference
    replay must agree on each, whatever it is.  The sink's output is never
    freed before its backward.
    """
    n = len(model)
    layers = model.layers
    A, S, P, D = set(), set(), set(), set()

    def pinned(i):
        if i in S and layers[i].needs_output:
            return True
        return any(c in S and layers[c].needs_inputs for c in model.consumers[i])

    ops = []
    for _ in range(max_steps or 8 * n + 8):
        options = []
        for i in range(n):
            if i in D:
                continue
            if i in S and all(c in D for c in model.consumers[i]) and (
                not layers[i].needs_inputs or all(j in A for j in layers[i].inputs)
            ) and (not layers[i].needs_output or i in A):
                options.append(backward(i))
            if i not in A and all(j in A for j in layers[i].inputs):
                options.append(forward(i, True) if i not in S else forward(i, False))
                options.append(forward(i, False))
            if i in P and i not in A:
                options.append(pagein(i))
        for i in range(n):
            if i in A and i not in P:
                options.append(pageout(i))
            if i in A and not pinned(i) and (i != model.sink or i in D):
                options.append(free(i))
        if not options:
            break
        op = draw(st.sampled_from(options))
        ops.append(op)
        kind, i = op.kind.value, op.layer
        if kind == "forward":
            A.add(i)
            if op.save:
                S.add(i)
        elif kind == "backward":
            S.discard(i)
            P.discard(i)
            D.add(i)
        elif kind == "free":
            A.discard(i)
        elif kind == "pageout":
            P.add(i)
        else:
            A.add(i)
        if len(D) == n:
            break
    return ops


@st.composite
def block_dags(draw, *, max_blocks=4, max_block_layers=3, mask=None, min_blocks=1):
    """A model made of blocks in a row: between two blocks only one tensor crosses.

    Inside a block each layer reads the one before it (the first reads the
    previous block's output, or the model input) and, at random, earlier
    layers of its block or the block's input: small DAGs joined by single
    tensors, as a network's layers are.  With ``mask`` (drawn when None) a
    small layer computed from the model input is read by the first layer of
    every block, as an attention mask is.
    """
    n_blocks = draw(st.integers(min_blocks, max_blocks))
    with_mask = draw(st.booleans()) if mask is None else mask
    layers = []
    if with_mask:
        fields = draw(layer_fields())
        fields["output_bytes"] = draw(st.integers(0, 64))
        layers.append({"name": "mask", "inputs": ["input"], **fields})
    previous = "input"
    for b in range(n_blocks):
        size = draw(st.integers(1, max_block_layers))
        names = [f"b{b}l{i}" for i in range(size)]
        for i, name in enumerate(names):
            pool = [previous] + names[:i]
            inputs = [pool[-1]]
            for other in pool[:-1]:
                if draw(st.integers(0, 3)) == 0:
                    inputs.append(other)
            if i == 0 and with_mask:
                inputs.append("mask")
            layers.append({"name": name, "inputs": inputs, **draw(layer_fields())})
        previous = names[-1]
    doc = {"format": MODEL_FORMAT, "name": "blocks", "input_bytes": draw(_SIZES), "layers": layers}
    return model_from_dict(doc)
