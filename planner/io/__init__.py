"""Adapters to the outside world: model files from other tools.

* :mod:`planner.io.checkmate`: Checkmate / Moccasin graphs (networkx node-link JSON).
* :mod:`planner.io.onnx`: ONNX models (the ``onnx`` extra).
* :mod:`planner.io.torch_profile`: profiling PyTorch models (the ``torch`` extra).

Each importer returns an ``edgeplan-model/1`` document (a dict) that
:func:`planner.model.model_from_dict` validates.  Modules are imported on
demand, so an optional dependency is needed only by the adapter that uses it.
"""

from planner.model import INPUT

__all__ = ["unique_names"]


def unique_names(names):
    """Layer names from the importers' node names: unique, non-empty, never ``input``.

    A repeated name gets ``_2``, ``_3``, ...; an empty one becomes ``node_``.
    """
    seen = set()
    result = []
    for name in names:
        base = name if name and name != INPUT else f"{name or 'node'}_"
        candidate = base
        k = 1
        while candidate in seen:
            k += 1
            candidate = f"{base}_{k}"
        seen.add(candidate)
        result.append(candidate)
    return result
