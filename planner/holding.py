"""Small shared tensors held for the whole step, so that they stop blocking cuts.

A transformer's attention mask (or its rotary ``cos``/``sin``, its position
ids) is computed from the model input, is a few kilobytes, and is read by every
layer.  Its edges jump over every point of the topological order, so no single
tensor ever separates the layers before a point from those after it: the
segment strategies (``reforward``, ``chen-greedy``), the block decomposition of
``hierarchical`` and the stage merging of ``milp`` find nothing to cut.

:func:`held_view` decides which such layers to *hold*: compute them once, first,
with save, and keep them until the end of the step, where their backwards run
last.  Every strategy then solves the *reduced* model, in which the held
layers and the edges from them are gone, and the model
input is larger by what holding costs (:func:`held_view`'s Notes).  The
registry lifts the reduced schedule back (:meth:`HeldView.lift`) and replays the
lifted schedule in the unmodified simulator, on the original model, as it
replays every schedule.

Which layers are held (the threshold, see :data:`HOLD_FRACTION`):

* a layer all of whose inputs are the model input or other held layers (it can
  be computed first), and
* whose holding cost (output, its gradient, saved data and workspaces) is at
  most :data:`HOLD_FRACTION` (one) of the median output of the model's layers
  (of those with an output), so its output is at most half of a typical
  activation: an attention mask (4 KB as ``[b, 1, 1, s]`` floats, b s^2 bytes as
  a boolean ``[b, 1, s, s]``, an eighth of a hidden state of 128 features in 64
  positions), rotary tables, position ids; never a hidden state itself,
* the whole held set costing at most :data:`HOLD_TOTAL_FRACTION` (2 %) of the
  model's activations (every layer's output plus saved data),
* that is read by several layers, or is an ancestor of such a layer;
* only on models of at least :data:`HOLD_MIN_LAYERS` layers, and only when the
  reduced model has more cut points (:func:`planner.lowering.splitting_vertices`)
  than the original.  Chains never change (no layer of a chain has two readers).
"""

import dataclasses
from dataclasses import dataclass

from planner.lowering import splitting_vertices
from planner.model import Model
from planner.schedule import Op, backward, forward

__all__ = [
    "HeldView",
    "held_view",
    "HOLD_FRACTION",
    "HOLD_TOTAL_FRACTION",
    "HOLD_MIN_LAYERS",
]

HOLD_FRACTION = 1.0  # BERT by blocks: its 64 KB mask and 2 KB of workspace beside 256 KB block outputs
HOLD_TOTAL_FRACTION = 0.02
HOLD_MIN_LAYERS = 16


@dataclass(frozen=True, eq=False)
class HeldView:
    """The reduced model a strategy solves, and how its ops map back.

    Attributes
    ----------
    model : planner.model.Model
        The reduced model: the held layers removed with the edges from them
        (a layer that read only held layers reads the model input), the model
        input larger by the held bytes.
    original : planner.model.Model
    held : tuple of int
        Indices (in ``original``) of the held layers, in topological order.
    kept : tuple of int
        ``kept[r]``: the index in ``original`` of the reduced model's layer ``r``.
    """

    model: Model
    original: Model
    held: tuple
    kept: tuple

    @property
    def held_names(self):
        """Names of the held layers, for a schedule's params."""
        return [self.original.layers[i].name for i in self.held]

    def lift(self, ops):
        """The reduced model's ``ops`` as ops of the original model.

        Held layers are forwarded with save first and run their backwards last;
        every other op is renamed.  A replayable sequence (with a length) stays
        lazy.
        """
        if isinstance(ops, (list, tuple)):
            return list(self._lifted(ops))
        return _Lifted(self, ops)

    def _lifted(self, ops):
        kept = self.kept
        for i in self.held:
            yield forward(i, True)
        for op in ops:
            yield Op(op.kind, kept[op.layer], op.save)
        for i in reversed(self.held):
            yield backward(i)

    def reduce(self, ops):
        """Ops of the original model (a warm start) as ops of the reduced one: held layers' ops dropped."""
        where = {orig: r for r, orig in enumerate(self.kept)}
        result = []
        for op in ops:
            r = where.get(op.layer)
            if r is None:
                continue
            result.append(Op(op.kind, r, op.save))
        return result


class _Lifted:
    """A lazy lift of a replayable op sequence (revolve's, sequential's)."""

    def __init__(self, view, ops):
        self._view = view
        self._ops = ops

    def __len__(self):
        return len(self._ops) + 2 * len(self._view.held)

    def __iter__(self):
        return self._view._lifted(self._ops)


def _cost(layer):
    """What holding a layer for the whole step may cost: output, its gradient, saved data, workspaces."""
    return 2 * layer.output_bytes + layer.saved_bytes + max(layer.workspace_forward, layer.workspace_backward)


def _candidates(model):
    """The layers worth holding (before the cut-point test), in topological order."""
    layers = model.layers
    activations = sum(x.output_bytes + x.saved_bytes for x in layers)
    sizes = sorted(x.output_bytes for x in layers if x.output_bytes > 0)
    if not sizes:
        return []
    limit = HOLD_FRACTION * sizes[len(sizes) // 2]
    early = set()  # computable first: inputs all the model input or early layers, and small
    for i, layer in enumerate(layers[:-1]):
        if all(j in early for j in layer.inputs) and _cost(layer) <= limit:
            early.add(i)
    consumers = model.consumers
    roots = [i for i in sorted(early) if len(consumers[i]) >= 2]
    held = set()
    stack = list(roots)
    while stack:
        i = stack.pop()
        if i not in held:
            held.add(i)
            stack.extend(layers[i].inputs)
    held = sorted(held)
    if sum(_cost(layers[i]) for i in held) > HOLD_TOTAL_FRACTION * activations:
        return []
    return held


def _reduced(model, held):
    """The reduced model of ``held`` (see :class:`HeldView`)."""
    held_set = set(held)
    kept = tuple(i for i in range(len(model)) if i not in held_set)
    where = {orig: r for r, orig in enumerate(kept)}
    layers = []
    for orig in kept:
        layer = model.layers[orig]
        reads_held = [j for j in layer.inputs if j in held_set]
        # A backward after the first one reading a held layer adds a fresh gradient
        # of that layer's size (SPEC section 3): counted as transient workspace.
        fresh = sum(model.layers[j].output_bytes for j in reads_held)
        inputs = tuple(where[j] for j in layer.inputs if j not in held_set)
        # the edge from a held layer is dropped (the held output is always
        # there); a layer that read held layers alone reads the model input
        layers.append(dataclasses.replace(
            layer,
            inputs=inputs,
            workspace_backward=layer.workspace_backward + fresh,
            uses_input=layer.uses_input or not inputs,
        ))
    # Held for the whole step: each held output, its gradient (from its first
    # reader's backward on) and its saved data.
    extra = sum(2 * model.layers[i].output_bytes + model.layers[i].saved_bytes for i in held)
    reduced = Model(
        name=model.name,
        input_bytes=model.input_bytes + extra,
        layers=tuple(layers),
        time_unit=model.time_unit,
        source=model.source,
    )
    return reduced, kept


def held_view(model):
    """The :class:`HeldView` strategies solve instead of ``model``, or None when nothing is held.

    Parameters
    ----------
    model : planner.model.Model

    Returns
    -------
    HeldView or None

    Notes
    -----
    The reduced model counts, in its model input, each held layer's output, its
    output's gradient and its saved data for the whole step, and adds to each
    reader's backward workspace the fresh gradient of the held outputs it reads
    (SPEC section 3).  That is what the simulator counts for the lifted
    schedule, or more (the gradient is counted from the start, not from the
    first reader's backward; the first reader's gradient counts twice), so a
    reduced schedule that fits a budget lifts to one that fits it, but for the
    held layers' own workspaces at the start and the end of the step, which the
    registry's replay checks.  O(n + edges).
    """
    if len(model) < HOLD_MIN_LAYERS:
        return None
    held = _candidates(model)
    if not held:
        return None
    reduced, kept = _reduced(model, held)
    if len(splitting_vertices(reduced, input_edges=False)) <= len(splitting_vertices(model, input_edges=False)):
        return None
    return HeldView(model=reduced, original=model, held=tuple(held), kept=kept)
