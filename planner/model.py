"""The cost model: layers, DAG checks, loading and validating model files.

A model (``edgeplan-model/1``, SPEC section 1) is a DAG of layers with one
sink, listed in a topological order.  Layers are referred to by their index in
that order everywhere inside the library; names appear only at the edges
(files, messages).
"""

import hashlib
import json
import math
import functools
import re
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx

from planner.errors import ModelError, NotApplicableError
from planner.schemas import check_model_document
from planner.sizes import MAX_BYTES
from planner.tables import Tables

__all__ = [
    "MODEL_FORMAT",
    "INPUT",
    "Layer",
    "Model",
    "load_model",
    "model_from_dict",
    "read_json_file",
    "fingerprint",
    "chains_only",
]

MODEL_FORMAT = "edgeplan-model/1"
INPUT = "input"
MAX_FILE_BYTES = 256 * 1024 * 1024
# Times beyond this would overflow to infinity once summed over many
# recomputations; no real cost model comes near it.
MAX_TIME = 1e200

_LAYER_FIELDS = {
    "name",
    "inputs",
    "forward",
    "backward",
    "output_bytes",
    "saved_bytes",
    "needs_inputs",
    "needs_output",
    "workspace_forward",
    "workspace_backward",
    "params_bytes",
}


@dataclass(frozen=True)
class Layer:
    """One layer of a model.

    ``inputs`` holds the indices of the producing layers; ``uses_input`` says
    whether the model input is among the layer's inputs as well.  ``module``
    is the file's optional extra field of that name: the module path the
    capture recorded the layer in (``transformer.h.0.attn``; ``""``: none),
    which ``hierarchical`` groups layers into blocks by.
    """

    name: str
    inputs: tuple
    forward: float
    backward: float
    output_bytes: int
    saved_bytes: int = 0
    needs_inputs: bool = True
    needs_output: bool = False
    workspace_forward: int = 0
    workspace_backward: int = 0
    params_bytes: int = 0
    uses_input: bool = False
    module: str = ""


@dataclass(frozen=True, eq=False)
class Model:
    """A validated model: layers in topological order, one sink.

    Build one with :func:`load_model` (from a file) or :func:`model_from_dict`
    (from a parsed document); both validate.  ``document`` keeps the parsed JSON so that the
    fingerprint is the one of the file as read.
    """

    name: str
    input_bytes: int
    layers: tuple
    time_unit: str = ""
    source: str = ""
    document: dict = field(default=None, repr=False)

    def __len__(self):
        return len(self.layers)

    @cached_property
    def consumers(self):
        """``consumers[i]``: indices of the layers that read layer ``i``'s output."""
        result = [[] for _ in self.layers]
        for j, layer in enumerate(self.layers):
            for i in layer.inputs:
                result[i].append(j)
        return tuple(tuple(c) for c in result)

    @cached_property
    def saved_reads(self):
        """``saved_reads[i]``: the outputs ``i``'s saved data reads and its backward then reads.

        Its own output with ``needs_output``, its inputs with ``needs_inputs``
        (SPEC section 3): a forward of ``i`` with save pins them until ``i``'s backward.
        """
        return tuple(
            ((i,) if layer.needs_output else ()) + (layer.inputs if layer.needs_inputs else ())
            for i, layer in enumerate(self.layers)
        )

    @cached_property
    def reverse_order_gradients(self):
        """``(new, fresh)``: gradient bytes of each backward when backwards run in reverse topological order.

        ``new[b]`` is what ``b``'s backward allocates and keeps: the gradients
        of its inputs whose highest consumer is ``b`` (the first of their
        consumers' backwards to run), and the sink's own.  ``fresh[b]`` is the
        fresh gradients it makes of its other inputs, whose gradient a later
        consumer's backward already started, and adds into them (SPEC section
        3): they count in its peak and are gone when it ends.  Chains have none.
        """
        out = [layer.output_bytes for layer in self.layers]
        highest = [max(c) if c else None for c in self.consumers]
        new, fresh = [], []
        for b, layer in enumerate(self.layers):
            own = out[b] if b == self.sink else 0
            new.append(own + sum(out[j] for j in layer.inputs if highest[j] == b))
            fresh.append(sum(out[j] for j in layer.inputs if highest[j] != b))
        return tuple(new), tuple(fresh)

    @cached_property
    def tables(self):
        """The per-layer arrays every solver reads (:class:`planner.tables.Tables`), built once."""
        return Tables.of(self)

    @cached_property
    def sink(self):
        """Index of the layer whose output feeds the loss."""
        return len(self.layers) - 1

    @cached_property
    def is_chain(self):
        """True when layer ``i`` reads exactly layer ``i - 1`` (the first reads the input)."""
        first = self.layers[0]
        if first.inputs or not first.uses_input:
            return False
        return all(
            layer.inputs == (i - 1,) and not layer.uses_input
            for i, layer in enumerate(self.layers[1:], start=1)
        )

    @cached_property
    def index(self):
        """Map from layer name to index."""
        return {layer.name: i for i, layer in enumerate(self.layers)}

    @cached_property
    def fingerprint(self):
        """``"sha256:" + hex`` of the model's structure and sizes (see :func:`fingerprint`)."""
        return fingerprint(self.to_dict() if self.document is None else self.document)

    @cached_property
    def baseline_compute(self):
        """Every layer's forward and backward once (summed exactly, with ``math.fsum``)."""
        return math.fsum(
            [layer.forward for layer in self.layers] + [layer.backward for layer in self.layers]
        )

    @cached_property
    def params_bytes(self):
        """Sum of every layer's ``params_bytes``."""
        return sum(layer.params_bytes for layer in self.layers)

    def graph(self):
        """The model as a ``networkx.DiGraph`` over layer indices (the input is ``-1``)."""
        g = nx.DiGraph()
        g.add_nodes_from(range(len(self.layers)))
        for j, layer in enumerate(self.layers):
            for i in layer.inputs:
                g.add_edge(i, j)
            if layer.uses_input:
                g.add_edge(-1, j)
        return g

    def to_dict(self):
        """The model as an ``edgeplan-model/1`` document with every field spelled out."""
        doc = {"format": MODEL_FORMAT, "name": self.name, "input_bytes": self.input_bytes}
        if self.time_unit:
            doc["time_unit"] = self.time_unit
        if self.source:
            doc["source"] = self.source
        doc["layers"] = [_layer_document(layer, self.layers) for layer in self.layers]
        return doc


def _layer_document(layer, layers):
    """``layer`` as an entry of a model document's ``layers``, every field spelled out."""
    return {
        "name": layer.name,
        "inputs": ([INPUT] if layer.uses_input else []) + [layers[i].name for i in layer.inputs],
        "forward": layer.forward,
        "backward": layer.backward,
        "output_bytes": layer.output_bytes,
        "saved_bytes": layer.saved_bytes,
        "needs_inputs": layer.needs_inputs,
        "needs_output": layer.needs_output,
        "workspace_forward": layer.workspace_forward,
        "workspace_backward": layer.workspace_backward,
        "params_bytes": layer.params_bytes,
        **({"module": layer.module} if layer.module else {}),
    }


# What decides a schedule's validity and memory, with its default (SPEC section
# 2); times, names of the model, units, sources and extra fields are left out.
_FINGERPRINT_DEFAULTS = (
    ("output_bytes", None),
    ("saved_bytes", 0),
    ("needs_inputs", True),
    ("needs_output", False),
    ("workspace_forward", 0),
    ("workspace_backward", 0),
    ("params_bytes", 0),
)


def fingerprint(document):
    """SHA-256 fingerprint of the structure and sizes of a valid model document (SPEC section 2).

    Parameters
    ----------
    document : dict
        A parsed ``edgeplan-model/1`` document that :func:`model_from_dict`
        accepts.

    Returns
    -------
    str
        ``"sha256:"`` and the hex digest of the UTF-8 JSON text, with sorted
        keys and ``(",", ":")`` separators, of ``{"input_bytes": ..., "layers":
        [...]}``, each layer reduced to its ``name``, ``inputs`` (the previous
        layer, or ``"input"`` for the first, when absent), ``output_bytes``,
        ``saved_bytes``, ``needs_inputs``, ``needs_output``,
        ``workspace_forward``, ``workspace_backward`` and ``params_bytes``,
        every default filled in.

    Notes
    -----
    Times are not part of it: a model profiled again (times are noisy) keeps
    the fingerprint, and the schedules committed for it stay valid, while any
    change of structure or size changes it.  O(size of the document).
    """
    layers = []
    previous = INPUT
    for raw in document["layers"]:
        layer = {"name": raw["name"], "inputs": list(raw.get("inputs", [previous]))}
        for key, default in _FINGERPRINT_DEFAULTS:
            layer[key] = raw.get(key, default)
        layers.append(layer)
        previous = raw["name"]
    text = json.dumps(
        {"input_bytes": document["input_bytes"], "layers": layers},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Bad:
    """Stands in, while parsing, for a value JSON does not allow (see read_json_file)."""

    __slots__ = ("message",)

    def __init__(self, message):
        self.message = message


# Integers longer than this are refused (Python refuses beyond 4300 digits).
_MAX_INT_DIGITS = 400
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _make_hooks(found):
    """Parser hooks that replace what JSON forbids by a :class:`_Bad` marker.

    The markers are located afterwards (:func:`_find_bad`) so that the message
    can name the layer and the field instead of a bare character offset.
    """

    def constant(text):
        found.append(1)
        return _Bad(f"{text} is not valid JSON (numbers must be finite)")

    def parse_float(text):
        value = float(text)
        if math.isinf(value):
            found.append(1)
            return _Bad(f"{text[:40]} is out of range (numbers must be finite)")
        return value

    def parse_int(text):
        if len(text) > _MAX_INT_DIGITS:
            found.append(1)
            return _Bad(f"an integer of {len(text)} digits is out of range")
        return int(text)

    def pairs(items):
        result = {}
        for key, value in items:
            if key in result:
                found.append(1)
                return _Bad(f"the key {_short(key)} appears twice")
            result[key] = value
        return result

    return constant, parse_float, parse_int, pairs


def _short(text, limit=60):
    """``repr`` of a name, cut to ``limit`` characters for messages."""
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _find_bad(document):
    """(path, marker) of the first :class:`_Bad` in ``document`` (iterative walk)."""
    stack = [((), document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Bad):
            return path, value
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list):
            items = list(enumerate(value))
        else:
            continue
        stack.extend((path + (key,), item) for key, item in reversed(items))
    return None, None  # pragma: no cover - only called when a marker exists


def _describe_path(path, document):
    """Human text for a JSON path: ``layer #3 'conv': field 'forward'``."""
    if not path:
        return "the top level"
    parts = []
    rest = path
    if len(path) >= 2 and path[0] in ("layers", "ops") and isinstance(path[1], int):
        if path[0] == "layers":
            label = f"layer #{path[1]}"
            raw = document["layers"][path[1]]
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                label += f" {_short(raw['name'])}"
        else:
            label = f"op #{path[1]}"
        parts.append(label)
        rest = path[2:]
    if rest:
        dotted = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in rest).lstrip(".")
        parts.append(f"field {_short(dotted)}")
    return ": ".join(parts)


def read_json_file(path, *, error=ModelError, what="file"):
    """Read a JSON file strictly.

    UTF-8 only; no ``NaN``/``Infinity`` literals, no number that overflows a
    float (``1e999``), no integer of more than 400 digits, no duplicate keys,
    no lone surrogates (``"\\ud800"``), at most ``MAX_FILE_BYTES`` bytes.

    Parameters
    ----------
    path : str or os.PathLike
    error : type, keyword-only
        The exception class to raise (:class:`ModelError`,
        :class:`~planner.errors.ScheduleFormatError`).
    what : str, keyword-only
        What the file is, for messages (``"model file"``).

    Returns
    -------
    object
        The parsed document.

    Raises
    ------
    error
        With a message naming the file and, for a forbidden value, where it is
        (``layer #3 'conv': field 'forward'``).

    Notes
    -----
    O(size of the file).  A forbidden value is replaced while parsing by a
    marker, which a second walk locates only when one was seen.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise error(f"{path}: {what} is larger than {MAX_FILE_BYTES} bytes")
    if not raw.strip():
        raise error(f"{path}: {what} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    found = []
    constant, parse_float, parse_int, pairs = _make_hooks(found)
    try:
        document = json.loads(
            text,
            parse_constant=constant,
            parse_float=parse_float,
            parse_int=parse_int,
            object_pairs_hook=pairs,
        )
    except json.JSONDecodeError as exc:
        raise error(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise error(f"{path}: arrays or objects nested too deeply to read") from None
    except ValueError as exc:  # pragma: no cover - the hooks catch the known cases
        raise error(f"{path}: not valid JSON: {exc}") from None
    if found:
        where, marker = _find_bad(document)
        raise error(f"{path}: {_describe_path(where, document)}: {marker.message}")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise error(
                f"{path}: not valid JSON text: a \\u escape encodes a lone surrogate "
                "(not a Unicode character)"
            ) from None
    return document


def load_model(path):
    """Load and validate an ``edgeplan-model/1`` file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Model
        Built by :func:`model_from_dict` from the file's JSON, which it keeps
        as ``document`` (the fingerprint is the one of the file as read).

    Raises
    ------
    ModelError
        With a message naming the file, the layer and the field; also when
        the file cannot be read or is not JSON (:func:`read_json_file`).
    """
    document = read_json_file(path, what="model file")
    return model_from_dict(document, source_name=str(path))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value):
    """Short JSON text of a value for messages (``repr`` when it is not JSON)."""
    if _is_int(value) and abs(value) > 10**40:
        return f"an integer of {len(str(abs(value)))} digits"
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= 40 else text[:37] + "..."


def model_from_dict(document, *, source_name="<model>"):
    """Validate a parsed model document and build a :class:`Model`.

    Parameters
    ----------
    document : object
        The parsed JSON (or a dict built in Python).
    source_name : str, keyword-only
        The file name for messages.

    Returns
    -------
    Model

    Raises
    ------
    ModelError
        For every defect listed in SPEC section 1, naming ``source_name``, the
        layer and the field.

    Notes
    -----
    The document is validated once against the published schema
    (:func:`planner.schemas.check_model_document`), then built; building checks
    what a schema cannot (unique names, inputs that name earlier layers, one
    sink, sizes that add up within 2**62).  When the schema rejects the
    document, the building checks are asked first for the message, because they
    word most defects in the model's own terms ("must hold at least one
    layer"); the schema's message stands for the rest.  O(layers + edges).
    """
    try:
        check_model_document(document, source_name=source_name)
    except ModelError:
        _build_model(document, source_name)
        raise
    return _build_model(document, source_name)


def _fail(where, message, layer=None, fieldname=None):
    parts = [where]
    if layer is not None:
        parts.append(f"layer {layer}")
    if fieldname is not None:
        parts.append(f"field '{fieldname}'")
    raise ModelError(": ".join(parts) + ": " + message)


def _build_model(document, where):
    """The :class:`Model` of ``document``, or a :class:`ModelError` naming its first defect."""

    def fail(message, layer=None, fieldname=None):
        _fail(where, message, layer, fieldname)

    name, input_bytes, raw_layers = _read_header(document, fail)
    index = {}
    layers = []
    for position, raw in enumerate(raw_layers):
        layers.append(_read_layer(raw, position, raw_layers, layers, index, fail))
        index[layers[-1].name] = position
    _check_whole(layers, input_bytes, fail)
    return Model(
        name=name,
        input_bytes=input_bytes,
        layers=tuple(layers),
        time_unit=document.get("time_unit", ""),
        source=document.get("source", ""),
        document=document,
    )


def _read_header(document, fail):
    """(name, input_bytes, raw layers) of a document, checked."""
    if not isinstance(document, dict):
        fail(f"the top level must be a JSON object, not {type(document).__name__}")
    fmt = document.get("format")
    if fmt is None:
        fail(f"missing 'format' (expected \"{MODEL_FORMAT}\")", fieldname="format")
    if fmt != MODEL_FORMAT:
        fail(f"unsupported format {_describe(fmt)} (expected \"{MODEL_FORMAT}\")", fieldname="format")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        fail("must be a non-empty string" if "name" in document else "missing", fieldname="name")
    input_bytes = _check_size(document, "input_bytes", required=True, fail=fail)
    for key in ("time_unit", "source"):
        if key in document and not isinstance(document[key], str):
            fail("must be a string", fieldname=key)
    raw_layers = document.get("layers")
    if raw_layers is None:
        fail("missing", fieldname="layers")
    if not isinstance(raw_layers, list):
        fail("must be a list of layers", fieldname="layers")
    if not raw_layers:
        fail("must hold at least one layer", fieldname="layers")
    return name, input_bytes, raw_layers


def _read_layer(raw, position, raw_layers, layers, index, fail):
    """The :class:`Layer` at ``position``; ``layers`` and ``index`` hold those before it."""
    label = f"#{position}"
    if not isinstance(raw, dict):
        fail("must be a JSON object", layer=label)
    lname = raw.get("name")
    if lname is None:
        fail("missing", layer=label, fieldname="name")
    if not isinstance(lname, str) or not lname.strip():
        fail("must be a non-empty string", layer=label, fieldname="name")
    label = f"#{position} {_short(lname)}"
    if lname == INPUT:
        fail(f"'{INPUT}' is reserved for the model input", layer=label, fieldname="name")
    if lname in index:
        fail(f"duplicate name (also layer #{index[lname]})", layer=label, fieldname="name")

    def lfail(message, fieldname=None):
        fail(message, layer=label, fieldname=fieldname)

    unknown = sorted(set(raw) - _LAYER_FIELDS)
    if unknown and not all(isinstance(k, str) for k in unknown):  # pragma: no cover
        lfail("field names must be strings")
    inputs, uses_input = _read_inputs(raw, position, raw_layers, layers, index, lfail)
    times = {key: _check_time(raw, key, lfail) for key in ("forward", "backward")}
    sizes = {
        key: _check_size(raw, key, required=(key == "output_bytes"), fail=lfail)
        for key in ("output_bytes", "saved_bytes", "workspace_forward", "workspace_backward", "params_bytes")
    }
    flags = {}
    for key, default in (("needs_inputs", True), ("needs_output", False)):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            lfail(f"must be true or false, got {_describe(value)}", key)
        flags[key] = value
    module = raw.get("module", "")
    return Layer(name=lname, inputs=inputs, uses_input=uses_input, **times, **sizes, **flags,
                 module=module if isinstance(module, str) else "")


def _read_inputs(raw, position, raw_layers, layers, index, lfail):
    """(producer indices, reads the model input) of one layer; defaults per SPEC section 1."""
    lname = raw["name"]
    if "inputs" in raw:
        raw_inputs = raw["inputs"]
        if not isinstance(raw_inputs, list) or not all(isinstance(x, str) for x in raw_inputs):
            lfail("must be a list of layer names or \"input\"", "inputs")
    else:
        raw_inputs = [INPUT] if position == 0 else [layers[-1].name]
    uses_input = False
    inputs = []
    for producer in raw_inputs:
        if producer == INPUT:
            uses_input = True
        elif producer == lname:
            lfail("a layer cannot read its own output (self-loop)", "inputs")
        elif producer in index:
            if index[producer] not in inputs:
                inputs.append(index[producer])
        elif any(isinstance(r, dict) and r.get("name") == producer for r in raw_layers):
            lfail(
                f"reads {_short(producer)}, which comes later: layers must be listed in a "
                "topological order (or the graph has a cycle)",
                "inputs",
            )
        else:
            lfail(f"unknown layer {_short(producer)}", "inputs")
    if not inputs and not uses_input:
        lfail("a layer must read the input or another layer", "inputs")
    return tuple(inputs), uses_input


def _check_time(raw, key, lfail):
    if key not in raw:
        lfail("missing", key)
    value = raw[key]
    if not _is_number(value):
        lfail(f"must be a number, got {_describe(value)}", key)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number) or number < 0 or number > MAX_TIME:
        lfail(f"must be a finite number between 0 and {MAX_TIME:g}, got {_describe(value)}", key)
    return number


def _check_whole(layers, input_bytes, fail):
    """One sink, and it comes last; sizes and times that cannot overflow.

    Every input names an earlier layer (checked layer by layer), so the
    layers are in a topological order and the graph has no cycle.
    """
    consumed = set()
    for layer in layers:
        consumed.update(layer.inputs)
    sinks = [i for i in range(len(layers)) if i not in consumed]
    if len(sinks) != 1:
        names = ", ".join(_short(layers[i].name) for i in sinks[:5])
        fail(
            f"a model must have exactly one sink (a layer whose output nothing reads); "
            f"found {len(sinks)}: {names}",
            fieldname="layers",
        )
    if sinks[0] != len(layers) - 1:
        fail(
            f"the sink {_short(layers[sinks[0]].name)} must be the last layer of the "
            "topological order",
            fieldname="layers",
        )
    total = input_bytes + sum(
        2 * layer.output_bytes
        + layer.saved_bytes
        + layer.workspace_forward
        + layer.workspace_backward
        + 4 * layer.params_bytes
        for layer in layers
    )
    if total > MAX_BYTES:
        fail(
            "the sizes add up to more than 2**62 bytes (input, outputs and their "
            "gradients, saved data, workspaces, parameters x 4)",
            fieldname="layers",
        )
    if sum(layer.forward + layer.backward for layer in layers) * len(layers) > MAX_TIME:
        fail(
            f"the times are too large: their sum times the number of layers exceeds {MAX_TIME:g}",
            fieldname="layers",
        )


def _check_size(obj, key, *, required, fail):
    if key not in obj:
        if required:
            fail("missing", fieldname=key)
        return 0
    value = obj[key]
    if not _is_int(value):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 0:
            message = f"must be an integer number of bytes, got {_describe(value)}"
        else:
            message = f"must be an integer >= 0, got {_describe(value)}"
        fail(message, fieldname=key)
    if value < 0:
        fail(f"must be >= 0, got {_describe(value)}", fieldname=key)
    if value > MAX_BYTES:
        fail(f"{_describe(value)} is beyond 2**62 bytes", fieldname=key)
    return value


def chains_only(strategy):
    """Decorator: the solver ``fn(model, ...)`` of ``strategy`` refuses DAGs.

    The registry decides applicability before any solver runs (its
    ``Strategy.chains_only``, which a test keeps equal to this mark); the
    decorator keeps a direct call on a DAG from running, with the same kind
    of error (networkx's ``not_implemented_for``).

    Raises
    ------
    NotApplicableError
        From the decorated function, when its model is not a chain.
    """

    def mark(fn):
        @functools.wraps(fn)
        def solver(model, *args, **kwargs):
            if not model.is_chain:
                raise NotApplicableError(f"{strategy} applies to chains only; {model.name!r} is a DAG")
            return fn(model, *args, **kwargs)

        solver.chains_only = True
        return solver

    return mark
