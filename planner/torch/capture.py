"""Cutting a PyTorch model into stages (the layers of the model file).

Two granularities (``--stages``):

- ``modules``: an ``nn.Sequential`` (or a list of modules) is a chain of its
  children; any other module is cut into its *blocks* (the outermost items of
  its ``ModuleList``, ``ModuleDict`` and ``Sequential`` containers, such as
  ``transformer.h.0``; its children when it has none), and the code between
  the blocks becomes one stage per op;
- ``ops``: one stage per op.

Any other module is captured on the example with ``torch.export``
(non-strict, :mod:`planner.torch.export`): the model's own Python runs, so
library code (Hugging Face ``transformers``) works as it comes, with keyword
inputs (:class:`~planner.torch.inputs.ExampleInputs`) and dict, tuple,
dataclass or ``ModelOutput`` results (``output`` picks the tensor the loss
reads).  Where ``torch.export`` fails, the concrete ``torch.fx`` tracer
(:mod:`planner.torch.fx_trace`) is tried: positional inputs, one tensor
result.  Either way, shapes are the example's numbers, and the nodes are
sorted out alike:

- a tensor node that depends on a model input and does not share its storage
  with an argument is a **stage**;
- views (``view``, ``transpose``, slicing, ``split``/``chunk``/``unbind``
  pieces: nodes that share an argument's storage), tuples of tensors, and
  tensors that depend on no input (``arange``, ``zeros``, buffers, a
  position embedding of an ``arange``, parameters read directly) are
  **folded** into each stage that consumes them: the stage recomputes them from
  its inputs, so their bytes are counted once, in the storage they view;
- an op that draws random numbers is never folded (``Stage.random``);
- everything else (ints, sizes, dtypes, devices) is a constant.

What cannot be captured is a :class:`ModelError` of one line naming the
construct and the module: control flow on a tensor's values, a tensor's value
used as a Python number, an in-place write into a view or whose result is not
used, a result with several tensors and no choice among them, and anything
else both captures reject.
"""

from planner.errors import ModelError
from planner.io import unique_names
from planner.torch.export import ExportFailed, export_stages
from planner.torch.fx_trace import fx_stages, no_inplace
from planner.torch.inputs import ExampleInputs, require_torch
from planner.torch.loss import LOSS_NAME, check_loss_value
from planner.torch.stages import STAGE_MODES, Stage

__all__ = ["build_stages", "document_output", "OWN_LOSS"]

OWN_LOSS = "output"  # --loss output: the model's own loss field is the sink


def document_output(document):
    """The ``output`` a model file's stages were captured with (``--loss output``: ``loss``)."""
    document = document or {}
    if document.get("output") is not None:
        return document["output"]
    return "loss" if document.get("loss") == OWN_LOSS else None


def _chain_stages(children):
    names = []
    for key, child in children:
        cls = type(child).__name__
        names.append(f"L{key}_{cls}" if str(key).isdigit() else str(key))
    stages = []
    for i, ((_, child), name) in enumerate(zip(children, unique_names(names))):
        no_inplace(child)
        stages.append(
            Stage(
                name=name,
                fn=child,
                inputs=(i - 1,) if i else (-1,),
                params=list(child.parameters()),
                buffers=list(child.buffers()),
            )
        )
    return stages


class _LossFn:
    """``fn(output, target)``: the loss of a loss stage, checked to return a scalar."""

    def __init__(self, loss, kind):
        self.loss = loss
        self.kind = kind

    def __call__(self, output, target):
        value = self.loss(output, target)
        check_loss_value(value, self.kind)
        return value.reshape(())


def _append_loss(stage_list, loss):
    """Append the loss stage (named ``loss``; a model stage of that name is renamed)."""
    names = unique_names([s.name for s in stage_list] + [LOSS_NAME])
    if names[-1] != LOSS_NAME:
        taken = set(names)
        for s in stage_list:
            if s.name == LOSS_NAME:
                k = 1
                while f"{LOSS_NAME}_{k}" in taken:
                    k += 1
                s.name = f"{LOSS_NAME}_{k}"
                taken.add(s.name)
    kind = getattr(loss, "__name__", "loss").lstrip("_")
    stage_list.append(Stage(name=LOSS_NAME, fn=_LossFn(loss, kind), inputs=(len(stage_list) - 1,), loss=True))
    return stage_list


def build_stages(obj, stages="auto", example=None, loss=None, *, output=None):
    """Cut a module into stages.

    Parameters
    ----------
    obj : torch.nn.Module or list of torch.nn.Module
    stages : {"auto", "modules", "ops"}
        See the module docstring.  ``auto``: modules for a Sequential or a
        list, ops otherwise.
    example : torch.Tensor, tuple of torch.Tensor or ExampleInputs
        The model inputs (needed to capture: shapes are constants);
        :class:`~planner.torch.inputs.ExampleInputs` carries keyword inputs.
    loss : callable or None
        ``loss(output, target) -> scalar``: appended as the last stage (the
        sink), named ``loss``, with ``loss=True``.
    output : str or None, keyword-only
        The field (or index) of the model's result that the loss reads
        (``--output``); None: the tensor itself, its ``logits``, or its one
        tensor.

    Returns
    -------
    root : torch.nn.Module
        A module holding every parameter (for state snapshots).
    stages : list of Stage
        In a topological order; the last one is the sink.

    Raises
    ------
    ModelError
        A module that cannot be cut this way, with one line naming the
        construct and the module.

    Notes
    -----
    A module is captured with ``torch.export`` (non-strict,
    :mod:`planner.torch.export`); where that fails, with the concrete
    ``torch.fx`` tracer (:mod:`planner.torch.fx_trace`), which takes
    positional tensor inputs and one tensor result.  In-place modules
    (``inplace=True``) and in-place operators are made out-of-place: each
    stage owns its output, as the model file says.  The module's state
    (BatchNorm statistics) and the RNG are restored after capture.  One or two
    forwards on the example; O(nodes) afterwards.
    """
    torch = require_torch()
    nn = torch.nn
    if stages not in STAGE_MODES:
        raise ModelError(f"--stages must be one of {', '.join(STAGE_MODES)}, got {stages!r}")
    if isinstance(example, torch.Tensor):
        example = (example,)
    if not isinstance(example, ExampleInputs):
        example = ExampleInputs(tuple(example or ()))
    sequential = isinstance(obj, (list, tuple, nn.Sequential))
    root = nn.ModuleList(obj) if isinstance(obj, (list, tuple)) else obj
    mode = ("modules" if sequential else "ops") if stages == "auto" else stages
    if mode == "modules" and sequential and output is None:
        children = [(str(i), m) for i, m in enumerate(obj)] if isinstance(obj, (list, tuple)) else list(
            obj.named_children()
        )
        if not children:
            raise ModelError("the model has no stages (an empty nn.Sequential)")
        if len(example) > 1 or example.names:
            raise ModelError(
                f"a chain of modules takes one input, the example has {len(example)}: use --stages ops"
            )
        stage_list = _chain_stages(children)
    else:
        if isinstance(obj, (list, tuple)):
            root = nn.Sequential(*obj)
        if not example:
            raise ModelError(f"--stages {mode} needs the model's inputs (--input or --example)")
        stage_list = _captured(root, example, blocks=(mode == "modules"), output=output)
    if loss is not None:
        _append_loss(stage_list, loss)
    return root, stage_list


def _captured(root, example, *, blocks, output):
    """torch.export first; the fx tracer where it fails (positional inputs, one tensor out)."""
    try:
        return export_stages(root, example, blocks=blocks, output=output)
    except ExportFailed as exported:
        if example.names or example.constants or output is not None:
            raise
        try:
            return fx_stages(root, tuple(example), blocks=blocks)
        except ModelError as traced:
            raise (traced if str(traced).startswith("cannot trace") else exported) from None
