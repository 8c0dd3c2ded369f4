"""The one shared lowering from a solver's decisions to complete op lists.

Solvers decide *what to compute when* (forward with or without save,
backward); :func:`insert_frees` adds every ``free`` at the earliest moment the
rules of SPEC section 3 allow, which is the least memory that sequence of
computations can use.  :func:`segments_to_ops` turns a partition of the
topological order into stored and recomputed segments (the checkpoint-set
strategies: store-all, sequential, sqrt(n), Chen's greedy, re-forwarding).
"""

import math

import numpy as np

from planner.schedule import OpKind, backward, forward, free
from planner.sizes import int64_safe
from planner.tables import size_dtype

__all__ = [
    "insert_frees",
    "segments_to_ops",
    "chain_segments_peak",
    "fits_int64",
    "size_dtype",
    "size_unit",
    "store_all_ops",
    "splitting_vertices",
    "hold_segment_inputs",
    "STORE",
    "RECOMPUTE",
]

STORE = "store"
RECOMPUTE = "recompute"


def insert_frees(model, ops):
    """Return ``ops`` (any frees in it dropped) with each output freed as early as possible.

    Parameters
    ----------
    model : planner.model.Model
    ops : iterable of Op
        Forward and backward ops in execution order, and any ``pageout`` and
        ``pagein`` (SPEC section 5): a pageout reads the output, a pagein
        starts a new lifetime of it, as a forward does.

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
    after the forward that made it.  The sink's backward reads the sink's output
    (the loss does), so the sink's output is freed after that backward; a
    schedule that forwards the sink more than once cannot keep that rule, and
    the simulator rejects its lowering.
    """
    FREE = OpKind.FREE
    compute = [op for op in ops if op.kind is not FREE]
    return _free_when_ended(model, compute, _lifetime_ends(model, compute))


def _lifetime_ends(model, compute):
    """Which lifetimes of outputs end at each op of ``compute``: the backward scan of :func:`insert_frees`.

    Returns a list with one entry per op: None, the layer (an int) or layers (a
    list) whose current output lifetime is last read by that op (ints keep the
    garbage collector out of long runs).  A lifetime runs from a forward or
    pagein of a layer to its next one; a forward or pagein that nothing reads
    ends its own lifetime.
    """
    FORWARD, BACKWARD, PAGEIN = OpKind.FORWARD, OpKind.BACKWARD, OpKind.PAGEIN
    # The outputs a forward reads, and those a backward reads.  The loss reads the
    # sink's output until the sink's backward (SPEC section 3), so that backward
    # counts as a read of it, whatever ``needs_output`` says.
    reads_f, reads_b = model.tables.inputs, model.tables.backward_reads
    ends = [None] * len(compute)
    live_later = set()
    for index in range(len(compute) - 1, -1, -1):
        op = compute[index]
        i = op.layer
        end = None
        if op.kind is FORWARD:
            if i in live_later:
                live_later.discard(i)
            else:
                end = i
            used = reads_f[i]
        elif op.kind is BACKWARD:
            used = reads_b[i]
        elif op.kind is PAGEIN:
            if i in live_later:
                live_later.discard(i)
            else:
                end = i
            used = ()
        elif op.kind is OpKind.PAGEOUT:  # reads the output
            used = (i,)
        else:  # a backward record's op reads no output
            used = ()
        for j in used:
            if j not in live_later:
                live_later.add(j)
                if end is None:
                    end = j
                elif type(end) is int:
                    end = [end, j]
                else:
                    end.append(j)
        ends[index] = end
    return ends


def _free_when_ended(model, compute, ends):
    """``compute`` with each output freed after the op that ``ends`` says ends its lifetime.

    The forward pass of :func:`insert_frees`: an output that saved data still
    holds then (``model.saved_reads`` of a forward with save, until its
    backward) is freed right after the backward that releases the hold.
    """
    FORWARD, BACKWARD = OpKind.FORWARD, OpKind.BACKWARD
    holds = model.tables.holds
    hold = [0] * len(holds)
    blocked = set()
    result = []
    append = result.append
    for index, op in enumerate(compute):
        append(op)
        i = op.layer
        if op.kind is FORWARD:
            if op.save:
                for j in holds[i]:
                    hold[j] += 1
        elif op.kind is BACKWARD:
            for j in holds[i]:
                hold[j] -= 1
                if not hold[j] and j in blocked:
                    blocked.discard(j)
                    append(free(j))
        end = ends[index]
        if end is None:
            continue
        if type(end) is int:
            if hold[end]:
                blocked.add(end)
            else:
                append(free(end))
            continue
        for j in end:
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


def store_all_ops(model):
    """Every forward with save, then every backward: plain autograd's ops (before frees)."""
    return segments_to_ops(model, [(0, len(model.layers), STORE)])


def size_unit(model, *, with_input=True):
    """The gcd of every layer size of ``model`` (and of ``input_bytes`` unless ``with_input`` is
    false); 1 if all are 0.  Sizes divided by it are exact integers (milp's rows, dp's grid)."""
    unit = model.input_bytes if with_input else 0
    for layer in model.layers:
        for value in (layer.output_bytes, layer.saved_bytes, layer.workspace_forward, layer.workspace_backward):
            unit = math.gcd(unit, value)
    return unit or 1


def splitting_vertices(model, *, input_edges):
    """Layers ``v`` that no edge ``p -> c`` with ``p < v < c`` jumps over, in increasing order.

    Every path through the topological order then climbs through ``v``: of the
    layers up to ``v``, only ``v``'s output is read later.  With
    ``input_edges`` a layer reading the model input counts as an edge from
    position -1 (reforward's units); without, the input is not a layer output
    (chen-greedy's split points).  The sink is always one.

    Notes
    -----
    O(n + edges): a suffix minimum of each layer's earliest producer.
    """
    layers = model.layers
    cuts = []
    suffix_min = len(layers)  # min over c > v of the earliest producer of c
    for v in range(len(layers) - 1, -1, -1):
        if suffix_min >= v:
            cuts.append(v)
        layer = layers[v]
        producers = layer.inputs + ((-1,) if input_edges and layer.uses_input else ())
        suffix_min = min(suffix_min, min(producers, default=v))
    cuts.reverse()
    return cuts


def chain_segments_peak(model, starts, *, hold_inputs=False):
    """Exact peak of the segment schedule of a chain, without making its ops.

    The schedule is ``insert_frees(segments_to_ops(model, segments))`` where
    the segments start at ``starts`` and all but the last are recomputed.

    Parameters
    ----------
    model : planner.model.Model
        A chain.
    starts : sequence of int
        Increasing segment starts, beginning with 0.
    hold_inputs : bool, keyword-only
        The input of each recomputed segment is held until the backward of the
        segment's first layer, as ``torch.utils.checkpoint`` does (see
        :func:`hold_segment_inputs`), instead of being freed after its last read.

    Returns
    -------
    int
        The peak the simulator reports for that schedule.

    Notes
    -----
    O(n) numpy work.  Memory is added up phase by phase: the forward sweep
    (recomputed segments hold only their checkpoints and the running output,
    the stored segment what autograd keeps), then each segment's recomputation
    and backward above the checkpoints of the segments before it.  The tests
    check it against the simulator.
    """
    a = model.tables
    n = a.n
    out, saved = a.output_bytes, a.saved_bytes
    starts = np.asarray(starts, dtype=np.int64)
    stops = np.append(starts[1:], n)
    seg = np.zeros(n, dtype=np.int64)
    seg[starts[1:]] = 1
    seg = np.cumsum(seg)
    seg_start = starts[seg]
    seg_stop = stops[seg]
    last = len(starts) - 1
    recompute = seg != last
    idx = np.arange(n)

    ckpt = np.zeros(n, dtype=np.int64)
    ckpt[starts[1:] - 1] = out[starts[1:] - 1]
    cum_ckpt = np.concatenate(([0], np.cumsum(ckpt)))
    before = cum_ckpt[np.maximum(seg_start - 1, 0)]  # checkpoints of earlier segments

    same_next = np.zeros(n, dtype=bool)
    same_next[:-1] = seg[1:] == seg[:-1]
    next_in = np.zeros(n, dtype=bool)
    next_in[:-1] = a.needs_inputs[1:]
    kept = a.needs_output | (same_next & next_in)
    held = saved + np.where(kept, out, 0)
    cum_held = np.concatenate(([0], np.cumsum(held)))
    local = cum_held[idx] - cum_held[seg_start]

    has_in = seg_start >= 1
    in_out = np.where(has_in, out[np.maximum(seg_start - 1, 0)], 0)
    in_needed = a.needs_inputs[seg_start] | (hold_inputs & recompute)
    hold_f = np.where((idx == seg_start) | in_needed, in_out, 0)
    hold_b = np.where(in_needed, in_out, 0)
    prev_kept = np.zeros(n, dtype=bool)
    prev_kept[1:] = kept[:-1]
    running = np.where((idx > seg_start) & ~prev_kept, a.previous_output, 0)
    boundary = np.where(recompute, out[seg_stop - 1], 0)

    base, wsf = a.input_bytes, a.workspace_forward
    fwd_save = base + before + boundary + hold_f + local + running + out + saved + wsf
    bwd = (
        base + before + hold_b + local + saved + np.where(a.output_at_backward, out, 0) + out
        + a.previous_output + a.workspace_backward
    )
    sweep = base + cum_ckpt[np.maximum(idx - 1, 0)] + a.previous_output + out + wsf
    peak = max(int(fwd_save.max()), int(bwd.max()), base)
    if last > 0:
        peak = max(peak, int(sweep[recompute].max()))
    return peak


def hold_segment_inputs(ops, segments):
    """Keep each recomputed segment's input until the backward of its first layer.

    ``torch.utils.checkpoint`` holds a checkpointed segment's input (for the
    recomputation) until the backward of the segment's first layer, even when
    that layer's backward does not read it; :func:`insert_frees` frees it
    right after the recomputed forward.  This moves those frees.

    Parameters
    ----------
    ops : list of Op
        Lowered ops (frees included) of ``segments``.
    segments : sequence of (start, stop, mode)

    Returns
    -------
    list of Op
    """
    ops = list(ops)
    position = {}
    for k, op in enumerate(ops):
        if op.kind is OpKind.BACKWARD:
            position[op.layer] = k
    moves = []
    for start, _, mode in segments:
        if mode != RECOMPUTE or start == 0:
            continue
        back = position[start]
        # The recomputed forward of ``start`` is the last one before its backward.
        k = back - 1
        while not (ops[k].kind is OpKind.FORWARD and ops[k].layer == start):
            k -= 1
        for j in range(k + 1, back):
            if ops[j].kind is OpKind.FREE and ops[j].layer == start - 1:
                moves.append((j, back))
                break
    dropped = {j for j, _ in moves}
    after = {}
    for j, back in moves:
        after.setdefault(back, []).append(ops[j])
    result = []
    for k, op in enumerate(ops):
        if k not in dropped:
            result.append(op)
        result.extend(after.get(k, ()))
    return result


def fits_int64(model):
    """Whether every sum :func:`chain_segments_peak` forms fits numpy's int64."""
    layers = model.layers
    bound = (
        model.input_bytes
        + 3 * sum(x.output_bytes for x in layers)
        + sum(x.saved_bytes for x in layers)
        + max(x.workspace_forward for x in layers)
        + max(x.workspace_backward for x in layers)
    )
    return int64_safe(bound)
