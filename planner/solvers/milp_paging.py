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
from dataclasses import dataclass

import numpy as np

from planner.device import time_scale
from planner.errors import InfeasibleError, SolverBug
from planner.solvers._overlap import overlap
from planner.lowering import insert_frees, size_unit, store_all_ops
from planner.schedule import OpKind, backward, forward, pagein, pageout
from planner.simulate import simulate
from planner.solvers._highs import Status, check_time_limit, fit_budget, import_highs, solve_capped, timed_solve

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
        was kept).

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


@dataclass(frozen=True)
class _Sizes:
    """Sizes in units, and what each backward reads, holds and allocates."""

    out: list
    sv: list
    wsf: list
    wsb: list
    base: int
    sink: int
    cons: tuple
    maxcons: list
    reads: list  # outputs each backward reads (the sink's own included: the loss reads it)
    holders: list  # holders[i]: layers whose saved data holds i's output
    new_grads: list  # gradient bytes each backward allocates
    fresh_grads: list  # fresh gradient bytes each backward adds into held ones (its peak only)

    @classmethod
    def of(cls, model, unit):
        layers = model.layers
        n, sink, cons = len(layers), model.sink, model.consumers
        out = [l.output_bytes // unit for l in layers]
        maxcons = [max(x) if x else None for x in cons]
        reads, holders = [], [[] for _ in range(n)]
        for b, l in enumerate(layers):
            reads.append((set(l.inputs) if l.needs_inputs else set()) | ({b} if (l.needs_output or b == sink) else set()))
            for j in l.inputs if l.needs_inputs else ():
                holders[j].append(b)
            if l.needs_output:
                holders[b].append(b)
        new_grads, fresh_grads = ([g // unit for g in grads] for grads in model.reverse_order_gradients)
        return cls(
            out,
            [l.saved_bytes // unit for l in layers],
            [l.workspace_forward // unit for l in layers],
            [l.workspace_backward // unit for l in layers],
            model.input_bytes // unit,
            sink,
            cons,
            maxcons,
            reads,
            holders,
            new_grads,
            fresh_grads,
        )


class _Program:
    """The stage program of one model and storage (see :func:`milp_paging`, Notes).

    Columns are created by :meth:`_new`; a row is a dict ``{column: coef}``
    with a constant folded into its bounds.  :meth:`solve` runs HiGHS under a
    memory cap in units of :attr:`unit` bytes; :meth:`encode` and
    :meth:`decode` map schedules to variable values and back.
    """

    def __init__(self, model, storage, scale, weights=(1.0, 1.0), time_cap=None):
        self.model = model
        n = self.n = len(model)
        self.unit = size_unit(model)
        z = self.z = _Sizes.of(model, self.unit)
        self.stage_of = [n - i for i in range(n)]
        self.hi = [n - 1] + [n - t for t in range(1, n + 1)] + [-1]  # hi[t]: highest live layer
        self.lb, self.ub, self.integ, self.cost, self.time = [], [], [], [], []
        self.weights = weights
        self.rows, self.lo, self.up, self.mem_rows, self.u_defs = [], [], [], [], []
        self.S, self.R, self.C, self.I, self.O, self.F, self.U = {}, {}, {}, {}, {}, {}, {}
        self._variables(storage, scale)
        self._logic_rows(storage)
        self._stage0_rows()
        for t in range(1, n + 1):
            self._stage_rows(t)
        if time_cap is not None:  # recomputation plus transfers within the time budget
            self.rows.append({col: value for col, value in enumerate(self.time) if value})
            self.lo.append(-np.inf)
            self.up.append(time_cap)
        self._build()

    def _variables(self, storage, scale):
        layers, n, z = self.model.layers, self.n, self.z
        w_out = [storage.pageout_seconds(l.output_bytes) * scale for l in layers]
        w_in = [storage.pagein_seconds(l.output_bytes) * scale for l in layers]
        for i in range(n):
            for t in range(self.stage_of[i]):
                self.S[t, i] = self._new()
            self.O[0, i] = self._new(transfer=w_out[i])
        for t in range(1, n + 1):
            for i in range(self.hi[t] + 1):
                self.R[t, i] = self._new(compute=layers[i].forward)
                self.C[t, i] = self._new()
                self.I[t, i] = self._new(transfer=w_in[i])
                self.O[t, i] = self._new(transfer=w_out[i])
        self.peak = self._new(integer=False, high=np.inf)
        # The loss reads the sink's output: it stays from its forward to its backward.
        self.lb[self.C[1, z.sink]] = 1.0
        self.ub[self.I[1, z.sink]] = self.ub[self.O[0, z.sink]] = 0.0

    # Terms ((columns, constant), coefficient) of the quantities the rows combine.

    def _s(self, t, i):  # saved data of i at the end of stage t
        if t < 0:
            return {}, 0
        if t >= self.stage_of[i]:
            return {}, 1
        return {self.S[t, i]: 1}, 0

    def _r(self, t, i):  # forward of i in stage t
        return ({}, 1) if t == 0 else ({self.R[t, i]: 1}, 0)

    def _k(self, t, i):  # output of i present at the start of stage t (carried or paged in)
        if 1 <= t <= self.n and i <= self.hi[t]:
            return {self.C[t, i]: 1, self.I[t, i]: 1}, 0
        return {}, 0

    def _c(self, t, i):  # output of i carried into stage t
        if 1 <= t <= self.n and i <= self.hi[t]:
            return {self.C[t, i]: 1}, 0
        return {}, 0

    def _logic_rows(self, storage):
        """Saved data, paging, presence and hold rules."""
        s, r, k, c, row = self._s, self._r, self._k, self._c, self._row
        n, hi, z, O, I = self.n, self.hi, self.z, self.O, self.I
        for i in range(n):
            # saved data: made once, by a forward with save, kept until the backward
            for t in range(1, self.stage_of[i] + 1):
                row([(s(t - 1, i), 1), (s(t, i), -1)], high=0)
                row([(s(t, i), 1), (s(t - 1, i), -1), (r(t, i), -1)], high=0)
            # paging: out once, after a forward; in only what is out
            row([(({O[t, i]: 1}, 0), 1) for t in range(self.stage_of[i] + 1)], high=1)
            for t in range(1, self.stage_of[i] + 1):
                row([(({O[t, i]: 1}, 0), 1), (r(t, i), -1)], high=0)
                row([(({I[t, i]: 1}, 0), 1)] + [(({O[q, i]: 1}, 0), -1) for q in range(t)], high=0)
        for t in range(1, n + 1):
            for i in range(hi[t] + 1):
                row([(r(t, i), 1), (k(t, i), 1)], high=1)  # a forward or pagein needs it absent
                for j in self.model.layers[i].inputs:
                    row([(r(t, i), 1), (k(t, j), -1), (r(t, j), -1)], high=0)
                if i <= hi[t + 1]:
                    row([(c(t + 1, i), 1), (k(t, i), -1), (r(t, i), -1)], high=0)
            for j in z.reads[hi[t]]:
                row([(k(t, j), 1), (r(t, j), 1)], low=1)
        for i in range(n):
            for holder in z.holders[i]:
                for t in range(self.stage_of[holder]):
                    row([(c(t + 1, i), 1), (s(t, holder), -1)], low=0)
        if storage.bytes is not None:
            room = storage.bytes // self.unit
            for t in range(n + 1):
                row(
                    [(({O[q, i]: 1}, 0), z.out[i]) for i in range(hi[t] + 1) for q in range(min(t, self.stage_of[i]) + 1)],
                    high=room,
                )

    def _stage0_rows(self):
        """Memory of stage 0: every forward once, in order."""
        z = self.z
        for kk in range(self.n):
            terms = [(({}, z.base + z.out[kk] + z.wsf[kk]), 1)]
            terms += [(self._s(0, i), z.sv[i]) for i in range(kk + 1)]
            for i in range(kk):
                still_read = z.maxcons[i] is not None and z.maxcons[i] >= kk
                terms.append((({}, 1), z.out[i]) if still_read else (self._c(1, i), z.out[i]))
            self._cap(terms)

    def _stage_rows(self, t):
        """Frees and memory of stage ``t``: pageins, recomputations, the backward of ``hi[t]``."""
        s, r, k, c, row, z = self._s, self._r, self._k, self._c, self._row, self.z
        h = b = self.hi[t]
        after = [[] for _ in range(h + 1)]  # (F column, bytes) freed right after forward kk
        for i in range(h + 1):
            if i in z.reads[b]:
                continue  # freed after the backward unless carried
            later = [x for x in z.cons[i] if x <= h]
            total = [(c(t + 1, i), 1), (k(t, i), -1), (r(t, i), -1)]
            for kk in [i] + later:
                col = self.F[t, i, kk] = self._new()
                total.append((({col: 1}, 0), 1))
                for x in later:
                    if x > kk:
                        row([(({col: 1}, 0), 1), (r(t, x), 1)], high=1)
                after[kk].append((col, z.out[i]))
            row(total, low=0, high=0)
        grads = sum(z.out[j] for j in range(h + 1) if z.maxcons[j] is not None and z.maxcons[j] > h)
        level = [(({}, z.base + grads), 1)]
        level += [(k(t, i), z.out[i]) for i in range(h + 1)] + [(s(t - 1, i), z.sv[i]) for i in range(h + 1)]
        for kk in range(h + 1):
            level += [(r(t, kk), z.out[kk]), (s(t, kk), z.sv[kk]), (s(t - 1, kk), -z.sv[kk])]
            u = self.U[t, kk] = self._new(integer=False, high=np.inf)
            self.u_defs.append((u, level))
            row(level + [(({u: 1}, 0), -1)], low=0, high=0)
            self._cap([(({u: 1}, 0), 1), (r(t, kk), z.wsf[kk])])
            level = [(({u: 1}, 0), 1)] + [(({col: 1}, 0), -size) for col, size in after[kk]]
        self._cap(level + [(({}, z.new_grads[b] + z.fresh_grads[b] + z.wsb[b]), 1)])

    # ---- building ----------------------------------------------------------------------

    def _new(self, *, integer=True, compute=0.0, transfer=0.0, high=1.0):
        """A column; ``compute`` and ``transfer`` are its time (model units), weighted into its cost."""
        self.lb.append(0.0)
        self.ub.append(high)
        self.integ.append(1 if integer else 0)
        self.cost.append(compute * self.weights[0] + transfer * self.weights[1])
        self.time.append(compute + transfer)
        return len(self.lb) - 1

    def _row(self, terms, *, low=-np.inf, high=np.inf):
        """Add ``low <= sum(coef * term) <= high``; a term is ``((cols, const), coef)``."""
        coefs, const = {}, 0.0
        for (cols, value), coef in terms:
            const += coef * value
            for col, a in cols.items():
                coefs[col] = coefs.get(col, 0.0) + coef * a
        self.rows.append(coefs)
        self.lo.append(low - const)
        self.up.append(high - const)
        return len(self.rows) - 1

    def _cap(self, terms):
        self.mem_rows.append(self._row(terms + [(({self.peak: 1}, 0), -1)], high=0))

    def _build(self):
        from scipy.sparse import csr_array

        r, c, v = [], [], []
        for index, coefs in enumerate(self.rows):
            for col, a in coefs.items():
                if a:
                    r.append(index)
                    c.append(col)
                    v.append(a)
        self.A = csr_array((v, (r, c)), shape=(len(self.rows), len(self.lb)))
        self.lo, self.up = np.array(self.lo), np.array(self.up)
        self.lb, self.ub = np.array(self.lb), np.array(self.ub)
        self.integrality = np.array(self.integ)
        self.cost = np.array(self.cost)
        self.mem_rows = np.array(self.mem_rows, dtype=int)
        del self.rows

    # ---- solving -----------------------------------------------------------------------

    def solve(self, *, cap, time_limit, start=None):
        """HiGHS: least recomputation plus transfer within ``cap`` units (``start`` as incumbent),
        or with ``cap=None`` the least peak."""
        return solve_capped(self, self.cost, self.peak, cap=cap, time_limit=time_limit, start=start,
                            prefix="edgeplan-milp-paging-")

    # ---- schedules <-> variable values ---------------------------------------------------

    def decode(self, x):
        """The forward, backward, pageout and pagein ops of a solution (no frees)."""
        on = x > 0.5
        n, S, stage_of = self.n, self.S, self.stage_of

        def saved(t, i):
            return True if t >= stage_of[i] else (t >= 0 and bool(on[S[t, i]]))

        ops = []
        for i in range(n):
            ops.append(forward(i, saved(0, i)))
            if on[self.O[0, i]]:
                ops.append(pageout(i))
        for t in range(1, n + 1):
            h = self.hi[t]
            ops.extend(pagein(i) for i in range(h + 1) if on[self.I[t, i]])
            for i in range(h + 1):
                if on[self.R[t, i]]:
                    ops.append(forward(i, saved(t, i) and not saved(t - 1, i)))
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
        made = [None] * self.n
        for t, stage in enumerate(stages):
            for op in stage:
                i = op.layer
                if op.kind is OpKind.FORWARD:
                    if t > 0:
                        x[self.R[t, i]] = 1
                    if op.save:
                        if made[i] is not None:
                            return None
                        made[i] = t
                elif op.kind is OpKind.PAGEOUT:
                    x[self.O[t, i]] = 1
                elif op.kind is OpKind.PAGEIN:
                    x[self.I[t, i]] = 1
        for i in range(self.n):
            if made[i] is None or made[i] > self.stage_of[i]:
                return None
            for t in range(made[i], self.stage_of[i]):
                x[self.S[t, i]] = 1
        if not self._encode_frees(x, [op for stage in stages for op in stage], stages):
            return None
        for u, terms in self.u_defs:
            total = 0.0
            for (cols, const), coef in terms:
                total += coef * (const + sum(a * x[col] for col, a in cols.items()))
            x[u] = total
        x[self.peak] = cap
        values = self.A @ x
        if np.any(values < self.lo - 1e-6) or np.any(values > self.up + 1e-6):
            return None
        return x

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

    def _encode_frees(self, x, ops, stages):
        """Set C and F from the frees of the shared lowering; False if outside the space."""
        present, stage, seen, last_forward = set(), 0, 0, None
        starts = [sum(len(s) for s in stages[:t]) for t in range(1, self.n + 1)]
        for op in insert_frees(self.model, ops):
            if op.kind is OpKind.FREE:
                present.discard(op.layer)
                if stage >= 1 and last_forward is not None:
                    key = (stage, op.layer, last_forward)
                    if key not in self.F:
                        return False
                    x[self.F[key]] = 1
                continue
            while stage < self.n and starts[stage] == seen:
                stage += 1
                for i in present:
                    if (stage, i) not in self.C:
                        return False
                    x[self.C[stage, i]] = 1
                last_forward = None
            seen += 1
            if op.kind in (OpKind.FORWARD, OpKind.PAGEIN):
                present.add(op.layer)
            if op.kind is OpKind.FORWARD:
                last_forward = op.layer
            elif op.kind is OpKind.BACKWARD:
                last_forward = None
        return True


