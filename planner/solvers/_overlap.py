"""Paging schedules for a copy engine beside compute (``edgeplan-schedule/3``).

Not a strategy.  With overlapped transfers (:mod:`planner.timing`) a pagein
issued right before the op that reads it makes compute wait for all of it,
and a free right after a pageout waits for the write.  :func:`overlap` moves
each pagein earlier and each such free later, one position at a time, while
the schedule stays valid, within the budget, and the step's time drops: the
memory a transfer holds is traded for time it hides behind compute.  Backward
records are treated alike: each ``pagein_saved`` moves earlier and each
``drop_saved`` later.
"""

from planner.schedule import RECORD_KINDS, OpKind
from planner.simulate import simulate

__all__ = ["overlap"]

#: How far (in ops) one pagein or free is moved at most.
_REACH = 48

#: The ops of the same layer an output op (False) or a record op (True) is never moved past.
_FENCES = {
    False: frozenset(OpKind) - {OpKind.FORWARD} - RECORD_KINDS,
    True: RECORD_KINDS | {OpKind.BACKWARD},
}


def overlap(model, ops, storage, budget):
    """``(ops, result)``: ``ops`` with pageins hoisted and frees after pageouts delayed.

    Parameters
    ----------
    model : planner.model.Model
    ops : sequence of planner.schedule.Op
        A valid schedule.
    storage : planner.device.Storage
        With ``overlap`` (else ``ops`` come back unchanged).
    budget : int or None
        Activation budget in bytes; None: unlimited.

    Returns
    -------
    ops : list of Op
    result : planner.simulate.SimulationResult
        Of the returned ops.  Its step's time is never above that of ``ops``.

    Notes
    -----
    Greedy, one op at a time in schedule order, each placed where the step's
    time is least (the nearest such place on ties); every try is one replay,
    so O(paging ops x reach x ops).  Once the step takes no longer than its
    compute, no move can gain and the pass stops (:func:`_hidden`).
    """
    ops = list(ops)
    best = simulate(model, ops, storage=storage)
    if storage is None or not storage.overlap or not best.pages:
        return ops, best
    limit = float("inf") if budget is None else budget
    paged_out = set()
    i = 0
    while i < len(ops) and not _hidden(best, len(ops)):
        op = ops[i]
        if op.kind is OpKind.PAGEOUT:
            paged_out.add(op.layer)
        if op.kind is OpKind.PAGEIN or op.kind is OpKind.PAGEIN_SAVED:
            ops, best, i = _move(model, ops, best, i, -1, storage, limit)
        elif op.kind is OpKind.DROP_SAVED:
            ops, best, _ = _move(model, ops, best, i, +1, storage, limit)
        elif op.kind is OpKind.FREE and op.layer in paged_out:
            paged_out.discard(op.layer)
            ops, best, _ = _move(model, ops, best, i, +1, storage, limit)
        i += 1
    return ops, best


def _move(model, ops, best, i, step, storage, limit):
    """Try op ``i`` at ``i + step``, ``i + 2 step``, ...; keep the fastest place."""
    op = ops[i]
    rest = ops[:i] + ops[i + 1 :]
    chosen = (ops, best, i)
    for d in range(1, _REACH + 1):
        q = i + step * d if step < 0 else i + d  # the index in ``rest`` to insert at
        if q < 0 or q > len(rest):
            break
        other = rest[q - 1] if step > 0 else rest[q]
        if other.layer == op.layer and other.kind in _FENCES[op.kind in RECORD_KINDS]:
            break  # never past another op on the same output or record (or its backward)
        trial = rest[:q] + [op] + rest[q:]
        result = simulate(model, trial, storage=storage)
        if not result.valid or result.peak_bytes > limit:
            break
        if result.step_time < chosen[1].step_time * (1 - 1e-12):
            chosen = (trial, result, q)
            if _hidden(result, len(trial)):
                break
    return chosen


def _hidden(result, n_ops):
    """Whether no move can make ``result``'s step faster: it takes no longer than its compute.

    No step is shorter than its compute (planner.timing), which moving a
    transfer or a free does not change; the step's time is summed op by op,
    so it may fall below the exact sum ``compute`` by ``n_ops`` roundings,
    which the margin covers, and a move is kept only if it gains a relative
    1e-12.
    """
    return result.step_time * (1 - 1e-12) <= result.compute * (1 - 2.3e-16 * n_ops)
