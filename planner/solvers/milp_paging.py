"""``milp-paging``: recomputation and paging together for any DAG, by a mixed-integer program.

In the spirit of POET (Patil et al. 2022), on HiGHS through
``scipy.optimize.milp``.  The schedule is cut into stages: stage 0 runs every
forward once in topological order, each with or without save, each output
optionally paged out right after its forward; stage ``t = 1..n`` pages
outputs in, recomputes forwards (topological order, with or without save, a
recomputed output may be paged out right after its forward if it never was)
and runs the backward of layer ``n - t``.  Binary variables say what happens
where; the memory of every op is a linear expression in them, counted as the
simulator counts it with the shared lowering's frees (SPEC sections 3 and 5:
outputs, saved data, gradients and the fresh ones a backward adds into them,
holds, workspaces, the sink's output held until its backward).  The objective
is recomputation plus transfer time, or with the objective energy their joules
(each charged its power), optionally under a time budget: one more row bounds
the serial step time (compute plus every transfer, never less than the step
with transfers beside compute).
"""

import time

import numpy as np

from planner.device import time_scale
from planner.errors import InfeasibleError, SolverBug
from planner.lowering import insert_frees, store_all_ops
from planner.schedule import OpKind, backward, pagein, pageout
from planner.simulate import simulate
from planner.solvers._highs import Status, check_time_limit, fit_budget, import_highs, timed_solve
from planner.solvers._overlap import overlap
from planner.solvers._program import StageProgram, var

__all__ = ["milp_paging", "DEFAULT_TIME_LIMIT"]

DEFAULT_TIME_LIMIT = 60.0
_SCIPY_MISSING = "milp-paging needs scipy (HiGHS): pip install edgeplan[milp] (or edgeplan[all])"
# The strategies whose schedules are offered as starting incumbents.
_START_STRATEGIES = ("store-all", "page-all", "dp", "dp-paging", "chen-greedy", "reforward", "revolve", "sqrt-n")


def milp_paging(model, *, budget=None, storage, time_limit=None, warm_starts=(), others_least_bytes=None,
                power_w=None, time_budget=None):
    """Least compute-plus-transfer schedule (or least energy) within ``budget``, recomputing and paging.

    Parameters
    ----------
    model : planner.model.Model
        Any model (chain or DAG) whose ``time_unit`` is a time.
    budget : int or None, keyword-only
        Activation budget in bytes.  None: no limit (store-all).
    storage : planner.device.Storage, keyword-only
        Transfer figures and optional capacity.
    time_limit : float or None, keyword-only
        Seconds for the whole call (default 60).
    warm_starts : iterable of (str, ops), keyword-only
        Schedules other strategies found (the registry hands them in, as for
        ``milp``); those of the strategies in ``_START_STRATEGIES`` that fit
        are encoded and the best is HiGHS' starting incumbent.
    others_least_bytes : int or None, keyword-only
        The least budget another strategy is known to need, reported when
        the time runs out before the least-peak program is solved.
    power_w : float or None, keyword-only
        The objective energy: watts while computing; with the storage's
        ``transfer_power_w`` the program minimises joules.
    time_budget : float or None, keyword-only
        The most seconds a step may take: a constraint on the serial step
        time (compute plus every transfer); schedules above it are never
        returned.

    Returns
    -------
    ops : list of Op
        Forward, backward, pageout, pagein and free ops (the shared lowering's,
        the sink's output held until its backward).
    params : dict
        ``time_limit``, ``stages``, ``start`` (the strategy whose schedule
        was the starting incumbent, or null), ``proven_optimal`` (HiGHS proved
        that no schedule of the search space is cheaper, up to a relative gap
        of 1e-4; false on a timeout or when a start outside the search space
        was kept) and, when HiGHS ran at ``budget`` and found a schedule,
        ``gap``: its relative gap ``(objective - bound) / objective`` between
        that schedule's recomputation plus transfer time and HiGHS' best
        (dual) bound on it over the search space (the answer is at most that
        far from the bound).

    Raises
    ------
    InfeasibleError
        No schedule fits.  When HiGHS proves it, ``least_bytes`` is the
        simulated peak of the schedule of a second program that minimises the
        peak (milp-paging fits it; the least of its space when that program
        is solved in time), else another strategy's least budget; None when
        the time ran out before any schedule was found.
    ModelError
        The model's time unit is not a time.
    OptionError
        ``time_limit`` is not a positive finite number.

    Notes
    -----
    Search space: the stage order above (backwards in reverse topological
    order, one per stage), which holds every schedule of store-all, page-all
    on chains, segment checkpointing, revolve, ``dp`` and ``dp-paging``
    (their pageouts moved to right after the forward that made the output,
    which changes no memory; their pageins are at stage starts).

    Variables, per stage ``t`` and layer ``i`` whose backward has not run:
    ``R`` (forward of ``i``), ``S`` (``i``'s saved data exists at the end of
    ``t``), ``C`` (``i``'s output carried in from stage ``t - 1``), ``I``
    (paged in at the start of ``t``; the output is then present, ``K = C +
    I``), ``O`` (paged out after its forward in ``t``), ``F`` (freed right after
    the forward of ``k``, for ``k`` = ``i`` or a consumer) and a continuous
    running memory per forward.  Memory rows bound every op by the budget;
    a storage capacity bounds the paged bytes of every stage.  Sizes are
    divided by the gcd of every size, so coefficients are exact integers.
    The program never counts less than the simulator measures, and exactly
    as much for the encoding of any schedule of the space; the schedules of
    the other applicable strategies that fit are encoded and the best is
    HiGHS' starting incumbent, and the answer is never worse than the best
    of them (kept even when it is outside the space).

    Size: O(n (n + E)) variables and rows for n layers and E edges (about
    10,000 variables for a 50-layer chain); HiGHS' time is exponential in
    the worst case, bounded by ``time_limit``.

    References
    ----------
    Patil, Jain, Dong, Gonzalez, "POET: Training Neural Networks on Tiny
    Devices with Integrated Rematerialization and Paging", ICML 2022.
    Jain et al., "Checkmate: Breaking the Memory Wall with Optimal Tensor
    Rematerialization", MLSys 2020.
    """
    limit = _check_limit(time_limit)
    deadline = time.perf_counter() + limit
    scale = time_scale(model)
    weights, cost, slowest = _objective(model, storage, scale, power_w, time_budget)
    n = len(model)
    plain = store_all_ops(model)
    params = {"time_limit": limit, "stages": 0, "start": None, "proven_optimal": True}
    plain = insert_frees(model, plain)
    if budget is None or simulate(model, plain).peak_bytes <= budget:
        return plain, params
    import_highs(_SCIPY_MISSING)
    starts = _fitting_starts(model, budget, storage, warm_starts, cost, slowest)
    others_least = others_least_bytes
    form = _Program(model, storage, scale, weights, None if time_budget is None else slowest - model.baseline_compute)
    params["stages"] = n
    best = (starts[0][0], starts[0][1], False, starts[0][2]) if starts else None
    fit = fit_budget(
        form, budget=budget, starts=starts, deadline=deadline, margin=0.1, measure=lambda x: _measure(form, storage, x)
    )
    params["start"] = fit.start
    if fit.gap is not None:
        params["gap"] = fit.gap
    if fit.ops is None and fit.status == Status.INFEASIBLE and best is None and time_budget is not None:
        raise InfeasibleError(
            f"milp-paging: no schedule fits {budget} bytes of activation memory within the time budget of "
            f"{time_budget:g} s", least_bytes=None,
        )
    if fit.ops is None and fit.status == Status.INFEASIBLE and best is None:
        least = _least_peak(form, storage, deadline, others_least)
        raise InfeasibleError(
            f"milp-paging: no schedule fits {budget} bytes of activation memory"
            + ("" if least is None else f"; the least it reaches is {least} bytes"),
            least_bytes=least,
        )
    if fit.ops is not None and fit.result.step_time <= slowest:
        total = cost(fit.result)
        if best is None or total <= best[0] * (1 + 1e-12):
            best = (total, fit.ops, fit.status == Status.OPTIMAL, "milp")
    if best is None:
        raise InfeasibleError(
            f"milp-paging: no schedule fitting {budget} bytes found within the time limit of "
            f"{limit:g} s (try a longer --time-limit)",
            least_bytes=None,
        )
    params["proven_optimal"] = bool(best[2])
    if best[3] != "milp":
        params["kept"] = best[3]
    if power_w is not None:
        params["objective"] = "energy"
    if time_budget is not None:
        params["time_budget_s"] = time_budget
    ops, _ = overlap(model, best[1], storage, budget)  # a no-op unless transfers overlap compute
    return ops, params


def _least_peak(form, storage, deadline, others_least):
    """The least budget milp-paging is known to fit: the simulated peak of the least-peak program.

    Falls back to ``others_least`` (another strategy's least budget) when the
    time runs out first; None when neither is known.
    """
    res = timed_solve(form, deadline, margin=0.1, cap=None)
    if res is None:
        return others_least
    if res.x is None:  # pragma: no cover - store-all is a solution; only a timeout gets here
        return others_least
    return _measure(form, storage, res.x)[1].peak_bytes


def _measure(form, storage, x):
    """The ops of solution ``x`` (the shared lowering's frees) and their simulation."""
    ops = insert_frees(form.model, form.decode(x))
    result = simulate(form.model, ops, storage=storage)
    if not result.valid:  # pragma: no cover - would be a formulation bug
        raise SolverBug(f"milp-paging decoded an invalid schedule: {result.error}")
    return ops, result


def _check_limit(time_limit):
    return check_time_limit(time_limit, DEFAULT_TIME_LIMIT)


def _objective(model, storage, scale, power_w, time_budget):
    """``(weights, cost, slowest)``: the program's weights of compute and transfer time, the cost of a
    simulation (its step time, or its joules up to a constant factor), and the most step time allowed
    in the model's unit."""
    from planner.errors import OptionError
    from planner.objective import check_time_budget

    if time_budget is not None:
        check_time_budget(time_budget)
    slowest = float("inf") if time_budget is None else time_budget * scale * (1 + 1e-9)
    if power_w is None:
        return (1.0, 1.0), (lambda result: result.step_time), slowest
    if not (isinstance(power_w, (int, float)) and power_w > 0) or storage.transfer_power_w is None:
        raise OptionError("the objective energy needs power_w (watts, > 0) and the storage's transfer_power_w")
    weights = (float(power_w), float(storage.transfer_power_w))
    return weights, (lambda result: result.compute * weights[0] + result.transfer * weights[1]), slowest


def _fitting_starts(model, budget, storage, warm_starts, cost, slowest):
    """The warm starts ``[(cost, ops, name)]`` of ``_START_STRATEGIES`` that fit (and take at most
    ``slowest``), least ``cost`` first.

    Each is measured again with the sink's output held until its backward
    (SPEC section 3), as the program counts it.
    """
    offered = {name: ops for name, ops in warm_starts if name in _START_STRATEGIES}
    found = []
    for name in _START_STRATEGIES:
        if name not in offered:
            continue
        ops = insert_frees(model, offered[name])
        result = simulate(model, ops, storage=storage)
        if result.valid and result.peak_bytes <= budget and result.step_time <= slowest:
            found.append((cost(result), ops, name))
    found.sort(key=lambda item: item[0])
    return found


class _Program(StageProgram):
    """The stage program of one model and storage (see :func:`milp_paging`, Notes).

    Built on :class:`~planner.solvers._program.StageProgram` (one backward per
    stage: the layout, the shared rows, HiGHS); milp-paging's own families are
    its paging variables and rows, its frees and the storage capacity.
    :meth:`solve` runs HiGHS under a memory cap in units of :attr:`unit`
    bytes; :meth:`encode` and :meth:`decode` map schedules to variable values
    and back.
    """

    prefix = "edgeplan-milp-paging-"

    def __init__(self, model, storage, scale, weights=(1.0, 1.0), time_cap=None):
        n = len(model)
        super().__init__(model, [[b] for b in range(n - 1, -1, -1)])
        self.I, self.O = {}, {}
        self.weights = weights  # (compute, transfer): what a unit of each time costs
        self.time = {}  # column -> its compute plus transfer time (model units)
        self._variables(storage, scale)
        self._logic_rows(storage)
        self.stage0_rows()
        for t in range(1, n + 1):
            self._stage_rows(t)
        if time_cap is not None:  # recomputation plus transfers within the time budget
            self.row([((tuple(self.time.items()), 0), 1)], high=time_cap)
        self.build()

    def _variables(self, storage, scale):
        """The columns, and the objective: the weighted recomputation and transfer time of R, I and O."""
        layers, n, new = self.model.layers, self.n, self._column
        w_out = [storage.pageout_seconds(l.output_bytes) * scale for l in layers]
        w_in = [storage.pagein_seconds(l.output_bytes) * scale for l in layers]
        for i in range(n):
            for t in range(self.stage_of[i]):
                self.S[t, i] = new()
            self.O[0, i] = new(transfer=w_out[i])
        for t in range(1, n + 1):
            for i in range(self.hi[t] + 1):
                self.R[t, i] = new(compute=layers[i].forward)
                self.C[t, i] = new()
                self.I[t, i] = new(transfer=w_in[i])
                self.O[t, i] = new(transfer=w_out[i])
        self.peak_col = self.new(integer=False, high=np.inf)
        # The loss reads the sink's output: it stays from its forward to its backward.
        sink = self.sink
        self.lb[self.C[1, sink]] = 1.0
        self.ub[self.I[1, sink]] = self.ub[self.O[0, sink]] = 0.0

    def _column(self, *, compute=0.0, transfer=0.0):
        """A binary column; ``compute`` and ``transfer`` are its time (model units), weighted into its
        cost (the objective) and counted in the time budget's row."""
        col = self.new(cost=compute * self.weights[0] + transfer * self.weights[1])
        if compute + transfer:
            self.time[col] = compute + transfer
        return col

    def _k(self, t, i):  # output of i present at the start of stage t (carried or paged in)
        if 1 <= t <= self.n and i <= self.hi[t]:
            return ((self.C[t, i], 1), (self.I[t, i], 1)), 0
        return (), 0

    def _logic_rows(self, storage):
        """Saved data, paging, presence and hold rules, and the storage's capacity."""
        r, row = self._r, self.row
        n, hi, O, I = self.n, self.hi, self.O, self.I
        for i in range(n):
            self.saved_rows(i)
            # paging: out once, after a forward; in only what is out
            row([(var(O[t, i]), 1) for t in range(self.stage_of[i] + 1)], high=1)
            for t in range(1, self.stage_of[i] + 1):
                row([(var(O[t, i]), 1), (r(t, i), -1)], high=0)
                row([(var(I[t, i]), 1)] + [(var(O[q, i]), -1) for q in range(t)], high=0)
        for t in range(1, n + 1):
            self.presence_rows(t)
        self.hold_rows()
        if storage.bytes is not None:
            room = storage.bytes // self.unit
            for t in range(n + 1):
                row(
                    [(var(O[q, i]), self.out[i]) for i in range(hi[t] + 1) for q in range(min(t, self.stage_of[i]) + 1)],
                    high=room,
                )

    def _stage_rows(self, t):
        """Frees and memory of stage ``t``: pageins, recomputations, the backward of ``hi[t]``."""
        r, k, c, row = self._r, self._k, self._c, self.row
        h = b = self.hi[t]
        after = [[] for _ in range(h + 1)]  # (F column, bytes) freed right after forward kk
        for i in range(h + 1):
            if i in self.reads[b]:
                continue  # freed after the backward unless carried
            later = [x for x in self.consumers[i] if x <= h]
            total = [(c(t + 1, i), 1), (k(t, i), -1), (r(t, i), -1)]
            for kk in [i] + later:
                col = self.F[t, i, kk] = self.new()
                total.append((var(col), 1))
                for x in later:
                    if x > kk:
                        row([(var(col), 1), (r(t, x), 1)], high=1)
                after[kk].append((col, self.out[i]))
            row(total, low=0, high=0)
        self.stage_memory_rows(t, after)

    # ---- schedules <-> variable values ---------------------------------------------------

    def decode(self, x):
        """The forward, backward, pageout and pagein ops of a solution (no frees)."""
        on = x > 0.5
        ops = []
        for i in range(self.n):
            ops.append(self.forward_of(on, 0, i))
            if on[self.O[0, i]]:
                ops.append(pageout(i))
        for t in range(1, self.n + 1):
            h = self.hi[t]
            ops.extend(pagein(i) for i in range(h + 1) if on[self.I[t, i]])
            for i in range(h + 1):
                if on[self.R[t, i]]:
                    ops.append(self.forward_of(on, t, i))
                    if on[self.O[t, i]]:
                        ops.append(pageout(i))
            ops.append(backward(h))
        return ops

    def encode(self, ops, cap):
        """Variable values of a schedule, or None if it is outside the search space or above ``cap``."""
        stages = self._stages([op for op in ops if op.kind is not OpKind.FREE])
        if stages is None:
            return None
        x = np.zeros(len(self.lb))
        if not self.encode_forwards(x, stages):
            return None
        for t, stage in enumerate(stages):
            for op in stage:
                if op.kind is OpKind.PAGEOUT:
                    x[self.O[t, op.layer]] = 1
                elif op.kind is OpKind.PAGEIN:
                    x[self.I[t, op.layer]] = 1
        first_op = [None] + [sum(len(s) for s in stages[:t]) for t in range(1, self.n + 1)]
        if not self.encode_carried(x, [op for stage in stages for op in stage], first_op):
            return None
        self.set_running(x)
        return self.fit(x, cap)

    def _stages(self, ops):
        """Split ops into stage 0 and the n backward stages, pageouts moved after their forward.

        None if the ops do not have the program's form.
        """
        n = self.n
        stages = [[] for _ in range(n + 1)]
        t, last = 0, -1  # stage, last forward layer in it
        pending = []  # pageouts to place
        where = {}  # layer -> (stage, index in stage) of the forward that made its current copy
        for op in ops:
            kind, i = op.kind, op.layer
            if kind is OpKind.PAGEOUT:
                if i not in where:
                    return None  # its copy came from a pagein: already paged
                pending.append((where[i], op))
                continue
            if t == 0 and kind is OpKind.FORWARD and i == last + 1:
                where[i] = (0, len(stages[0]))
                stages[0].append(op)
                last = i
                if i == n - 1:
                    t, last = 1, -1
                continue
            if t == 0 or t > n:
                return None
            if kind is OpKind.PAGEIN:
                if last >= 0:
                    return None  # pageins only at the start of a stage
                where.pop(i, None)
                stages[t].append(op)
            elif kind is OpKind.FORWARD:
                if i <= last or i > self.hi[t]:
                    return None
                where[i] = (t, len(stages[t]))
                stages[t].append(op)
                last = i
            else:
                if i != self.hi[t]:
                    return None
                stages[t].append(op)
                t, last = t + 1, -1
        if t != n + 1:
            return None
        for (t, index), op in sorted(pending, key=lambda item: item[0], reverse=True):
            stages[t].insert(index + 1, op)
        return stages
