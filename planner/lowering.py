"""The one shared lowering from a solver's decisions to complete op lists.

Solvers decide *what to compute when* (forward with or without save,
backward); :func:`insert_frees` adds every ``free`` at the earliest moment the
rules of SPEC section 3 allow, which is the least memory that sequence of
computations can use.  :func:`segments_to_ops` turns a partition of the
topological order into stored and recomputed segments (the checkpoint-set
strategies: store-all, sequential, sqrt(n), Chen's greedy, re-forwarding).
"""

from planner.schedule import OpKind, backward, forward, free

__all__ = ["insert_frees", "segments_to_ops", "STORE", "RECOMPUTE"]

STORE = "store"
RECOMPUTE = "recompute"


def _uses(model, op):
    """Layers whose output ``op`` reads."""
    layer = model.layers[op.layer]
    if op.kind is OpKind.FORWARD:
        return layer.inputs
    if op.kind is OpKind.BACKWARD:
        used = layer.inputs if layer.needs_inputs else ()
        return used + (op.layer,) if layer.needs_output else used
    return ()


def insert_frees(model, ops):
    """Return ``ops`` (any frees in it dropped) with each output freed as early as possible.

    Parameters
    ----------
    model : planner.model.Model
    ops : iterable of Op
        Forward and backward ops in execution order.

    Returns
    -------
    list of Op

    Notes
    -----
    Two passes, O(total inputs of the ops).  A backward scan finds, for every
    lifetime of a layer's output (from a forward to the next forward of the same
    layer), the op that reads it last; the forward pass frees it right after
    that op, or, if saved data still holds it then, right after the backward
    that releases the hold.  An output that is never read again is freed right
    after the forward that made it.
    """
    compute = [op for op in ops if op.kind is not OpKind.FREE]
    last_use = {}  # op index -> layers whose current lifetime ends after it
    live_later = set()
    for index in range(len(compute) - 1, -1, -1):
        op = compute[index]
        if op.kind is OpKind.FORWARD:
            if op.layer in live_later:
                live_later.discard(op.layer)
            else:
                last_use.setdefault(index, []).append(op.layer)
        for used in _uses(model, op):
            if used not in live_later:
                live_later.add(used)
                last_use.setdefault(index, []).append(used)

    layers = model.layers
    hold = [0] * len(layers)
    blocked = set()
    result = []
    append = result.append
    for index, op in enumerate(compute):
        append(op)
        i = op.layer
        layer = layers[i]
        if op.kind is OpKind.FORWARD:
            if op.save:
                if layer.needs_output:
                    hold[i] += 1
                if layer.needs_inputs:
                    for j in layer.inputs:
                        hold[j] += 1
        else:
            released = []
            if layer.needs_output:
                hold[i] -= 1
                released.append(i)
            if layer.needs_inputs:
                for j in layer.inputs:
                    hold[j] -= 1
                    released.append(j)
            for j in released:
                if j in blocked and not hold[j]:
                    blocked.discard(j)
                    append(free(j))
        for j in last_use.get(index, ()):
            if hold[j]:
                blocked.add(j)
            else:
                append(free(j))
    return result


def segments_to_ops(model, segments):
    """Compute ops for a partition of the topological order into segments.

    Parameters
    ----------
    model : planner.model.Model
    segments : sequence of (start, stop, mode)
        Consecutive half-open ranges of layer indices covering ``0..len(model)``;
        ``mode`` is :data:`STORE` (forward with save, as plain autograd) or
        :data:`RECOMPUTE` (forward without save, then recomputed with save just
        before its backward, as ``torch.utils.checkpoint`` does).

    Returns
    -------
    list of Op
        Forward and backward ops only; pass them to :func:`insert_frees`.
    """
    expected = 0
    for start, stop, mode in segments:
        if start != expected or stop <= start or mode not in (STORE, RECOMPUTE):
            raise ValueError(f"bad segment ({start}, {stop}, {mode!r})")
        expected = stop
    if expected != len(model.layers):
        raise ValueError("segments must cover every layer")
    ops = []
    for start, stop, mode in segments:
        save = mode == STORE
        ops.extend(forward(i, save) for i in range(start, stop))
    for start, stop, mode in reversed(segments):
        if mode == RECOMPUTE:
            ops.extend(forward(i, True) for i in range(start, stop))
        ops.extend(backward(i) for i in range(stop - 1, start - 1, -1))
    return ops
