"""Schedules: the op vocabulary, the Schedule record and ``edgeplan-schedule/1`` and ``/2`` I/O.

A schedule with paging ops (``pageout``, ``pagein``; SPEC section 5) is an
``edgeplan-schedule/2`` and carries its :class:`~planner.device.Storage`; any
other is an ``edgeplan-schedule/1``, written exactly as before paging existed.

Ops are a closed vocabulary (:class:`OpKind`) of frozen dataclasses that name
layers by index.  Op objects are interned: ``forward(3, save=True)`` returns the
same object every time, so long schedules cost no allocation per op.
"""

import json
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

from planner.device import storage_from_dict
from planner.errors import ModelMismatchError, ScheduleFormatError
from planner.files import atomic_output
from planner.model import read_json_file
from planner.schemas import check_schedule_document

__all__ = [
    "SCHEDULE_FORMAT",
    "SCHEDULE_FORMAT_PAGING",
    "SCHEDULE_FORMAT_OVERLAP",
    "PAGING_KINDS",
    "RECORD_KINDS",
    "OpKind",
    "Op",
    "forward",
    "backward",
    "free",
    "pageout",
    "pagein",
    "pageout_saved",
    "drop_saved",
    "pagein_saved",
    "Schedule",
    "load_schedule",
    "schedule_from_dict",
]

SCHEDULE_FORMAT = "edgeplan-schedule/1"
SCHEDULE_FORMAT_PAGING = "edgeplan-schedule/2"
#: A paging schedule whose transfers overlap compute (docs/format.md, planner.timing).
SCHEDULE_FORMAT_OVERLAP = "edgeplan-schedule/3"


class OpKind(Enum):
    """The three ops of SPEC section 2, the two paging ops of section 5 and the three record ops.

    ``pageout_saved``, ``drop_saved`` and ``pagein_saved`` page a layer's backward
    record (its saved data; docs/format.md, "Paging backward records").
    """

    FORWARD = "forward"
    BACKWARD = "backward"
    FREE = "free"
    PAGEOUT = "pageout"
    PAGEIN = "pagein"
    PAGEOUT_SAVED = "pageout_saved"
    DROP_SAVED = "drop_saved"
    PAGEIN_SAVED = "pagein_saved"


#: The op kinds that page a layer's backward record: only in an ``edgeplan-schedule/3``.
RECORD_KINDS = frozenset({OpKind.PAGEOUT_SAVED, OpKind.DROP_SAVED, OpKind.PAGEIN_SAVED})
#: The op kinds that make a schedule an ``edgeplan-schedule/2`` (or ``/3``).
PAGING_KINDS = frozenset(
    {OpKind.PAGEOUT, OpKind.PAGEIN, OpKind.PAGEOUT_SAVED, OpKind.DROP_SAVED, OpKind.PAGEIN_SAVED}
)


@dataclass(frozen=True, slots=True)
class Op:
    """One op of a schedule.  ``layer`` is the layer's index in the model."""

    kind: OpKind
    layer: int
    save: bool = False


@lru_cache(maxsize=None)
def forward(layer, save):
    """The interned op ``{"op": "forward", "layer": layer, "save": save}``."""
    return Op(OpKind.FORWARD, layer, bool(save))


@lru_cache(maxsize=None)
def backward(layer):
    """The interned op ``{"op": "backward", "layer": layer}``."""
    return Op(OpKind.BACKWARD, layer)


@lru_cache(maxsize=None)
def free(layer):
    """The interned op ``{"op": "free", "layer": layer}``."""
    return Op(OpKind.FREE, layer)


@lru_cache(maxsize=None)
def pageout(layer):
    """The interned op ``{"op": "pageout", "layer": layer}`` (write the output to storage)."""
    return Op(OpKind.PAGEOUT, layer)


@lru_cache(maxsize=None)
def pagein(layer):
    """The interned op ``{"op": "pagein", "layer": layer}`` (read the output back)."""
    return Op(OpKind.PAGEIN, layer)


@lru_cache(maxsize=None)
def pageout_saved(layer):
    """The interned op ``{"op": "pageout_saved", "layer": layer}`` (write the record to storage)."""
    return Op(OpKind.PAGEOUT_SAVED, layer)


@lru_cache(maxsize=None)
def drop_saved(layer):
    """The interned op ``{"op": "drop_saved", "layer": layer}`` (release the paged-out record)."""
    return Op(OpKind.DROP_SAVED, layer)


@lru_cache(maxsize=None)
def pagein_saved(layer):
    """The interned op ``{"op": "pagein_saved", "layer": layer}`` (read the record back)."""
    return Op(OpKind.PAGEIN_SAVED, layer)


@dataclass(frozen=True)
class Schedule:
    """A schedule for one model, as written to ``edgeplan-schedule/1`` and ``/2`` files.

    ``predicted`` holds ``peak_bytes``, ``compute``, ``baseline_compute``,
    ``overhead`` and ``forwards`` exactly as the simulator computed them (and
    ``transfer``, ``pageouts``, ``pageins`` for a paging schedule).
    ``storage`` (a :class:`~planner.device.Storage`) is set exactly when the
    ops page: the schedule is then an ``edgeplan-schedule/2``.  ``power_w``
    (watts while computing) is set when ``predicted`` has ``energy_j``, the
    step's joules (docs/format.md, "Energy in a schedule").
    """

    model_name: str
    fingerprint: str
    strategy: str
    ops: tuple
    params: dict = field(default_factory=dict)
    budget_bytes: int = None
    predicted: dict = field(default_factory=dict)
    storage: object = None
    power_w: float = None

    @property
    def format(self):
        """``/3`` with an overlapping storage or backward records paged, ``/2`` with a serial one, else ``/1``.

        SPEC section 5's ``/2`` stays as it is: the record ops are ``/3``'s alone.
        """
        if self.storage is None:
            return SCHEDULE_FORMAT
        if self.storage.overlap or any(op.kind in RECORD_KINDS for op in self.ops):
            return SCHEDULE_FORMAT_OVERLAP
        return SCHEDULE_FORMAT_PAGING

    def header(self):
        """Every field of the file but ``ops``, in the order they are written."""
        head = {
            "format": self.format,
            "model": {"name": self.model_name, "fingerprint": self.fingerprint},
            "strategy": self.strategy,
            "params": self.params,
            "budget_bytes": self.budget_bytes,
        }
        if self.storage is not None:
            head["storage"] = self.storage.to_dict()
            if head["format"] == SCHEDULE_FORMAT_OVERLAP and not self.storage.overlap:
                head["storage"]["overlap"] = False  # a /3 storage overlaps unless it says not
        if self.power_w is not None:
            head["power_w"] = self.power_w
        head["predicted"] = self.predicted
        return head

    def iter_json(self, model):
        """Yield the file's text in chunks: the header, then one op per line.

        The output is deterministic: the same schedule gives the same bytes.

        Raises
        ------
        ValueError
            A paging op in a schedule without a storage (it cannot be an
            ``edgeplan-schedule/1``).
        """
        head = json.dumps(self.header(), indent=2, sort_keys=False, ensure_ascii=False)
        yield head[:-2] + ',\n  "ops": ['
        names = [json.dumps(layer.name, ensure_ascii=False) for layer in model.layers]
        sep = "\n    "
        paging_forbidden = self.storage is None
        for n, op in enumerate(self.ops):
            if op.kind is OpKind.FORWARD:
                text = f'{{"op": "forward", "layer": {names[op.layer]}, "save": {"true" if op.save else "false"}}}'
            else:
                if paging_forbidden and op.kind in PAGING_KINDS:
                    raise ValueError(
                        f"op #{n} is a {op.kind.value}: a schedule with paging ops needs a "
                        f"storage ({SCHEDULE_FORMAT_PAGING})"
                    )
                text = f'{{"op": "{op.kind.value}", "layer": {names[op.layer]}}}'
            yield (sep if n == 0 else "," + sep) + text
        yield "\n  ]\n}\n" if self.ops else "]\n}\n"

    def write(self, path, model):
        """Write the file atomically (a temporary file renamed into place)."""
        with atomic_output(path) as f:
            for chunk in self.iter_json(model):
                f.write(chunk)


def load_schedule(path, model):
    """Read an ``edgeplan-schedule/1`` or ``/2`` file for ``model``.

    Raises
    ------
    ScheduleFormatError
        If the file is not a well-formed schedule or names layers the model
        does not have.
    ModelMismatchError
        If it names layers the model does not have and was made for another
        model (name or fingerprint): an answer (exit 1), not bad input.

    Whether the ops obey SPEC section 3 is the simulator's business, not
    this function's.
    """
    document = read_json_file(path, error=ScheduleFormatError, what="schedule file")
    return schedule_from_dict(document, model, source_name=str(path))


def _check_same_model(fields, model, source_name, n, layer):
    """Raise :class:`ModelMismatchError` when the schedule names another model."""
    name, fingerprint = fields["model_name"], fields["fingerprint"]
    if fingerprint == model.fingerprint and name == model.name:
        return
    raise ModelMismatchError(
        f"{source_name}: the schedule was made for another model: {name[:60]!r} "
        f"({fingerprint[:80]}), not {model.name[:60]!r} ({model.fingerprint}); "
        f"its op #{n} names layer {layer[:60]!r}, which {model.name[:60]!r} does not have",
        index=n,
        layer=layer,
    )


def schedule_from_dict(document, model, *, source_name="<schedule>"):
    """Validate a parsed schedule document and resolve its layer names against ``model``.

    Raises
    ------
    ScheduleFormatError
        If the document is not a well-formed schedule or names layers the model
        does not have, naming the file, the op and the field.

    Notes
    -----
    Validated once against the published schema
    (:func:`planner.schemas.check_schedule_document`), then built.  When the
    schema rejects the document, the building checks are asked first for the
    message (they say "the model has no layer 'x'"); the schema's message
    stands for the rest.  O(ops).
    """
    try:
        check_schedule_document(document, source_name=source_name)
    except ScheduleFormatError:
        _build_schedule(document, model, source_name)
        raise
    return _build_schedule(document, model, source_name)


def _build_schedule(document, model, source_name):
    """The :class:`Schedule` of ``document``, or a :class:`ScheduleFormatError` naming its first defect."""
    fields = _schedule_fields(document, source_name)
    return Schedule(ops=_schedule_ops(document, model, fields, source_name), **fields)


def _bad(source_name, message):
    """The :class:`ScheduleFormatError` of a defect of the file ``source_name``."""
    return ScheduleFormatError(f"{source_name}: {message}")


def _schedule_fields(document, source_name):
    """Every field of a :class:`Schedule` but ``ops``, checked in the order of the file format."""
    if not isinstance(document, dict):
        raise _bad(source_name, f"the top level must be a JSON object, not {type(document).__name__}")
    got = document.get("format")
    if got not in (SCHEDULE_FORMAT, SCHEDULE_FORMAT_PAGING, SCHEDULE_FORMAT_OVERLAP):
        raise _bad(
            source_name,
            f"field 'format': expected \"{SCHEDULE_FORMAT}\", \"{SCHEDULE_FORMAT_PAGING}\" or "
            f"\"{SCHEDULE_FORMAT_OVERLAP}\", got " + ("nothing" if got is None else json.dumps(got)[:40]),
        )
    storage = None
    if got != SCHEDULE_FORMAT:
        if "storage" not in document:
            raise _bad(source_name, f"field 'storage': missing (an {got} names its storage)")
        storage = storage_from_dict(
            document["storage"], error=ScheduleFormatError, source_name=source_name,
            overlap=got == SCHEDULE_FORMAT_OVERLAP,
        )
        if got == SCHEDULE_FORMAT_PAGING and storage.overlap:
            raise _bad(source_name, f"field 'storage.overlap': an {got} says false or nothing "
                       f"(transfers beside compute are {SCHEDULE_FORMAT_OVERLAP}'s)")
    info = document.get("model")
    if not isinstance(info, dict):
        raise _bad(source_name, "field 'model': must be an object with 'name' and 'fingerprint'")
    for key in ("name", "fingerprint"):
        if not isinstance(info.get(key), str):
            raise _bad(source_name, f"field 'model.{key}': must be a string")
    strategy = document.get("strategy", "")
    if not isinstance(strategy, str):
        raise _bad(source_name, "field 'strategy': must be a string")
    params = document.get("params", {})
    if not isinstance(params, dict):
        raise _bad(source_name, "field 'params': must be an object")
    budget = document.get("budget_bytes")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
        raise _bad(source_name, "field 'budget_bytes': must be an integer >= 0 or null")
    predicted = document.get("predicted", {})
    if not isinstance(predicted, dict):
        raise _bad(source_name, "field 'predicted': must be an object")
    power = document.get("power_w")
    if power is not None and (isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0):
        raise _bad(source_name, "field 'power_w': must be a number > 0 (watts while computing)")
    return {
        "model_name": info["name"], "fingerprint": info["fingerprint"], "strategy": strategy,
        "params": params, "budget_bytes": budget, "predicted": predicted, "storage": storage,
        "power_w": power,
    }


def _schedule_ops(document, model, fields, source_name):
    """The ops of ``document`` as a tuple of :class:`Op`, their layer names resolved in ``model``."""
    paging = fields["storage"] is not None
    records = document.get("format") == SCHEDULE_FORMAT_OVERLAP
    raw_ops = document.get("ops")
    if not isinstance(raw_ops, list):
        raise _bad(source_name, "field 'ops': must be a list of ops")
    index = model.index
    ops = []
    for n, raw in enumerate(raw_ops):
        if not isinstance(raw, dict):
            raise _bad(source_name, f"op #{n}: must be an object")
        kind = raw.get("op")
        layer = raw.get("layer")
        if kind in _RECORD_NAMES and paging and not records:
            raise _bad(source_name, f"op #{n}: field 'op': {kind} needs format \"{SCHEDULE_FORMAT_OVERLAP}\"")
        if kind not in _OP_NAMES and not (paging and kind in _PAGING_NAMES):
            if kind in _PAGING_NAMES:
                raise _bad(
                    source_name,
                    f"op #{n}: field 'op': {kind} needs format \"{SCHEDULE_FORMAT_PAGING}\" and a storage",
                )
            raise _bad(
                source_name, f"op #{n}: field 'op': unknown op {json.dumps(kind)[:40]} ({_op_words(paging)})"
            )
        if not isinstance(layer, str):
            raise _bad(source_name, f"op #{n}: field 'layer': must be a layer name")
        if layer not in index:
            _check_same_model(fields, model, source_name, n, layer)
            raise _bad(source_name, f"op #{n}: field 'layer': the model has no layer {layer[:60]!r}")
        i = index[layer]
        if kind == "forward":
            save = raw.get("save")
            if not isinstance(save, bool):
                raise _bad(source_name, f"op #{n} ({layer[:60]!r}): field 'save': must be true or false")
            ops.append(forward(i, save))
        else:
            ops.append(_BY_NAME[kind](i))
    return tuple(ops)


_OP_NAMES = ("forward", "backward", "free")
_RECORD_NAMES = ("pageout_saved", "drop_saved", "pagein_saved")
_PAGING_NAMES = ("pageout", "pagein") + _RECORD_NAMES
_BY_NAME = {
    "backward": backward,
    "free": free,
    "pageout": pageout,
    "pagein": pagein,
    "pageout_saved": pageout_saved,
    "drop_saved": drop_saved,
    "pagein_saved": pagein_saved,
}


def _op_words(paging):
    if paging:
        return "forward, backward, free, pageout, pagein, pageout_saved, drop_saved or pagein_saved"
    return "forward, backward or free"
