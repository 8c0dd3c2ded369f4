"""The published JSON Schemas (Draft 2020-12) of edgeplan's file formats.

The canonical schema files ship inside the package, in ``planner/schemas/``
(``model.schema.json`` for ``edgeplan-model/1``, ``schedule.schema.json`` for
``edgeplan-schedule/1`` and ``/2``, ``device.schema.json`` for
``edgeplan-device/1``); ``schedules/`` at the top of the repository holds
identical copies for people and tools that do not install edgeplan (a test
keeps them identical).

The loaders (:func:`planner.model.model_from_dict`,
:func:`planner.schedule.schedule_from_dict`) call :func:`check_model_document`
and :func:`check_schedule_document` before their own semantic checks (unique
names, topological order, one sink, layers the model has), so a document that
loads is also valid against the published schema.  Schema errors are turned
into the loaders' own message style: file, layer (or op), field, what is wrong.
"""

import json
from functools import lru_cache
from importlib import resources

from planner.errors import ModelError, ScheduleFormatError

__all__ = [
    "SCHEMA_NAMES",
    "load_schema",
    "validator",
    "check_model_document",
    "check_schedule_document",
    "schema_errors",
    "fast_check",
    "model_problem",
    "schedule_problem",
    "model_accepted",
    "schedule_accepted",
    "device_problem",
]

#: Format name -> schema file name inside ``planner/schemas/``.
SCHEMA_NAMES = {
    "edgeplan-model/1": "model.schema.json",
    "edgeplan-schedule/1": "schedule.schema.json",
    "edgeplan-schedule/2": "schedule.schema.json",
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
    """The parsed schema ``filename`` (``"model.schema.json"`` or ``"schedule.schema.json"``).

    Parameters
    ----------
    filename : str
        A value of :data:`SCHEMA_NAMES`.

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
    """A checked, reusable ``jsonschema.Draft202012Validator`` for one schema file.

    Notes
    -----
    Built once per process (the schema is checked against the meta-schema at
    that time); validation is then linear in the size of the document.
    """
    import jsonschema

    schema = load_schema(filename)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _describe(value):
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _explain(error):
    """The part of a message that says what is wrong with ``error.instance``."""
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "required":
        missing = [key for key in expected if key not in value]
        return missing[0] if missing else None, "missing"
    if kind == "type":
        words = expected if isinstance(expected, list) else [expected]
        text = " or ".join(_TYPE_WORDS.get(w, w) for w in words)
        return None, f"must be {text}, got {_describe(value)}"
    if kind == "minimum":
        return None, f"must be >= {expected}, got {_describe(value)}"
    if kind == "exclusiveMinimum":
        return None, f"must be > {expected}, got {_describe(value)}"
    if kind == "maximum":
        return None, f"{_describe(value)} is beyond 2**62 bytes"
    if kind == "minLength":
        return None, "must be a non-empty string"
    if kind == "minItems":
        return None, "must hold at least one item"
    if kind == "const":
        return None, f"expected {_describe(expected)}, got {_describe(value)}"
    if kind == "enum":
        choices = ", ".join(str(c) for c in expected)
        return None, f"unknown value {_describe(value)} (one of: {choices})"
    if kind == "not" and value == "input":
        return None, "'input' is reserved for the model input"
    if kind == "pattern":
        return None, f"must match {expected!r}, got {_describe(value)}"
    return None, error.message  # pragma: no cover - every validator the schemas use is above


def _first_error(document, filename):
    """The most useful violation, or None: a ``format`` error first, else jsonschema's best match."""
    import jsonschema.exceptions

    errors = list(validator(filename).iter_errors(document))
    if not errors:
        return None
    for error in errors:
        if list(error.absolute_path)[:1] == ["format"]:
            return error
    return jsonschema.exceptions.best_match(errors)


# A fast acceptance check.  ``jsonschema`` spends about 0.1 ms per layer or op
# on this kind of document, far more than the loaders' own checks, so valid
# documents are accepted by a check compiled from the same schema file for the
# keywords the published schemas use; anything it does not accept goes to
# jsonschema, which has the last word and writes the message.  tests/test_schemas.py
# checks that the two agree.

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
}
_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "default", "$comment"}


def _compile(schema, defs):
    """A predicate ``value -> bool`` for ``schema``, or None for a keyword it does not know."""
    import re

    if "$ref" in schema and set(schema) - _ANNOTATIONS == {"$ref"}:
        return _compile(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    fast = _number_range(schema)
    if fast is not None:
        return fast
    checks = []
    for keyword, expected in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword == "$ref":
            target = _compile(defs[expected.rsplit("/", 1)[-1]], defs)
            if target is None:
                return None
            checks.append(target)
        elif keyword == "type":
            tests = [_TYPES[t] for t in (expected if isinstance(expected, list) else [expected])]
            if len(tests) == 1:
                checks.append(tests[0])
            else:
                checks.append(lambda v, tests=tests: any(t(v) for t in tests))
        elif keyword in ("minimum", "exclusiveMinimum", "maximum", "minLength", "minItems"):
            checks.append(_bound(keyword, expected))
        elif keyword == "const":
            checks.append(lambda v, c=expected: type(v) is type(c) and v == c)
        elif keyword == "enum":
            checks.append(lambda v, e=expected: any(type(v) is type(c) and v == c for c in e))
        elif keyword == "pattern":
            rx = re.compile(expected)
            checks.append(lambda v, rx=rx: not isinstance(v, str) or rx.search(v) is not None)
        elif keyword == "not":
            inner = _compile(expected, defs)
            if inner is None:
                return None
            checks.append(lambda v, inner=inner: not inner(v))
        elif keyword == "required":
            checks.append(
                lambda v, keys=tuple(expected): not isinstance(v, dict) or all(k in v for k in keys)
            )
        elif keyword == "properties":
            props = {k: _compile(sub, defs) for k, sub in expected.items()}
            if any(p is None for p in props.values()):
                return None
            checks.append(_properties(tuple(props.items())))
        elif keyword == "items":
            inner = _compile(expected, defs)
            if inner is None:
                return None
            checks.append(lambda v, inner=inner: not isinstance(v, list) or all(map(inner, v)))
        elif keyword == "if":
            cond, then = _compile(expected, defs), _compile(schema.get("then", {}), defs)
            other = _compile(schema.get("else", {}), defs)
            if cond is None or then is None or other is None:
                return None
            checks.append(
                lambda v, cond=cond, then=then, other=other: then(v) if cond(v) else other(v)
            )
        elif keyword in ("then", "else"):
            continue
        else:
            return None
    return _all(tuple(checks))


def _number_range(schema):
    """One predicate for the common ``{"type": "integer", "minimum": a, "maximum": b}``."""
    keys = set(schema) - _ANNOTATIONS
    if schema.get("type") not in ("integer", "number") or not keys <= {"type", "minimum", "maximum"}:
        return None
    low = schema.get("minimum", float("-inf"))
    high = schema.get("maximum", float("inf"))
    if schema["type"] == "integer":

        def run(v):
            kind = type(v)
            if kind is int:
                return low <= v <= high
            if kind is float:
                return v.is_integer() and low <= v <= high
            return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    else:

        def run(v):
            kind = type(v)
            if kind is float or kind is int:
                return low <= v <= high
            return isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high

    return run


def _all(checks):
    if len(checks) == 1:
        return checks[0]

    def run(value):
        for check in checks:
            if not check(value):
                return False
        return True

    return run


def _properties(props):
    def run(value):
        if not isinstance(value, dict):
            return True
        for key, check in props:
            if key in value and not check(value[key]):
                return False
        return True

    return run


def _bound(keyword, limit):
    if keyword == "minimum":
        return lambda v: not _TYPES["number"](v) or v >= limit
    if keyword == "maximum":
        return lambda v: not _TYPES["number"](v) or v <= limit
    if keyword == "exclusiveMinimum":
        return lambda v: not _TYPES["number"](v) or v > limit
    if keyword == "minLength":
        return lambda v: not isinstance(v, str) or len(v) >= limit
    return lambda v: not isinstance(v, list) or len(v) >= limit


@lru_cache(maxsize=None)
def fast_check(filename):
    """The compiled acceptance predicate of one schema file (see the comment above).

    Returns
    -------
    callable
        ``document -> bool``; True only for documents valid against the
        schema.  A schema with a keyword the compiler does not know gives a
        predicate that always answers False, so jsonschema judges every document.

    Notes
    -----
    Linear in the document, about a microsecond per field.
    """
    schema = load_schema(filename)
    compiled = _compile(schema, schema.get("$defs", {}))
    return compiled if compiled is not None else (lambda document: False)


def _where(path, document, missing, *, item_key, item_word):
    """``["layers", 3, "forward"]`` -> ``["layer #3 'conv'", "field 'forward'"]``."""
    path = list(path)
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


def schema_errors(document, filename):
    """Every schema violation of ``document``, as ``jsonschema.ValidationError`` objects.

    For tests and tools; the loaders use the ``check_*`` functions.
    """
    return list(validator(filename).iter_errors(document))


def _problem(document, filename, source_name, error_cls, *, item_key, item_word):
    if not isinstance(document, dict):
        return error_cls(
            f"{source_name}: the top level must be a JSON object, not {type(document).__name__}"
        )
    if fast_check(filename)(document):
        return None
    error = _first_error(document, filename)
    if error is None:
        return None
    missing, what = _explain(error)
    parts = [source_name] + _where(
        error.absolute_path, document, missing, item_key=item_key, item_word=item_word
    )
    return error_cls(": ".join(parts) + ": " + what)


def model_accepted(document):
    """True when ``document`` is valid against ``model.schema.json`` (fast; see :func:`fast_check`)."""
    return fast_check("model.schema.json")(document)


def schedule_accepted(document):
    """True when ``document`` is valid against ``schedule.schema.json`` (fast)."""
    return fast_check("schedule.schema.json")(document)


def model_problem(document, *, source_name="<model>"):
    """The :class:`~planner.errors.ModelError` for the first schema violation, or None.

    The loaders use this form: when :func:`model_accepted` says no, they let
    their own, more specific checks name the defect when they can, and raise
    this error only for what those do not catch (jsonschema walks the whole
    document, which is slow for long ones, so it runs last).
    """
    return _problem(
        document, "model.schema.json", source_name, ModelError, item_key="layers", item_word="layer"
    )


def schedule_problem(document, *, source_name="<schedule>"):
    """The :class:`~planner.errors.ScheduleFormatError` for the first schema violation, or None."""
    return _problem(
        document,
        "schedule.schema.json",
        source_name,
        ScheduleFormatError,
        item_key="ops",
        item_word="op",
    )


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
        At the first (most specific) violation, naming the file, the layer
        (``layer #3 'conv'``) and the field.

    Notes
    -----
    Linear in the document size.  Checks only what the schema can say; the
    semantic checks of :func:`planner.model.model_from_dict` come after.
    """
    problem = model_problem(document, source_name=source_name)
    if problem is not None:
        raise problem


def check_schedule_document(document, *, source_name="<schedule>"):
    """Validate a parsed schedule document against ``schedule.schema.json``.

    Parameters
    ----------
    document : object
    source_name : str, keyword-only

    Raises
    ------
    ScheduleFormatError
        At the first (most specific) violation, naming the file, the op
        (``op #12``) and the field.

    Notes
    -----
    Linear in the number of ops.
    """
    problem = schedule_problem(document, source_name=source_name)
    if problem is not None:
        raise problem


def device_problem(document, *, source_name="<device>"):
    """The :class:`~planner.errors.DeviceError` for the first violation of ``device.schema.json``, or None."""
    from planner.errors import DeviceError

    return _problem(
        document, "device.schema.json", source_name, DeviceError, item_key="", item_word=""
    )
