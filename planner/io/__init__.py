"""Adapters to the outside world: model files from other tools.

* :mod:`planner.io.checkmate`: Checkmate / Moccasin graphs (networkx node-link JSON).
* :mod:`planner.io.onnx`: ONNX models (the ``onnx`` extra).
* :mod:`planner.io.torch_profile`: profiling PyTorch models (the ``torch`` extra).

Each importer returns an ``edgeplan-model/1`` document (a dict) that
:func:`planner.model.model_from_dict` validates.  Modules are imported on
demand, so an optional dependency is needed only by the adapter that uses it.
"""
