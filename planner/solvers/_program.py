"""What ``milp`` and ``milp-paging`` share: the stage program's layout, its columns and rows,
the constraint families both have, and the HiGHS call.

Not a strategy (the registry lists none here).  Both programs cut a schedule
into stages the same way: stage 0 runs every forward once, in topological
order, each with or without save; stage ``t = 1..T`` recomputes forwards of
layers whose backward has not run (in topological order, with or without
save) and then runs the backwards of ``blocks[t - 1]`` (descending).  Both
have, per stage ``t`` and layer ``i``, the variables ``S[t, i]`` (``i``'s saved
data exists at the end of stage ``t``), ``R[t, i]`` (a forward of ``i`` in
stage ``t``), ``C[t, i]`` (``i``'s output carried in from stage ``t - 1``) and
a continuous running memory per forward, and the families of rows written
here: saved data made once and kept, the presence rules of forwards and
backwards, the holds of saved data, and the memory of every op (stage 0's
forwards, each stage's forwards and backwards) under one peak column.  Each
program adds its own families: milp its frees and the sink row,
milp-paging its paging variables, frees and storage capacity.

Sizes come from ``model.tables`` in units of the gcd of every size
(:func:`planner.lowering.size_unit`), so coefficients are exact integers.
"""

import numpy as np

from planner.lowering import insert_frees, size_unit
from planner.schedule import OpKind, forward
from planner.solvers._highs import solve_capped

__all__ = ["Expr", "StageProgram", "var"]

_ABSENT = ((), 0)
_PRESENT = ((), 1)


def var(col):
    """The term of one column: ``(((col, 1),), 0)``."""
    return ((col, 1),), 0


class Expr:
    """A linear expression: columns, their coefficients (a column may repeat: its
    coefficients add up) and a constant.

    A *term* is ``(pairs, constant)``: a tuple of ``(column, coefficient)`` and
    a number (a variable is ``(((col, 1),), 0)``, a fixed fact ``((), 0 or 1)``).
    """

    __slots__ = ("cols", "vals", "const")

    def __init__(self, const=0, pairs=()):
        self.cols = []
        self.vals = []
        self.const = const
        for term, coef in pairs:
            self.add(term, coef)

    def add(self, term, coef):
        """Add ``coef`` times ``term``; returns self."""
        pairs, value = term
        self.const += coef * value
        for col, a in pairs:
            self.cols.append(col)
            self.vals.append(coef * a)
        return self

    def copy(self):
        other = Expr(self.const)
        other.cols = list(self.cols)
        other.vals = list(self.vals)
        return other

    def value(self, x):
        """The expression's value at variable values ``x``."""
        return self.const + float(np.dot(self.vals, x[self.cols])) if self.cols else self.const


class StageProgram:
    """The columns, rows and shared constraint families of a stage program (see the module).

    A subclass creates its columns with :meth:`new` (``S``, ``R``, ``C`` in
    the dicts of those names, the peak in :attr:`peak_col`), calls the shared
    families where its rows go, adds its own with :meth:`row` and
    :meth:`cap`, and ends with :meth:`build`.  :attr:`prefix` names HiGHS'
    start files.
    """

    prefix = "edgeplan-milp-"

    def __init__(self, model, blocks):
        self.model = model
        n = self.n = len(model)
        self.blocks = blocks
        self.T = len(blocks)
        self.unit = size_unit(model)
        t = model.tables.scaled(self.unit)
        self.out = t.output_bytes.tolist()
        self.saved = t.saved_bytes.tolist()
        self.wsf = t.workspace_forward.tolist()
        self.wsb = t.workspace_backward.tolist()
        self.base = t.input_bytes
        self.inputs = t.inputs
        self.consumers = t.consumers
        self.maxcons = t.last_consumer.tolist()  # -1: no consumer (the sink)
        self.reads = t.backward_reads  # the sink's own output included: the loss reads it
        self.holders = t.holders
        # Backwards run in reverse topological order: an input's gradient is
        # started by its highest consumer's backward; each other consumer's
        # backward makes a fresh one, counted in its peak only (SPEC section 3).
        self.new_grads = t.new_gradients.tolist()
        self.fresh_grads = t.fresh_gradients.tolist()
        self.sink = t.sink
        stage_of = [0] * n  # the stage of each layer's backward
        for stage, block in enumerate(blocks, start=1):
            for b in block:
                stage_of[b] = stage
        self.stage_of = stage_of
        self.hi = [n - 1] + [block[0] for block in blocks] + [-1]  # hi[t]: highest live layer
        self.lb, self.ub, self.integrality, self.cost = [], [], [], []
        self._entries = ([], [], [])  # row, column, value
        self.lo, self.up, self.mem_rows = [], [], []
        self.u_defs = []  # (running-memory column, the Expr it equals), in evaluation order
        self.S, self.R, self.C, self.F = {}, {}, {}, {}  # F[t, i, k]: i's output freed after k's forward
        self.peak_col = None

    # ---- columns and rows ----------------------------------------------------------------

    def new(self, *, integer=True, cost=0.0, high=1.0):
        """A new column in ``[0, high]``; its index."""
        self.lb.append(0.0)
        self.ub.append(high)
        self.integrality.append(1 if integer else 0)
        self.cost.append(cost)
        return len(self.lb) - 1

    def row(self, expr, *, low=-np.inf, high=np.inf):
        """Add ``low <= expr <= high`` (``expr`` an :class:`Expr` or a list of (term, coef)); its index."""
        if isinstance(expr, Expr):
            cols, vals, const = expr.cols, expr.vals, expr.const
        else:  # a short row: summed here, without an Expr
            cols, vals, const = [], [], 0
            for (pairs, value), coef in expr:
                const += coef * value
                for col, a in pairs:
                    cols.append(col)
                    vals.append(coef * a)
        rows, all_cols, all_vals = self._entries
        rows.extend([len(self.lo)] * len(cols))
        all_cols.extend(cols)
        all_vals.extend(vals)
        self.lo.append(low - const)
        self.up.append(high - const)
        return len(self.lo) - 1

    def cap(self, expr):
        """A memory row: ``expr <= peak`` (the peak is fixed to the cap, or minimised)."""
        if not isinstance(expr, Expr):
            expr = Expr(0, expr)
        self.mem_rows.append(self.row(expr.add(var(self.peak_col), -1), high=0.0))

    def running(self, expr):
        """A running-memory column equal to ``expr``; its term."""
        u = self.new(integer=False, high=np.inf)
        self.u_defs.append((u, expr))
        self.row(expr.copy().add(var(u), -1), low=0.0, high=0.0)
        return u

    def build(self):
        """The rows as a sparse matrix ``A`` and the bounds as arrays, as HiGHS takes them."""
        from scipy.sparse import csr_array

        rows, cols, vals = self._entries
        self.A = csr_array((vals, (rows, cols)), shape=(len(self.lo), len(self.lb)))  # repeats summed
        self.A.eliminate_zeros()  # terms that cancelled
        self.lo = np.array(self.lo, dtype=float)
        self.up = np.array(self.up, dtype=float)
        self.lb = np.array(self.lb, dtype=float)
        self.ub = np.array(self.ub, dtype=float)
        self.integrality = np.array(self.integrality)
        self.cost = np.array(self.cost, dtype=float)
        self.mem_rows = np.array(self.mem_rows, dtype=int)
        del self._entries

    # ---- the terms the rows combine --------------------------------------------------------

    def _s(self, t, i):
        """Saved data of ``i`` at the end of stage ``t`` (there from the stage of its backward on)."""
        if t < 0:
            return _ABSENT
        if t >= self.stage_of[i]:
            return _PRESENT
        return var(self.S[t, i])

    def _r(self, t, i):
        """A forward of ``i`` in stage ``t`` (every layer's, in stage 0)."""
        return _PRESENT if t == 0 else var(self.R[t, i])

    def _c(self, t, i):
        """``i``'s output carried into stage ``t`` from stage ``t - 1``."""
        if 1 <= t <= self.T and i <= self.hi[t]:
            return var(self.C[t, i])
        return _ABSENT

    def _k(self, t, i):
        """``i``'s output present at the start of stage ``t`` (milp-paging adds its pageins)."""
        return self._c(t, i)

    # ---- the shared constraint families ----------------------------------------------------

    def saved_rows(self, i):
        """``i``'s saved data: made once, by a forward with save, kept until its backward."""
        s, r, row = self._s, self._r, self.row
        for t in range(1, self.stage_of[i] + 1):
            row([(s(t - 1, i), 1), (s(t, i), -1)], high=0.0)
            row([(s(t, i), 1), (s(t - 1, i), -1), (r(t, i), -1)], high=0.0)

    def presence_rows(self, t):
        """Which ops of stage ``t`` may run: a forward needs its output absent and its inputs
        present, an output is carried on only if it is there, a backward needs what it reads."""
        r, k, c, row = self._r, self._k, self._c, self.row
        hi = self.hi
        for i in range(hi[t] + 1):
            row([(r(t, i), 1), (k(t, i), 1)], high=1.0)
            for j in self.inputs[i]:
                row([(r(t, i), 1), (k(t, j), -1), (r(t, j), -1)], high=0.0)
            if i <= hi[t + 1]:
                row([(c(t + 1, i), 1), (k(t, i), -1), (r(t, i), -1)], high=0.0)
        for b in self.blocks[t - 1]:
            for j in set(self.reads[b]):
                row([(k(t, j), 1), (r(t, j), 1)], low=1.0)

    def hold_rows(self):
        """Saved data keeps the outputs its backward reads until that backward."""
        s, c, row = self._s, self._c, self.row
        for i in range(self.n):
            for holder in self.holders[i]:
                for t in range(self.stage_of[holder]):
                    row([(c(t + 1, i), 1), (s(t, holder), -1)], low=0.0)

    def stage0_rows(self):
        """Memory of stage 0: every forward once, in order."""
        s, c = self._s, self._c
        out, saved, maxcons = self.out, self.saved, self.maxcons
        for kk in range(self.n):
            e = Expr(self.base + out[kk] + self.wsf[kk])
            for i in range(kk + 1):
                e.add(s(0, i), saved[i])
            for i in range(kk):
                if maxcons[i] >= kk:  # still read later in stage 0
                    e.const += out[i]
                else:
                    e.add(c(1, i), out[i])
            self.cap(e)

    def stage_memory_rows(self, t, free_after_fwd, free_after_bwd=None):
        """Memory of stage ``t``: its forwards (a running level per forward), then its backwards.

        ``free_after_fwd[kk]`` lists the (free column, bytes) freed right after
        the forward of ``kk``; ``free_after_bwd[m]`` the (layer, carried term)
        freed after the ``m``-th backward of the stage unless carried on.
        """
        s, r, k = self._s, self._r, self._k
        out, saved, maxcons = self.out, self.saved, self.maxcons
        h = self.hi[t]
        grads = sum(out[j] for j in range(h + 1) if maxcons[j] > h)  # started by backwards run
        level = Expr(self.base + grads)
        for i in range(h + 1):
            level.add(k(t, i), out[i])
            level.add(s(t - 1, i), saved[i])
        for kk in range(h + 1):
            level.add(r(t, kk), out[kk]).add(s(t, kk), saved[kk]).add(s(t - 1, kk), -saved[kk])
            u = self.running(level)
            self.cap(Expr(0, [(var(u), 1), (r(t, kk), self.wsf[kk])]))
            level = Expr(0, [(var(u), 1)] + [(var(f), -size) for f, size in free_after_fwd[kk]])
        for m, b in enumerate(self.blocks[t - 1]):
            level.const += self.new_grads[b]
            peak = level.copy()
            peak.const += self.fresh_grads[b] + self.wsb[b]
            self.cap(peak)
            level.const -= saved[b] + out[b]  # its saved data and its gradient go
            for i, carried in (free_after_bwd[m] if free_after_bwd else ()):
                level.const -= out[i]
                level.add(carried, out[i])

    # ---- HiGHS and variable values -----------------------------------------------------------

    def solve(self, *, cap, time_limit, start=None, node_limit=None):
        """HiGHS: the least cost under ``cap`` units, or with ``cap=None`` the least peak.

        ``start`` (variable values from ``encode``) is HiGHS' first incumbent;
        ``node_limit`` as :func:`planner.solvers._highs.solve_capped`.
        """
        return solve_capped(self, self.cost, self.peak_col, cap=cap, time_limit=time_limit, start=start,
                            node_limit=node_limit, prefix=self.prefix)

    def forward_of(self, on, t, i):
        """The forward of ``i`` in stage ``t`` of a solution (``on``: which columns are set),
        with save where its saved data is made in that stage."""
        return forward(i, self._saved_by(on, t, i) and not self._saved_by(on, t - 1, i))

    def _saved_by(self, on, t, i):
        return True if t >= self.stage_of[i] else (t >= 0 and bool(on[self.S[t, i]]))

    def encode_forwards(self, x, stages):
        """Set R and S in ``x`` from the forwards of ``stages`` (lists of ops, stage 0 first).

        False if a layer's saved data is made twice, never, or after the stage
        of its backward: the schedule is outside the search space.
        """
        made = [None] * self.n  # the stage each layer's saved data is made in
        for t, stage in enumerate(stages):
            for op in stage:
                if op.kind is not OpKind.FORWARD:
                    continue
                i = op.layer
                if t > 0:
                    x[self.R[t, i]] = 1
                if op.save:
                    if made[i] is not None:
                        return False
                    made[i] = t
        for i in range(self.n):
            if made[i] is None or made[i] > self.stage_of[i]:
                return False
            for t in range(made[i], self.stage_of[i]):
                x[self.S[t, i]] = 1
        return True

    def encode_carried(self, x, ops, first_op):
        """Set C and F in ``x`` by replaying the shared lowering's frees of ``ops``.

        ``ops`` are the schedule's forwards, backwards and paging ops in the
        program's order; ``first_op[t]`` is the index among them of stage
        ``t``'s first op (``t = 1..T``).  An output present when a stage starts
        is carried into it; one freed right after a forward of a stage
        ``t >= 1`` sets that free's column.  False where no column says so:
        the schedule is outside the search space.
        """
        FREE, FORWARD, BACKWARD, PAGEIN = OpKind.FREE, OpKind.FORWARD, OpKind.BACKWARD, OpKind.PAGEIN
        present, stage, seen, last_forward = set(), 0, 0, None
        for op in insert_frees(self.model, ops):
            kind, i = op.kind, op.layer
            if kind is FREE:
                present.discard(i)
                if stage >= 1 and last_forward is not None:
                    key = (stage, i, last_forward)
                    if key not in self.F:
                        return False
                    x[self.F[key]] = 1
                continue
            while stage < self.T and first_op[stage + 1] == seen:
                stage += 1
                for j in present:
                    if (stage, j) not in self.C:
                        return False
                    x[self.C[stage, j]] = 1
                last_forward = None
            seen += 1
            if kind is FORWARD or kind is PAGEIN:
                present.add(i)
            if kind is FORWARD:
                last_forward = i
            elif kind is BACKWARD:
                last_forward = None
        return True

    def set_running(self, x):
        """Set the running-memory columns of ``x`` from the other values (in evaluation order)."""
        for u, expr in self.u_defs:
            x[u] = expr.value(x)

    def fit(self, x, cap):
        """``x`` with its peak column set (to ``cap``, or with ``cap=None`` to the least that
        holds), if it satisfies every row; else None."""
        x[self.peak_col] = 0.0
        values = self.A @ x
        need = float(np.max(values[self.mem_rows] - self.up[self.mem_rows])) if len(self.mem_rows) else 0.0
        x[self.peak_col] = max(need, 0.0) if cap is None else cap
        values = self.A @ x
        # the values are sums of integers, exact in floating point
        if np.any(values < self.lo - 1e-6) or np.any(values > self.up + 1e-6):
            return None
        return x
