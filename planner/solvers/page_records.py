"""``page-records``: dp-paging planned with more memory, then backward records paged out to fit.

A layer's record (its saved data, docs/format.md "Paging backward records") is
most of a training step's memory on convolutional models, and ``dp-paging``
can only page layer outputs.  This strategy plans ``dp-paging`` at budgets
between the given one and store-all's peak, and fits each plan into the given
budget by paging records out (:func:`page_records`): while the replay's peak is
above the budget, the largest record held at the peak whose forward is before
it and whose backward is after it is written out right after its forward,
released, and read back right before its backward.  With transfers beside
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
from planner.objective import check_time_budget
from planner.schedule import OpKind, drop_saved, pagein_saved, pageout_saved
from planner.simulate import simulate
from planner.solvers._overlap import overlap
from planner.solvers._persistent import check_levels
from planner.device import time_scale
from planner.solvers.dp_paging import _dp_paging, _energy_weights, dp_paging

__all__ = ["dp_page_records", "page_records"]

#: The budgets planned, as multiples of the given one (up to store-all's peak).
_SCALES = (1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0)


def page_records(model, ops, storage, budget):
    """``(ops, result)``: ``ops`` with records paged out until the peak fits ``budget``.

    Parameters
    ----------
    model : planner.model.Model
    ops : sequence of planner.schedule.Op
        A valid schedule without record ops.
    storage : planner.device.Storage
    budget : int

    Returns
    -------
    ops : list of Op
    result : planner.simulate.SimulationResult
        Of the returned ops; ``peak_bytes`` is above ``budget`` when no record
        held at the peak could be paged.

    Notes
    -----
    Greedy: one replay per paged record, O(n x ops).  A record is paged at
    most once (from its forward with save to its backward).
    """
    ops = list(ops)
    saved = [layer.saved_bytes for layer in model.layers]
    result = simulate(model, ops, storage=storage)
    paged = set()
    while result.valid and result.peak_bytes > budget:
        p = result.peak_index
        spans = _record_spans(ops)
        held = [i for i, (f, b) in spans.items() if f < p < b and i not in paged and saved[i] > 0]
        if not held:
            break
        i = max(held, key=lambda j: (saved[j], spans[j][1] - spans[j][0]))
        f, b = spans[i]
        trial = ops[: f + 1] + [pageout_saved(i), drop_saved(i)] + ops[f + 1 : b] + [pagein_saved(i)] + ops[b:]
        paged.add(i)
        attempt = simulate(model, trial, storage=storage)
        if attempt.valid and attempt.peak_bytes < result.peak_bytes:
            ops, result = trial, attempt
    return ops, result


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
    for scale in _SCALES:
        planned = min(int(budget * scale), top)
        try:  # at the budget itself, dp-paging's own answer (planned for the copy engine)
            ops = dp_paging(model, budget=budget, storage=storage, levels=levels, time_budget=time_budget,
                            **objective)[0] if scale == 1.0 else _dp_paging(model, planned, storage, levels,
                                                                             weights=weights)[0]
        except InfeasibleError as error:
            least = error.least_bytes if least is None else least
            continue
        ops, result = page_records(model, ops, storage, budget)
        if result.valid and result.peak_bytes <= budget:
            ops, result = overlap(model, ops, storage, budget)
            if result.step_time <= limit and (best is None or cost(result) < cost(best[1])):
                best = (ops, result, planned)
        if planned >= top:
            break
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
