"""Adapters to the outside world: model files from other tools.

* :mod:`planner.io.checkmate`: Checkmate / Moccasin graphs (networkx node-link JSON).
* :mod:`planner.io.onnx`: ONNX models (the ``onnx`` extra).
* :mod:`planner.torch.profile`: profiling PyTorch models (the ``torch`` extra).

Each importer returns an ``edgeplan-model/1`` document (a dict) that
:func:`planner.model.model_from_dict` validates; :func:`import_file` picks the
importer for a file and says what it made of it (:class:`Imported`).  Modules
are imported on demand, so an optional dependency is needed only by the
adapter that uses it.  A new importer is a module here plus a branch in
:func:`import_file`.
"""

import os
from dataclasses import dataclass

from planner.errors import ModelError
from planner.model import INPUT, Model, model_from_dict

__all__ = ["IMPORT_FORMATS", "Imported", "import_file", "unique_names"]

#: File extension -> the importer that reads it (``import_file``'s default).
IMPORT_FORMATS = {".onnx": "onnx", ".json": "checkmate"}


@dataclass(frozen=True)
class Imported:
    """A model read from another tool's file.

    Attributes
    ----------
    document : dict
        The ``edgeplan-model/1`` document, as it is written out.
    model : Model
        The same, validated.
    source_format : str
        ``"onnx"`` or ``"checkmate"``.
    estimated : bool
        Some costs are estimates rather than read from the file (ONNX: every
        time; Checkmate/Moccasin: backward = 2 x forward where the graph has
        no backward node).
    """

    document: dict
    model: Model
    source_format: str
    estimated: bool


def import_file(path, *, source_format=None, input_shapes=None):
    """Read a model from another tool's file.

    Parameters
    ----------
    path : str or os.PathLike
    source_format : {"onnx", "checkmate"} or None, keyword-only
        Default: from the extension (:data:`IMPORT_FORMATS`).
    input_shapes : dict of str to sequence of int, optional, keyword-only
        ONNX only: shapes for graph inputs (see :func:`planner.io.onnx.import_onnx`).

    Returns
    -------
    Imported

    Raises
    ------
    ModelError
        The format cannot be told, the file cannot be read or converted, or
        the result is not a valid model; the message names the file.
    """
    where = str(path)
    fmt = source_format or IMPORT_FORMATS.get(os.path.splitext(where)[1].lower())
    if fmt not in ("onnx", "checkmate"):
        raise ModelError(
            f"{where}: cannot tell the format from the extension; use --from checkmate|onnx"
        )
    if input_shapes and fmt != "onnx":
        raise ModelError(f"{where}: --input applies to ONNX models only (it binds graph input shapes)")
    if fmt == "onnx":
        from planner import extras

        extras.require("onnx", purpose="importing an ONNX model")
        from planner.io.onnx import import_onnx

        document, estimated = import_onnx(path, input_shapes=input_shapes), True
    else:
        from planner.io.checkmate import read_checkmate

        document, estimated = read_checkmate(path)
    return Imported(document, model_from_dict(document, source_name=where), fmt, estimated)


def unique_names(names, *, keys=None):
    """Layer names from the importers' node names: unique, non-empty, never ``input``.

    Parameters
    ----------
    names : list of str
        The wanted names, in layer order.
    keys : list, optional, keyword-only
        What tells the nodes apart in their file (ids, node indices); default
        their positions in ``names``.

    Returns
    -------
    list of str

    Notes
    -----
    An empty name becomes its key; a name that is ``input`` or already taken
    gets ``#key`` appended (``dup``, ``dup#2``), then ``'`` until it is free.
    """
    keys = range(len(names)) if keys is None else keys
    taken = set()
    result = []
    for name, key in zip(names, keys):
        base = name if name.strip() else str(key)
        candidate = base if base != INPUT and base not in taken else f"{base}#{key}"
        while candidate in taken or candidate == INPUT:
            candidate += "'"
        taken.add(candidate)
        result.append(candidate)
    return result
