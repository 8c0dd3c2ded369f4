"""The published JSON Schemas (Draft 2020-12) of edgeplan's file formats, and their validator.

The schema files live once, inside the package, in ``planner/schemas/``
(``model.schema.json`` for ``edgeplan-model/1``, ``schedule.schema.json`` for
``edgeplan-schedule/1``), so that every install has them;
``schedules/*.schema.json`` at the top of the repository are symbolic links to
them, for people and tools that read a checkout.

Documents are checked with `fastjsonschema <https://horejsek.github.io/python-fastjsonschema/>`_,
which compiles a schema to Python once per process: about 15 microseconds
per layer with every field spelled out, 30 to 40 times faster than
``jsonschema``, which the tests use as the reference
(``benchmarks/bench_schema.py``).  The loaders (:func:`planner.model.model_from_dict`,
:func:`planner.schedule.schedule_from_dict`) call :func:`check_model_document`
and :func:`check_schedule_document` first, so a document that loads is valid
against the published schema; their own checks then cover what a schema cannot
say (unique names, topological order, one sink, layers the model has).  A
violation is reported in the loaders' style: file, layer (or op), field, what
is wrong.
"""

import json
from functools import lru_cache
from importlib import resources

from planner.errors import ModelError, ScheduleFormatError
from planner.sizes import MAX_BYTES

__all__ = [
    "SCHEMA_NAMES",
    "load_schema",
    "validator",
    "check_model_document",
    "check_schedule_document",
    "check_device_document",
]

#: Format name -> schema file name inside ``planner/schemas/``.
SCHEMA_NAMES = {
    "edgeplan-model/1": "model.schema.json",
    "edgeplan-schedule/1": "schedule.schema.json",
    "edgeplan-schedule/2": "schedule.schema.json",
    "edgeplan-schedule/3": "schedule.schema.json",
    "edgeplan-device/1": "device.schema.json",
}

_TYPE_WORDS = {
    "integer": "an integer >= 0",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a JSON object",
    "array": "a list",
    "null": "null",
}


def load_schema(filename):
    """The parsed schema ``filename`` (a value of :data:`SCHEMA_NAMES`).

    Returns
    -------
    dict
        A fresh copy: callers may modify it.

    Raises
    ------
    FileNotFoundError
        If the package was installed without its schema files.
    """
    text = resources.files("planner").joinpath("schemas", filename).read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def validator(filename):
    """The compiled validator of one schema file: ``document -> document``, unchanged.

    It raises ``fastjsonschema.JsonSchemaValueException`` at the first
    violation.  Built once per process; validation is then linear in the size
    of the document.
    """
    import fastjsonschema

    # use_default=False: the schemas' "default"s document the format; filling
    # them in would change the caller's document (and the model's fingerprint).
    return fastjsonschema.compile(load_schema(filename), use_default=False)


def _violation(document, filename):
    """The first violation of ``document`` against ``filename``, or None."""
    import fastjsonschema

    try:
        validator(filename)(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        return exc
    return None


def _describe(value):
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _explain(exc):
    """(missing field or None, what is wrong) for a ``JsonSchemaValueException``."""
    rule, expected, value = exc.rule, exc.rule_definition, exc.value
    if rule == "required":
        missing = [key for key in expected if key not in value]
        return (missing[0] if missing else None), "missing"
    if rule == "type":
        words = expected if isinstance(expected, list) else [expected]
        return None, f"must be {' or '.join(_TYPE_WORDS.get(w, w) for w in words)}, got {_describe(value)}"
    if rule == "minimum":
        return None, f"must be >= {expected}, got {_describe(value)}"
    if rule == "exclusiveMinimum":
        return None, f"must be > {expected}, got {_describe(value)}"
    if rule == "maximum":
        if expected == MAX_BYTES:
            return None, f"{_describe(value)} is beyond 2**62 bytes"
        return None, f"must be <= {expected}, got {_describe(value)}"
    if rule == "minLength":
        return None, "must be a non-empty string"
    if rule == "minItems":
        return None, "must hold at least one item"
    if rule == "const":
        return None, f"expected {_describe(expected)}, got {_describe(value)}"
    if rule == "enum":
        return None, f"unknown value {_describe(value)} (one of: {', '.join(map(str, expected))})"
    if rule == "not" and value == "input":
        return None, "'input' is reserved for the model input"
    if rule == "pattern":
        return None, f"must match {expected!r}, got {_describe(value)}"
    return None, exc.message.split(" ", 1)[-1]  # fastjsonschema's words, less its "data.x" prefix


def _path(exc, document):
    """The violation's location as JSON keys and list indices (``["layers", 3, "forward"]``)."""
    path, node = [], document
    for key in exc.path[1:]:  # exc.path starts with "data"
        if isinstance(node, list):
            key = int(key)
        path.append(key)
        try:
            node = node[key]
        except (LookupError, TypeError):
            node = None
    return path


def _where(path, document, missing, *, item_key, item_word):
    """``["layers", 3, "forward"]`` -> ``["layer #3 'conv'", "field 'forward'"]``."""
    parts = []
    if len(path) >= 2 and path[0] == item_key and isinstance(path[1], int):
        position = path[1]
        label = f"{item_word} #{position}"
        try:
            name = document[item_key][position].get("name")
        except (AttributeError, LookupError, TypeError):
            name = None
        if item_key == "layers" and isinstance(name, str):
            label += f" {(name if len(name) <= 40 else name[:37] + '...')!r}"
        parts.append(label)
        path = path[2:]
    field = [str(p) for p in path if isinstance(p, str)]
    if missing is not None:
        field.append(missing)
    if field:
        parts.append(f"field '{'.'.join(field)}'")
    return parts


def _check(document, fmts, *, source_name, error, item_key, item_word):
    fmts = (fmts,) if isinstance(fmts, str) else tuple(fmts)
    if not isinstance(document, dict):
        raise error(f"{source_name}: the top level must be a JSON object, not {type(document).__name__}")
    if document.get("format") not in fmts:  # the format first: it says which rules apply at all
        got = "missing" if "format" not in document else f"got {_describe(document['format'])}"
        expected = " or ".join(_describe(fmt) for fmt in fmts)
        raise error(f"{source_name}: field 'format': expected {expected}, {got}")
    exc = _violation(document, SCHEMA_NAMES[document["format"]])
    if exc is None:
        return
    missing, what = _explain(exc)
    where = _where(_path(exc, document), document, missing, item_key=item_key, item_word=item_word)
    raise error(": ".join([source_name] + where) + ": " + what)


def check_model_document(document, *, source_name="<model>"):
    """Validate a parsed model document against ``model.schema.json``.

    Parameters
    ----------
    document : object
        The parsed JSON.
    source_name : str, keyword-only
        The file name for messages.

    Raises
    ------
    ModelError
        At the first violation, naming the file, the layer (``layer #3
        'conv'``) and the field.

    Notes
    -----
    Linear in the document size.  Checks only what the schema can say; the
    semantic checks of :func:`planner.model.model_from_dict` (which calls this
    function first) come after.
    """
    _check(
        document, "edgeplan-model/1", source_name=source_name, error=ModelError,
        item_key="layers", item_word="layer",
    )


def check_schedule_document(document, *, source_name="<schedule>"):
    """Validate a parsed schedule document against ``schedule.schema.json``.

    Parameters
    ----------
    document : object
    source_name : str, keyword-only

    Raises
    ------
    ScheduleFormatError
        At the first violation, naming the file, the op (``op #12``) and the
        field.

    Notes
    -----
    Linear in the number of ops.  :func:`planner.schedule.schedule_from_dict`
    calls it first, then resolves the layer names against the model.
    """
    _check(
        document, ("edgeplan-schedule/1", "edgeplan-schedule/2", "edgeplan-schedule/3"), source_name=source_name,
        error=ScheduleFormatError, item_key="ops", item_word="op",
    )


def check_device_document(document, *, source_name="<device>"):
    """Validate a parsed device document against ``device.schema.json``.

    Raises
    ------
    DeviceError
        At the first violation, naming the file and the field.

    Notes
    -----
    :func:`planner.device.device_from_dict` calls it first.
    """
    from planner.errors import DeviceError

    _check(document, ("edgeplan-device/1",), source_name=source_name, error=DeviceError, item_key="", item_word="")
