"""``milp``: exact checkpointing for any DAG by mixed-integer linear programming.

In the spirit of Checkmate (Jain et al. 2020): the schedule is cut into
stages; binary variables say which layer is (re)computed in which stage, when
each layer's saved data is made, which outputs are kept from one stage to the
next and after which op each output is freed; the memory of every op is a
linear expression in them.  The model follows edgeplan's semantics (SPEC
section 3) exactly: outputs, saved data, gradients (the sink's included, and
the fresh gradient a backward makes for an input another consumer's backward
already gave one), the holds that saved data puts on the tensors its backward
reads, the sink's output kept until the sink's backward (the loss reads it),
workspaces and the model input.  The frees are the shared lowering's
(:func:`planner.lowering.insert_frees`, as early as possible), and for every
schedule of the search space the formulation counts exactly the memory the
simulator measures.  HiGHS, through ``scipy.optimize.milp``, minimises the
recomputation.
"""

import time

import numpy as np

from planner.errors import InfeasibleError
from planner.lowering import insert_frees, store_all_ops
from planner.schedule import OpKind, backward
from planner.simulate import simulate
from planner.solvers._highs import Fit, Status, check_time_limit, fit_budget, import_highs, timed_solve
from planner.solvers._program import Expr, StageProgram, var

__all__ = ["milp", "DEFAULT_TIME_LIMIT"]

DEFAULT_TIME_LIMIT = 60.0

# The program has about 2.5 T n variables for T stages and n layers.  Every
# backward gets a stage of its own (T = n, the search space of milp's Notes)
# while n^2 <= _STAGE_WORK; above, consecutive backwards share stages:
# T = max(_MIN_STAGES, _STAGE_WORK // n), about 12,500 variables.
_STAGE_WORK = 5000
_MIN_STAGES = 15



_SCIPY_MISSING = (
    "the milp strategy needs scipy (HiGHS): pip install edgeplan[milp] (or edgeplan[all])"
)


def milp(model, *, budget=None, time_limit=None, node_limit=None, warm_starts=(), others_least_bytes=None):
    """Least-compute schedule that fits ``budget``, by a mixed-integer program.

    Parameters
    ----------
    model : planner.model.Model
        Any model: chain or DAG.
    budget : int or None, keyword-only
        Activation budget in bytes.  None: no limit (the answer is store-all).
    time_limit : float or None, keyword-only
        Seconds for the whole call, default :data:`DEFAULT_TIME_LIMIT` (60).
        When it runs out, the best schedule found so far is returned with
        ``"proven_optimal": false``.
    node_limit : int or None, keyword-only
        HiGHS' branch-and-bound nodes per run (the root is node 1; None: no
        limit).  Where it stops HiGHS first, the answer is the best schedule
        found within that much work, the same on a quiet or a busy machine
        (``"proven_optimal": false`` unless proven); ``time_limit`` then only
        caps the call.  The hierarchical strategy's block menus use it.
    warm_starts : iterable of (str, ops), keyword-only
        Schedules other strategies already found, with their names (the
        registry hands in those of ``auto``/``compare``).  Each one that is
        valid and fits ``budget`` is a candidate starting incumbent; the
        answer is never worse than the best of them.  Frees are ignored.
    others_least_bytes : int or None, keyword-only
        The least budget another strategy is known to need; when no schedule
        fits, the least budget milp reports is never above it.

    Returns
    -------
    ops : list of Op
        Forward and backward ops; the registry inserts the frees.
    params : dict
        ``time_limit``, ``stages`` (backward stages of the program, 0 when no
        program was needed), ``proven_optimal`` (no schedule of the search
        space below needs less compute, up to HiGHS' relative gap of 1e-4 on
        the recomputation time; false on a timeout and whenever stages were
        merged, even if HiGHS closed the gap of the coarser program),
        ``start`` (the warm start whose schedule was the starting incumbent,
        or null) and, when HiGHS ran at ``budget`` and found a schedule,
        ``gap``: its relative gap ``(objective - bound) / objective`` between
        that schedule's recomputation and HiGHS' best (dual) bound on the
        recomputation of any schedule of the program's search space (the
        answer, never worse than HiGHS' schedule, is at most that far from
        the bound; at most 1e-4 when HiGHS proved its optimum).

    Raises
    ------
    InfeasibleError
        No schedule fits.  When HiGHS proves it (or the budget is below a
        simple bound), ``least_bytes`` is the least peak of a second program
        that minimises the peak, proven to the byte (with what is left of
        the time limit: the exact least peak of the search space when that
        program is solved to optimality, else a peak known to work), or
        ``others_least_bytes`` when that is lower; milp finds a schedule at
        ``least_bytes`` when given the same warm starts there.  When the
        time runs out before any schedule is found, ``least_bytes`` is None
        (or ``others_least_bytes``).
    ImportError
        scipy is not installed.
    OptionError
        ``time_limit`` is not a positive finite number.

    Notes
    -----
    Search space: backwards run in reverse topological order (n-1 .. 0);
    stage 0 runs every forward once in order, each with or without save;
    stage t = 1..T runs any recomputations (forwards of layers whose backward
    has not run, in topological order, with or without save) and then the
    backward(s) of its layers.  Every schedule of store-all, segment
    checkpointing, revolve and the chain dynamic programs has this form.

    Variables: R[t, i] (forward of i in stage t), S[t, i] (i's saved data
    exists by the end of stage t; it is made where S steps from 0 to 1), C[t,
    i] (i's output carried into stage t), F[t, i, k] (i's output freed right
    after the forward of k, one per reader k) and a continuous running memory
    per forward; memory rows bound the memory of every op by the budget.  All
    but F, and every row but the frees' and the sink's, are the stage program
    milp-paging shares (``planner.solvers._program``).  Sizes
    are divided by the gcd of every size of the model, so the coefficients
    are exact integers.  The warm starts that fit are encoded as variable
    values; the best one inside the search space is HiGHS' starting
    incumbent (through HiGHS' ``read_solution_file`` option).

    Size: with T = n stages (n <= 70 layers) the program has about n^2 / 2
    each of R, S, C and U plus one F per (stage, layer, reader): O(n (n + E))
    variables, constraints and non-zeros for E edges (about 16,000 variables
    and 38,000 rows for a 70-layer DAG).  Above 70 layers consecutive
    backwards share stages, T = max(15, 5000 // n) of them (27 for a
    177-layer ResNet-50), whose boundaries include the starting incumbent's;
    recomputation then runs only before a stage's first backward, so the
    program stays at about 2.5 T n variables but is no longer exact.
    HiGHS' presolve is switched off above 10,000 variables, where it costs
    more time than it saves.  HiGHS' time is exponential in the worst case;
    ``time_limit`` bounds the whole call (building the program, HiGHS).

    References
    ----------
    Jain, Jain, Nrusimha, Gholami, Abbeel, Keutzer, Stoica, Gonzalez.
    "Checkmate: Breaking the Memory Wall with Optimal Tensor
    Rematerialization", MLSys 2020.
    """
    limit = _check_limit(time_limit)
    _import_highs()  # before the clock starts: a cold import of scipy takes a good part of a second
    deadline = time.perf_counter() + limit
    plain = store_all_ops(model)
    if budget is None or simulate(model, insert_frees(model, plain)).peak_bytes <= budget:
        return plain, {"time_limit": limit, "stages": 0, "proven_optimal": True, "start": None}
    starts = _fitting_starts(model, budget, warm_starts)
    return _solve(model, budget, deadline, limit, starts, others_least_bytes, node_limit)


def _check_limit(time_limit):
    return check_time_limit(time_limit, DEFAULT_TIME_LIMIT)


def _fitting_starts(model, budget, warm_starts):
    """(compute, ops, name) of the warm starts that are valid and fit, best first.

    Each is replayed once (linear in its length) with the shared lowering's
    frees, the ones the registry inserts into milp's answer.
    """
    found = []
    for name, ops in warm_starts:
        ops = [op for op in ops if op.kind is not OpKind.FREE]
        result = simulate(model, insert_frees(model, ops))
        if result.valid and result.peak_bytes <= budget:
            found.append((result.compute, ops, name))
    found.sort(key=lambda item: (item[0], len(item[1])))
    return found


def _import_highs():
    import_highs(_SCIPY_MISSING)


def _solve(model, budget, deadline, limit, starts=(), others_least=None, node_limit=None):
    """The program proper.

    ``starts`` are (compute, ops, name) incumbents, best first; ``others_least``
    the least budget another strategy needs when none fits (it caps the least
    budget reported, so that milp at that budget finds a schedule);
    ``node_limit`` HiGHS' nodes per run.
    """
    _import_highs()
    n = len(model)
    if starts and deadline - time.perf_counter() <= 0.05:  # no time left: the best warm start
        return starts[0][1], {"time_limit": limit, "stages": 0, "start": starts[0][2], "proven_optimal": False}
    required = _required_boundaries(n, starts[0][1]) if starts else set()
    blocks = _blocks(n, _stage_count(n), required)
    form = _Formulation(model, blocks)
    params = {"time_limit": limit, "stages": len(blocks), "start": None}
    if budget < form.lower_bound() and not starts:
        proven, least = _least_peak(form, deadline, others_least, node_limit)
        raise InfeasibleError(
            f"milp: {budget} bytes is below what some op needs on its own "
            f"({form.lower_bound()} bytes); " + _least_text(least, proven),
            least_bytes=least,
        )
    best = (starts[0][0], starts[0][1], False) if starts else None
    fit = Fit()
    if budget >= form.lower_bound():
        fit = fit_budget(
            form, budget=budget, starts=starts, deadline=deadline, margin=0.2, measure=lambda x: _measure(form, x),
            node_limit=node_limit,
        )
    params["start"] = fit.start
    if fit.gap is not None:
        params["gap"] = fit.gap
    if fit.ops is None and fit.status == Status.INFEASIBLE and best is None:
        proven, least = _least_peak(form, deadline, others_least, node_limit)
        raise InfeasibleError(
            f"milp: no schedule fits {budget} bytes of activation memory; " + _least_text(least, proven),
            least_bytes=least,
        )
    if fit.ops is not None:
        proven = fit.status == Status.OPTIMAL and form.T == n
        if best is None or fit.result.compute <= best[0]:
            best = (fit.result.compute, fit.ops, proven)
        elif proven:
            best = (best[0], best[1], True)  # the incumbent beats the search space
    if best is None:
        raise InfeasibleError(
            f"milp: no schedule fitting {budget} bytes found within the time limit of "
            f"{limit:g} s (try a longer --time-limit)",
            least_bytes=None,
        )
    return best[1], dict(params, proven_optimal=best[2])


def _least_text(least, proven):
    if least is None:
        return "the time limit ran out before the least peak was found"
    return f"the least peak it reaches is {least} bytes" + ("" if proven else " (not proven least)")


def _least_peak(form, deadline, others_least=None, node_limit=None):
    """(proven, least budget) from the program that minimises the peak.

    The least budget is the simulated peak of its schedule, or
    ``others_least`` (another strategy's least budget) when that is lower.
    """
    start = form.encode(store_all_ops(form.model), None)
    res = timed_solve(form, deadline, margin=0.2, cap=None, start=start, node_limit=node_limit)
    if res is None:
        return False, others_least
    if res.x is None:  # pragma: no cover - the start is a solution
        return False, others_least
    _, result = _measure(form, res.x)
    if others_least is not None and others_least < result.peak_bytes:
        return False, others_least
    return res.status == Status.OPTIMAL and form.T == form.n, result.peak_bytes


def _measure(form, x):
    """The ops of solution ``x`` and their simulation with the shared lowering's frees."""
    ops = form.decode(x)
    result = simulate(form.model, insert_frees(form.model, ops))
    if not result.valid:  # pragma: no cover - would be a formulation bug
        raise RuntimeError(f"milp decoded an invalid schedule: {result.error}")
    return ops, result


def _required_boundaries(n, ops):
    """Backwards that forwards precede directly in ``ops`` (after the first n forwards)."""
    required = set()
    pending = False
    for op in ops[n:]:
        if op.kind is OpKind.FORWARD:
            pending = True
        elif op.kind is OpKind.BACKWARD:
            if pending:
                required.add(op.layer)
            pending = False
    return required


def _stage_count(n):
    """How many backward stages the program of an n-layer model gets."""
    if n * n <= _STAGE_WORK:
        return n
    return max(_MIN_STAGES, _STAGE_WORK // n)


def _blocks(n, max_stages, required=()):
    """Backward stages: lists of layers, descending, covering n-1 .. 0.

    Every layer gets its own stage when ``n <= max_stages``; otherwise stages
    start at the sink, at every layer of ``required`` and at evenly spread
    splits of the longest runs, up to ``max_stages`` stages (more only when
    ``required`` asks for more).
    """
    if n <= max_stages:
        return [[b] for b in range(n - 1, -1, -1)]
    bounds = sorted({n - 1} | set(required), reverse=True) + [-1]
    blocks = [list(range(bounds[k], bounds[k + 1], -1)) for k in range(len(bounds) - 1)]
    while len(blocks) < max_stages:
        longest = max(range(len(blocks)), key=lambda k: len(blocks[k]))
        block = blocks[longest]
        if len(block) < 2:
            break
        half = len(block) // 2
        blocks[longest : longest + 1] = [block[:half], block[half:]]
    return blocks


class _Formulation(StageProgram):
    """The stage program of one model (see :func:`milp`, Notes).

    Built once on :class:`~planner.solvers._program.StageProgram` (the layout,
    the shared rows, HiGHS); milp's own families are its frees and the sink
    row.  :meth:`solve` runs HiGHS under a memory cap (in units of
    :attr:`unit` bytes) or, with ``cap=None``, minimises the peak.
    :meth:`encode` turns a schedule of the search space into variable values
    and :meth:`decode` a solution into ops.
    """

    prefix = "edgeplan-milp-"

    def __init__(self, model, blocks):
        super().__init__(model, blocks)
        self._bound = self._peak_bound() * self.unit
        self._variables()
        for i in range(self.n):
            self.saved_rows(i)
        for t in range(1, self.T + 1):
            self.presence_rows(t)
        # the sink: forwarded once, in stage 0, and kept until its backward (it may
        # not be freed before its backward, so it cannot be recomputed)
        self.row([(self._c(self.stage_of[self.sink], self.sink), 1)], low=1.0)
        self.hold_rows()
        self.stage0_rows()
        for t in range(1, self.T + 1):
            self.stage_memory_rows(t, *self._stage_frees(t))
        self.build()

    def _peak_bound(self):
        """A peak (units) no schedule with this backward order can go below."""
        out, saved, inputs, maxcons, reads = self.out, self.saved, self.inputs, self.maxcons, self.reads
        base = self.base
        bound = 0
        for k in range(self.n):
            bound = max(bound, base + out[k] + saved[k] + sum(out[j] for j in inputs[k]) + self.wsf[k])
        for b in range(self.n):
            grads = sum(out[j] for j in range(b + 1) if maxcons[j] > b)
            bound = max(
                bound,
                base + grads + self.new_grads[b] + self.fresh_grads[b] + saved[b]
                + sum(out[j] for j in set(reads[b])) + self.wsb[b],
            )
        return bound

    def _variables(self):
        """S[t, i], R[t, i] (the objective: recomputation, as a share of one pass of forwards), C[t, i], the peak."""
        layers = self.model.layers
        new, stage_of, hi = self.new, self.stage_of, self.hi
        scale = sum(layer.forward for layer in layers) or 1.0
        for i in range(self.n):
            for t in range(stage_of[i]):
                self.S[t, i] = new()
        for t in range(1, self.T + 1):
            for i in range(hi[t] + 1):
                self.R[t, i] = new(cost=layers[i].forward / scale)
                self.C[t, i] = new()
        self.peak_col = new(high=np.inf)  # an integer number of units

    def _stage_frees(self, t):
        """The free variables of stage ``t``: per forward, the (F column, bytes) it frees after
        it, and per backward of the stage, the (layer, carried term) freed after it."""
        r, k, c, row, new = self._r, self._k, self._c, self.row, self.new
        h = self.hi[t]
        block = self.blocks[t - 1]
        position = {b: m for m, b in enumerate(block)}
        free_after_fwd = [[] for _ in range(h + 1)]  # (F column, bytes)
        free_after_bwd = [[] for _ in block]  # (layer, its C[t + 1] term)
        for i in range(h + 1):
            carried = c(t + 1, i)
            readers = [b for b in block if i in self.reads[b]]
            if readers:
                # freed after the last backward of the stage that reads it
                # unless kept; presence is forced by the read rows
                free_after_bwd[max(position[b] for b in readers)].append((i, carried))
                continue
            later = [x for x in self.consumers[i] if x <= h]
            # at most one free per present output, none when kept
            total = Expr(0, [(carried, 1), (k(t, i), -1), (r(t, i), -1)])
            for kk in [i] + later:
                f = self.F[t, i, kk] = new()
                total.add(var(f), 1)
                row([(var(f), 1), (r(t, kk), -1)], high=0.0)
                for x in later:
                    if x > kk:
                        row([(var(f), 1), (r(t, x), 1)], high=1.0)
                free_after_fwd[kk].append((f, self.out[i]))
            row(total, high=0.0)
        return free_after_fwd, free_after_bwd

    def lower_bound(self):
        """A peak (bytes) below which no schedule with this backward order exists."""
        return self._bound

    # ---- schedules <-> variable values ---------------------------------------------------

    def decode(self, x):
        """The forward and backward ops of a solution vector."""
        on = x > 0.5
        ops = [self.forward_of(on, 0, i) for i in range(self.n)]
        for t in range(1, self.T + 1):
            ops.extend(self.forward_of(on, t, i) for i in range(self.hi[t] + 1) if on[self.R[t, i]])
            ops.extend(backward(b) for b in self.blocks[t - 1])
        return ops

    def encode(self, ops, cap):
        """Variable values of a schedule, or None if it is outside the search space.

        ``ops`` are forward and backward ops (frees are ignored).  With a
        ``cap`` the values must satisfy every row under it (memory included);
        with ``cap=None`` the peak variable is set to the schedule's peak as
        the program counts it.
        """
        n, T = self.n, self.T
        ops = [op for op in ops if op.kind is not OpKind.FREE]
        if len(ops) < n or any(
            op.kind is not OpKind.FORWARD or op.layer != i for i, op in enumerate(ops[:n])
        ):
            return None
        stage_ops = [[] for _ in range(T + 1)]
        first_op = [None] * (T + 1)  # index in ops of each stage's first op
        t, m, last = 1, 0, None  # stage, position in its block, last forward layer
        for index in range(n, len(ops)):
            op = ops[index]
            if t > T:
                return None
            if first_op[t] is None:
                first_op[t] = index
            if op.kind is OpKind.FORWARD:
                if m > 0 or (last is not None and op.layer <= last) or op.layer > self.hi[t]:
                    return None
                last = op.layer
                stage_ops[t].append(op)
            else:
                if op.layer != self.blocks[t - 1][m]:
                    return None
                m += 1
                if m == len(self.blocks[t - 1]):
                    t, m, last = t + 1, 0, None
        if t != T + 1:
            return None
        x = np.zeros(len(self.lb))
        if not self.encode_forwards(x, [ops[:n]] + stage_ops[1:]):
            return None
        if not self.encode_carried(x, ops, first_op):
            return None
        self.set_running(x)
        return self.fit(x, cap)
