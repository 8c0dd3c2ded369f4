"""``page-records``: dp-paging planned with more memory, then backward records paged out to fit.

A layer's record (its saved data, docs/format.md "Paging backward records") is
most of a training step's memory on convolutional models, and ``dp-paging``
can only page layer outputs.  This strategy plans ``dp-paging`` at budgets
between the given one and store-all's peak, and fits each plan into the given
budget by paging records out (:func:`page_records`): while the replay's peak is
above the budget, the largest record held at the peak whose forward is before
it and whose backward is after it is written out right after its forward,
released, and read back right before its backward.  Where that cannot fit a
plan, the outputs those records pinned are paged too (docs/format.md: a
dropped record no longer pins them); the strategy uses such plans only where
records alone fit none (see docs/paging.md for why).  With transfers beside
compute the releases then move later and the reads earlier while the plan fits
and the step's time drops (:func:`planner.solvers._overlap.overlap`).  The
fastest plan that fits is kept; the plan at the budget itself (``dp-paging``'s)
is one of them, so this is never slower than ``dp-paging`` on the device's
timeline.  With the objective energy (``power_w``) the plans are dp-paging's
least-energy ones and the plan with the least joules is kept (never more than
``dp-paging``'s, for the same reason); a time budget keeps only plans within it.
"""

from planner.errors import InfeasibleError
from planner.model import chains_only
from planner.objective import TimeBudgetError, check_time_budget
from planner.schedule import (
    OpKind,
    drop_saved,
    free,
    pagein,
    pagein_saved,
    pageout,
    pageout_saved,
)
from planner.simulate import simulate
from planner.solvers._overlap import overlap
from planner.solvers._persistent import check_levels
from planner.device import time_scale
from planner.solvers.dp_paging import _dp_paging, _energy_weights, dp_paging

__all__ = ["dp_page_records", "page_records"]

#: The budgets planned, as multiples of the given one (up to store-all's peak).
_SCALES = (1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0)


def page_records(model, ops, storage, budget, *, outputs=True):
    """``(ops, result)``: ``ops`` with records paged out until the peak fits ``budget``.

    Parameters
    ----------
    model : planner.model.Model
    ops : sequence of planner.schedule.Op
        A valid schedule without record ops.
    storage : planner.device.Storage
    budget : int
    outputs : bool, keyword-only
        Page the outputs that paged records no longer pin too, where records
        alone do not fit (default True).

    Returns
    -------
    ops : list of Op
    result : planner.simulate.SimulationResult
        Of the returned ops; ``peak_bytes`` is above ``budget`` when no record
        held at the peak could be paged.

    Notes
    -----
    Greedy, the largest first: a record held at the peak (from its forward
    with save to its backward); then, if records alone do not fit, also an
    output held at the peak that no record in memory pins any more (its records paged out: docs/format.md, "Paging
    backward records") between its last read before the peak and its next
    read after it, which is paged out and freed after that read and paged in
    before the next (or only freed there if nothing reads it again).  One
    replay per try, O(n x ops).  A record is paged at most once.
    """
    ops = list(ops)
    result = simulate(model, ops, storage=storage)
    paged = set()
    ops, result = _fit(model, ops, result, storage, budget, paged, outputs=False)
    if outputs and result.valid and result.peak_bytes > budget:  # records alone do not fit: outputs too
        ops, result = _fit(model, ops, result, storage, budget, paged, outputs=True)
    return ops, result


def _fit(model, ops, result, storage, budget, paged, *, outputs):
    """The greedy of :func:`page_records`, with or without outputs; adds the paged records to ``paged``."""
    saved = [layer.saved_bytes for layer in model.layers]
    out = [layer.output_bytes for layer in model.layers]
    tried = set()
    while result.valid and result.peak_bytes > budget:
        p = result.peak_index
        spans = _record_spans(ops)
        held = [(saved[i], spans[i][1] - spans[i][0], "record", i) for i, (f, b) in spans.items()
                if f < p < b and i not in paged and saved[i] > 0]
        if outputs:
            for j, (after, until, pins) in _output_gaps(model, ops, p).items():
                if (j, after, until) not in tried and all(i in spans and i not in paged for i in pins):
                    held.append((out[j] + sum(saved[i] for i in pins), until - after, "output", j))
        if not held:
            break
        _, _, what, i = max(held)
        if what == "record":
            paged.add(i)
            trials = [_record_trial(ops, i, spans[i])]
        else:
            after, until, pins = _output_gaps(model, ops, p)[i]
            tried.add((i, after, until))
            trials = _output_trials(model, ops, p, i, pins)
        for trial in trials:
            attempt = simulate(model, trial, storage=storage)
            if attempt.valid and attempt.peak_bytes < result.peak_bytes:
                ops, result = trial, attempt
                if what == "output":
                    paged.update(pins)
                break
    return ops, result


def _record_trial(ops, i, span):
    """``ops`` with layer ``i``'s record written and dropped after its forward, read before its backward."""
    f, b = span
    return ops[: f + 1] + [pageout_saved(i), drop_saved(i)] + ops[f + 1 : b] + [pagein_saved(i)] + ops[b:]


def _output_gaps(model, ops, p):
    """``{j: (after, until, pins)}``: outputs in memory at op ``p`` that can leave it around ``p``.

    ``after`` is where the last op before ``p`` that makes or reads ``j`` ends (the
    record ops right after it included: a record dropped there no longer pins);
    ``until`` the index of the first op after ``p`` that reads or frees ``j``;
    ``pins`` the records in memory at ``p`` that read ``j`` (they must be paged
    too).  The sink's output is never one (the loss reads it).
    """
    layers, reads = model.layers, model.saved_reads
    in_a, in_s, last = set(), set(), {}
    for k, op in enumerate(ops[: p + 1]):
        kind, i = op.kind, op.layer
        if kind is OpKind.FORWARD:
            in_a.add(i)
            last[i] = k
            for j in layers[i].inputs:
                last[j] = k
            if op.save:
                in_s.add(i)
        elif kind is OpKind.BACKWARD:
            in_s.discard(i)
        elif kind is OpKind.FREE:
            in_a.discard(i)
        elif kind is OpKind.PAGEIN or kind is OpKind.PAGEOUT:
            in_a.add(i)
            last[i] = k
        elif kind is OpKind.DROP_SAVED:
            in_s.discard(i)
        elif kind is OpKind.PAGEIN_SAVED:
            in_s.add(i)
    gaps = {}
    for j in in_a - {model.sink}:
        if last.get(j, p) >= p:
            continue
        after = last[j] + 1
        while after < p and ops[after].kind in (OpKind.PAGEOUT_SAVED, OpKind.DROP_SAVED):
            after += 1
        until = next((k for k in range(p + 1, len(ops)) if _touches(model, ops[k], j)), None)
        if until is not None:
            gaps[j] = (after, until, sorted(i for i in in_s if j in reads[i]))
    return gaps


def _touches(model, op, j):
    """Whether ``op`` reads output ``j`` or frees it."""
    kind, i = op.kind, op.layer
    if kind is OpKind.FORWARD:
        return j in model.layers[i].inputs
    if kind is OpKind.BACKWARD:
        return j in model.saved_reads[i] or (i == j == model.sink)
    return i == j and kind in (OpKind.FREE, OpKind.PAGEOUT)


def _output_trials(model, ops, p, j, pins):
    """``ops`` with output ``j`` out of memory around op ``p``, the records in ``pins`` paged first.

    Paged out after its last read and paged in before its next; only freed
    there if nothing reads it again, or (a second try) if it is already in
    storage.  Empty if it cannot leave memory before ``p``.
    """
    for i in pins:
        ops = _record_trial(ops, i, _record_spans(ops)[i])
        p += 2  # two record ops before the peak's op, one after
    gap = _output_gaps(model, ops, p).get(j)
    if gap is None or gap[2] or gap[0] > p:
        return []
    after, until, _ = gap
    if ops[until].kind is OpKind.FREE:  # nothing reads it again: free it earlier
        return [ops[:after] + [free(j)] + ops[after:until] + ops[until + 1 :]]
    middle = ops[after:until] + [pagein(j)] + ops[until:]
    return [ops[:after] + [pageout(j), free(j)] + middle, ops[:after] + [free(j)] + middle]


def _record_spans(ops):
    """``{layer: (index of its forward with save, index of its backward)}``, records never paged."""
    forwards, spans, touched = {}, {}, set()
    for k, op in enumerate(ops):
        if op.kind is OpKind.FORWARD and op.save:
            forwards[op.layer] = k
        elif op.kind is OpKind.BACKWARD and op.layer in forwards:
            spans[op.layer] = (forwards[op.layer], k)
        elif op.kind is OpKind.PAGEOUT_SAVED:
            touched.add(op.layer)
    return {i: span for i, span in spans.items() if i not in touched}


@chains_only("page-records")
def dp_page_records(model, *, budget=None, storage, levels=500, power_w=None, time_budget=None):
    """The fastest (or least-energy) of dp-paging's plans at larger budgets, fitted by paging records.

    Parameters
    ----------
    model : planner.model.Model
        A chain whose ``time_unit`` is a time.
    budget : int or None, keyword-only
        Activation budget in bytes; None: store-all (nothing to page).
    storage : planner.device.Storage, keyword-only
    levels : int, keyword-only
        ``dp-paging``'s memory grid (its ``levels``).
    power_w : float or None, keyword-only
        The objective energy, as for :func:`~planner.solvers.dp_paging.dp_paging`:
        the least joules instead of the least time.
    time_budget : float or None, keyword-only
        Seconds a step may take at most: plans above it are dropped (at the
        budget itself, dp-paging's own search under it).

    Returns
    -------
    ops : list of Op
        Forward, backward, free and paging ops, records' included.
    params : dict
        ``planned_bytes`` (the budget dp-paging planned the chosen schedule
        with), ``records`` (the layers whose record is paged out) and
        ``paged`` (the layers whose output is paged out).

    Raises
    ------
    NotApplicableError
        The model is not a chain.
    InfeasibleError
        No plan fits, even with every record held at the peak paged out (or
        within the time budget).
    """
    check_levels(levels)
    if time_budget is not None:
        check_time_budget(time_budget)
    objective = {} if power_w is None else {"power_w": power_w}
    if budget is None:
        ops, params = dp_paging(model, budget=None, storage=storage, levels=levels, time_budget=time_budget,
                                **objective)
        return ops, dict(params, planned_bytes=None, records=[])
    weights = (1.0, 1.0) if power_w is None else _energy_weights(model, storage, power_w)
    limit = float("inf") if time_budget is None else time_budget * time_scale(model) * (1 + 1e-9)

    def cost(result):  # what is minimised: time, or joules
        return result.step_time if power_w is None else result.compute * weights[0] + result.transfer * weights[1]

    top = simulate(model, _dp_paging(model, None, None, levels)[0]).peak_bytes
    best = None
    least = None
    fastest = None  # the fastest plan that fits the memory, for a time budget none meets
    # Outputs are paged only where records alone fit no plan (the executor's measured peak of
    # plans paging pinned outputs is not yet within 2% of the prediction: docs/paging.md).
    for outputs in (False, True):
        for scale in _SCALES:
            planned = min(int(budget * scale), top)
            try:  # at the budget itself, dp-paging's own answer (planned for the copy engine)
                ops = dp_paging(model, budget=budget, storage=storage, levels=levels, time_budget=time_budget,
                                **objective)[0] if scale == 1.0 else _dp_paging(model, planned, storage, levels,
                                                                                 weights=weights)[0]
            except InfeasibleError as error:
                least = error.least_bytes if least is None else least
                continue
            ops, result = page_records(model, ops, storage, budget, outputs=outputs)
            if result.valid and result.peak_bytes <= budget:
                ops, result = overlap(model, ops, storage, budget)
                fastest = result.step_time if fastest is None else min(fastest, result.step_time)
                if result.step_time <= limit and (best is None or cost(result) < cost(best[1])):
                    best = (ops, result, planned)
            if planned >= top:
                break
        if best is not None:
            break
    if best is None and fastest is not None:  # the memory fits; the time budget is what is short
        raise TimeBudgetError(
            f"page-records: no plan found within the time budget of {time_budget:g} s; the fastest that fits "
            f"{budget} bytes takes {fastest / time_scale(model):.6g} s",
            seconds=fastest / time_scale(model),
        )
    if best is None:
        raise InfeasibleError(
            f"no dp-paging plan fits {budget} bytes with its backward records paged out"
            + ("" if time_budget is None else f" within the time budget of {time_budget:g} s"),
            least_bytes=least,
        )
    ops, result, planned = best
    names = [layer.name for layer in model.layers]
    params = {
        "planned_bytes": planned,
        "records": [names[op.layer] for op in ops if op.kind is OpKind.PAGEOUT_SAVED],
        "paged": [names[op.layer] for op in ops if op.kind is OpKind.PAGEOUT],
    }
    if power_w is not None:
        params["objective"] = "energy"
    if time_budget is not None:
        params.update(time_budget_s=time_budget, time_budget_method="lagrangian")  # a heuristic
    return ops, params
