"""``dp``: the optimal dynamic program for heterogeneous chains (rotor).

The schedule class is the one of Beaumont et al. (2019): *persistent*
schedules, where a checkpoint stays in memory until the segment it starts has
been fully reversed.  ``Solve(s, t)`` reverses layers ``s..t`` given the output
of layer ``s - 1`` (the model input for ``s = 0``) and, for ``t < n - 1``, the
gradient of layer ``t``'s output.  It does one of

* ``F_all``: ``forward(s, save=True)``, ``Solve(s + 1, t)``, ``backward(s)``;
* ``F_ck`` then ``F_n``: ``forward(k, save=False)`` for ``k = s..s' - 1`` (the
  output of ``s - 1`` stays, the intermediate outputs are dropped as soon as the
  next forward ran), ``Solve(s', t)``, ``Solve(s, s' - 1)``.

Memory model (exactly what :func:`planner.lowering.insert_frees` and the
simulator do with such an op sequence, SPEC section 3).  Write ``o`` for output
bytes (``o[-1] = 0``: the model input is counted once in ``input_bytes``),
``sv`` for saved bytes, ``wf``/``wb`` for workspaces and ``g_t = o[t]`` for
``t < n - 1`` (the gradient present when ``Solve(s, t)`` starts; the sink's
gradient only appears at its backward, ``g_{n-1} = 0``).  Peaks are counted
relative to what the caller holds besides ``a[s-1]`` and ``g_t``.  A
subproblem comes in two *modes* for ``a[s-1]``: *released* (freed right after
its last use inside: a checkpoint whose segment ends here) or *pinned* (the
caller's backward of ``s - 1`` reads it: ``needs_output``).  With
``h = pinned or needs_inputs[s]`` (saved data holds ``a[s-1]``):

* ``F_all``: forward peak ``o[s-1] + g_t + o[s] + sv[s] + wf[s]``; the rest runs
  on top of ``h o[s-1] + sv[s]``, ``Solve(s + 1, t)`` in mode pinned iff
  ``needs_output[s]``; backward peak
  ``h o[s-1] + sv[s] + needs_output[s] o[s] + o[s] + o[s-1] + wb[s]`` (its
  saved data, its output if read, the gradient it consumes and the one it
  allocates).  The sink counts as ``needs_output``: the loss reads its output
  until its backward.
* ``F_ck`` at ``s'``: forward ``k`` peaks at ``o[s-1] + g_t + o[k-1] + o[k] +
  wf[k]`` (``o[k-1]`` dropped for ``k = s``), then ``Solve(s', t)`` released on
  top of ``o[s-1]``, then ``Solve(s, s' - 1)`` in the caller's mode.

The cost is the sum of forward and backward times, exactly as the simulator
counts it.  ``C(s, t, mode, m)`` (least cost within ``m`` bytes) is tabulated
over a memory grid (see :func:`dp`, Notes), vectorised over the grid and the
split ``s'`` with numpy.
"""

import numpy as np

from planner.errors import InfeasibleError, TooLargeError
from planner.lowering import size_dtype, size_unit, store_all_ops
from planner.model import chains_only
from planner.solvers._persistent import PINNED, RELEASED, ChainSizes, chain_arrays, check_levels
from planner.solvers._persistent import build_tree, store_all_tree, tree_ops

__all__ = ["dp"]

# Exact byte grid when the table has at most _EXACT_CELLS cells (n^2 x levels)
# and the work (n^3/6 x levels) is at most _WORK; a rounded grid is made finer
# (x2 at a time) while it stays within the same limits.
_EXACT_CELLS = 20_000_000
_WORK = 300_000_000
# Distinct forward-chain peaks handled one reduction each; beyond, a running minimum.
_MAX_GROUPS = 16
# Larger problems are refused (TooLargeError): hours of work or more memory
# than an edge planner should take.  1000 layers x 500 levels: 8e10, 2.2 GB.
_MAX_WORK = 3e11
_MAX_TABLE_BYTES = 4e9
# float64 tables up to this many cells, float32 above (choices only; the cost
# reported is always re-summed in float64 along the schedule).
_F64_CELLS = 20_000_000
# The exact table dp still builds (in float32) when the rounded grid finds no schedule that fits.
_FALLBACK_EXACT_CELLS = 80_000_000
# A rounded grid has at most _WORK / (n^3 / 6) levels at the budget (long
# chains: 225 at 200 layers), but never fewer than _MIN_GRID.
_MIN_GRID = 128


def _sizes(model):
    """The chain's sizes in bytes (Python ints where int64 could overflow)."""
    return ChainSizes(**chain_arrays(model, size_dtype(model)))


def _modes(z, s):
    """Modes that differ for a subproblem starting at ``s``."""
    if s > 0 and not z.ni[s] and z.prev(s) > 0:
        return (RELEASED, PINNED)
    return (RELEASED,)


# --------------------------------------------------------------------------
# Decision trees (planner.solvers._persistent): ("all", s, t, mode, child) or
# ("ck", s, t, mode, split, right, left).


def _tree_peak_cost(tree, z, f, b):
    """Exact peak (bytes above ``input_bytes``) and cost of a tree under the DP's model."""
    peak = [0] * len(tree)
    cost = [0.0] * len(tree)
    for x in range(len(tree) - 1, -1, -1):  # children come after their parent
        node = tree[x]
        if node[0] == "all":
            _, s, t, mode, child = node
            need, off = z.all_need(s, t, mode)
            c = f[s] + b[s]
            if child >= 0:
                need = max(need, off + peak[child])
                c += cost[child]
        else:
            _, s, t, mode, split, right, left = node
            q = int(z.chain_peaks(s)[split - s - 1])
            p = z.prev(s)
            need = max(p + z.grad(t) + q, p + peak[right], peak[left])
            c = sum(f[s:split]) + cost[right] + cost[left]
        peak[x] = int(need)
        cost[x] = c
    return peak[0], cost[0]


# --------------------------------------------------------------------------
# Least peak (exact bytes, no memory axis): for infeasibility and as a fallback.


def _least_peak_tree(z, f, b):
    """Least-peak persistent schedule (ties: least cost), exact integers.

    O(n^3) with numpy over the split.
    """
    n = z.n
    fsum = np.concatenate(([0.0], np.cumsum(f)))
    INF = np.iinfo(np.int64).max // 4 if z.o.dtype == np.int64 else float("inf")
    pk = {RELEASED: np.full((n, n), INF, dtype=z.o.dtype)}
    cs = {RELEASED: np.zeros((n, n))}
    ch = {RELEASED: np.zeros((n, n), dtype=np.int64)}
    pinned = {s for s in range(n) if len(_modes(z, s)) == 2}
    pk[PINNED] = np.full((n, n), INF, dtype=z.o.dtype)
    cs[PINNED] = np.zeros((n, n))
    ch[PINNED] = np.zeros((n, n), dtype=np.int64)

    def table(s, mode):
        return mode if (mode == PINNED and s in pinned) else RELEASED

    # Column copies of the released tables (the right part C(s', t) for every s').
    pk_t = np.full((n, n), INF, dtype=z.o.dtype)
    cs_t = np.zeros((n, n))
    for s in range(n - 1, -1, -1):
        p = z.prev(s)
        if s < n - 1:
            q = z.chain_peaks(s)
            sm = table(s + 1, z.sub_mode(s))
        for t in range(s, n):
            g = z.grad(t)
            k = t - s
            for mode in _modes(z, s):
                need, off = z.all_need(s, t, mode)
                best_p, best_c, best = need, f[s] + b[s], -1
                if s < t:
                    best_p = max(need, off + pk[sm][s + 1, t])
                    best_c += cs[sm][s + 1, t]
                    lm = table(s, mode)
                    cand = np.maximum(q[:k] + g, pk_t[t, s + 1 : t + 1])
                    cand += p
                    np.maximum(cand, pk[lm][s, s:t], out=cand)
                    low = cand.min()
                    if low <= best_p:
                        cc = (fsum[s + 1 : t + 1] - fsum[s]) + cs_t[t, s + 1 : t + 1] + cs[lm][s, s:t]
                        cc[cand != low] = np.inf
                        j = int(np.argmin(cc))
                        if (low, cc[j]) < (best_p, best_c):
                            best_p, best_c, best = low, cc[j], s + 1 + j
                pk[mode][s, t] = best_p
                cs[mode][s, t] = best_c
                ch[mode][s, t] = best
            pk_t[t, s] = pk[RELEASED][s, t]
            cs_t[t, s] = cs[RELEASED][s, t]

    def choose(s, t, mode, _m):
        choice = int(ch[table(s, mode)][s, t])
        return ("all", None) if choice < 0 else ("ck", choice)

    return build_tree(z, choose)


# --------------------------------------------------------------------------
# The memory-indexed table.


def _prefix_groups(q):
    """Record starts of the nondecreasing ``q``: ``q[j]`` is constant between them."""
    return np.flatnonzero(np.diff(q)) + 1


def _split_minimum(tmp, cur, q, starts, g, k, cols):
    """``cur[m]``: the least ``tmp[j, m]`` over the splits ``j < k`` allowed at level ``m``.

    Row ``j`` (split ``s + 1 + j``) is allowed where ``m - p >= g + q[j]``; ``cur`` is
    inf where none is.  ``starts`` are where ``q`` grows (:func:`_prefix_groups`): few
    groups are reduced one slice each, many by a running minimum.
    """
    h = len(cur)
    cur.fill(np.inf)
    groups = [x for x in starts if x < k] if starts and starts[0] < k else []
    if len(groups) <= _MAX_GROUPS:
        lo_c = g + q[0]
        for stop in groups + [k]:
            hi_c = (g + q[stop]) if stop < k else h
            a = lo_c if lo_c > 0 else 0
            c = hi_c if hi_c < h else h
            if a < c:
                np.minimum.reduce(tmp[:stop, a:c], axis=0, out=cur[a:c])
            lo_c = hi_c
    else:
        np.minimum.accumulate(tmp, axis=0, out=tmp)
        allowed = np.searchsorted(np.array(q[:k]) + g, cols[:h], side="right")
        ok = allowed > 0
        cur[ok] = tmp[allowed[ok] - 1, cols[:h][ok]]
    return cur


class _Table:
    """``C(s, t, mode, m)`` for ``m = 0..W-1`` grid units, with reconstruction.

    Released rows are stored twice so that both operands of the ``F_ck``
    recurrence are contiguous: ``by_t[t][s]`` (plain values, the right part
    ``C(s', t)`` for every ``s'``) and ``by_s[s][t - s]`` holding
    ``C(s, t) + fsum[t + 1]`` (the left part ``C(s, s' - 1)`` with the forward
    time of the chain ``s..s'-1`` already added, up to the scalar
    ``fsum[s]``).  Pinned rows exist only where they differ (``by_s`` layout).
    """

    def __init__(self, z, f, b, width, dtype=None):
        n = z.n
        self.z, self.f, self.b, self.W = z, f, b, width
        if dtype is None:
            dtype = np.float64 if n * n * width <= _F64_CELLS else np.float32
        self.by_t = [np.full((t + 1, width), np.inf, dtype=dtype) for t in range(n)]
        self.by_s = [np.full((n - s, width), np.inf, dtype=dtype) for s in range(n)]
        self.pin = {
            s: np.full((n - s, width), np.inf, dtype=dtype) for s in range(n) if len(_modes(z, s)) == 2
        }
        self.fsum = np.concatenate(([0.0], np.cumsum(f)))
        self.bsum = np.concatenate(([0.0], np.cumsum(b)))
        self._fill()

    def value(self, s, t, mode, m):
        """``C(s, t, mode, m)`` as a Python float."""
        if mode == PINNED and s in self.pin:
            return float(self.pin[s][t - s, m]) - self.fsum[t + 1]
        return float(self.by_t[t][s, m])

    def _shifted(self, s, mode):
        """``C(s, t) + fsum[t + 1]`` for ``t = s..n-1`` (rows)."""
        if mode == PINNED and s in self.pin:
            return self.pin[s]
        return self.by_s[s]

    def _fill(self):
        z, f, b, W = self.z, self.f, self.b, self.W
        n = z.n
        fsum, bsum = self.fsum, self.bsum
        grad = [z.grad(t) for t in range(n)]
        # sat[s][t]: peak of the store-everything schedule of the segment (per mode)
        sat_rel = [None] * (n + 1)
        sat_pin = {}
        buf = np.empty((n, W), dtype=self.by_t[0].dtype)
        best = np.empty(W)
        cols = np.arange(W)
        for s in range(n - 1, -1, -1):
            p = z.prev(s)
            modes = _modes(z, s)
            sub = z.sub_mode(s)
            fb = f[s] + b[s]
            if s < n - 1:
                q = [int(v) for v in z.chain_peaks(s)]
                starts = [int(v) for v in _prefix_groups(np.array(q))]
                sub_sat = sat_pin[s + 1] if (sub == PINNED and (s + 1) in sat_pin) else sat_rel[s + 1]
                sub_rows = self._shifted(s + 1, sub)
            # F_all's own peak: need_f0 + grad[t] and need_b; the rest runs on top of off
            per_mode = []
            for mode in modes:
                h = p if z.held(s, mode) else 0
                need_f0 = p + int(z.o[s] + z.sv[s] + z.wf[s])
                need_b = int(h + z.sv[s] + (z.o[s] if z.no[s] else 0) + z.o[s] + p + z.wb[s])
                off = int(h + z.sv[s])
                sat = [0] * n
                if mode == PINNED:
                    sat_pin[s] = sat
                    rows = self.pin[s]
                else:
                    sat_rel[s] = sat
                    rows = None
                per_mode.append((mode, need_f0, need_b, off, sat, rows))
            for t in range(s, n):
                g = grad[t]
                base = (fsum[t + 1] - fsum[s]) + (bsum[t + 1] - bsum[s])
                k = t - s
                shift = fsum[t + 1]
                for mode, need_f0, need_b, off, sat, rows in per_mode:
                    need = max(need_f0 + g, need_b)
                    need_sat = max(need, off + sub_sat[t]) if s < t else need
                    sat[t] = need_sat
                    out = self.by_t[t][s] if rows is None else rows[k]
                    hi = need_sat if need_sat < W else W
                    out[hi:] = base
                    if hi > 0 and s < t:
                        lo = need if need > off else off
                        if lo < hi:
                            # F_all: f + b + C(s+1, t, m - off); sub rows are shifted by fsum[t+1]
                            np.add(sub_rows[k - 1, lo - off : hi - off], fb - shift, out=out[lo:hi])
                        if p < hi:
                            h = hi - p
                            tmp = buf[:k, :h]
                            left = self.by_s[s] if rows is None else rows
                            np.add(self.by_t[t][s + 1 : t + 1, :h], left[:k, p:hi], out=tmp)
                            cur = _split_minimum(tmp, best[:h], q, starts, g, k, cols)
                            cur -= fsum[s]
                            np.minimum(out[p:hi], cur, out=out[p:hi])
                    if rows is None:
                        np.add(out, shift, out=self.by_s[s][k])
                    else:
                        out += shift

    def tree(self, m):
        """Reconstruct the optimal tree for ``Solve(0, n-1)`` within ``m`` units, or None."""
        z = self.z
        n = z.n
        if not np.isfinite(self.by_t[n - 1][0, m]):
            return None
        return build_tree(z, self._choose, m)

    def _choose(self, s, t, mode, m):
        """The option that attains ``C(s, t, mode, m)``: ``("all", None)`` or ``("ck", split)``."""
        z, f, b = self.z, self.f, self.b
        need, off = z.all_need(s, t, mode)
        best, choice = np.inf, None
        if m >= need and m >= off:
            best = f[s] + b[s] + (self.value(s + 1, t, z.sub_mode(s), m - off) if s < t else 0.0)
            choice = ("all", None)
        p, g = z.prev(s), z.grad(t)
        if s < t and m >= p:
            k = t - s
            allowed = int(np.searchsorted(z.chain_peaks(s)[:k] + g, m - p, side="right"))
            if allowed:
                v = (
                    self.by_t[t][s + 1 : s + 1 + allowed, m - p].astype(np.float64)
                    + self._shifted(s, mode)[:allowed, m]
                    - self.fsum[s]
                )
                j = int(np.argmin(v))
                if v[j] < best:
                    best, choice = v[j], ("ck", s + 1 + j)
        if choice is None:  # pragma: no cover - the table said feasible
            raise RuntimeError(f"dp: no option attains C({s}, {t}, {mode}, {m})")
        return choice


# --------------------------------------------------------------------------


def _grid(n, levels):
    """Levels of the rounded grid for an n-layer chain (the budget's level is in (grid/2, grid])."""
    grid = levels
    while n**3 / 6 * grid * 2 <= _WORK and n * n * grid * 2 <= _EXACT_CELLS:
        grid *= 2
    return min(grid, max(_MIN_GRID, int(_WORK // (n**3 / 6))))


def _rounded_table(z, f, b, avail, levels, shared):
    """The rounded table for ``avail`` bytes, its unit and the levels this budget may use.

    The unit is the power of two that puts ``avail`` at a level in
    ``(grid / 2, grid]``, so every budget of one octave gets the same unit and
    the same table values: a table is a function of its unit alone (its width
    only truncates it).  With ``shared`` (a dict kept across calls) the table is
    built once per octave, as wide as the octave's largest budget needs, and
    reused; the answer is the same as without it.
    """
    grid = _grid(z.n, levels)
    unit, width = _rounded_unit(avail, grid)
    full = grid + 1 + max(8, grid // 32)  # the widest any budget of this unit needs
    dtype = np.float64 if z.n * z.n * full <= _F64_CELLS else np.float32
    if shared is None:
        return _Table(z.scaled(unit, "nearest"), f, b, width, dtype), unit, width
    key = ("rounded", levels, unit)
    if shared.get("key") != key or shared["table"].W < width:
        # as wide as the widest budget of this octave the caller announced
        # (shared["budgets"]), else as the octave allows
        announced = [_rounded_unit(a, grid) for a in shared.get("avails", ())]
        wide = max([w for u, w in announced if u == unit and w >= width], default=full)
        shared.pop("table", None)  # one table at a time: sweeps go up in memory
        shared["table"] = _Table(z.scaled(unit, "nearest"), f, b, wide, dtype)
        shared["key"] = key
    return shared["table"], unit, width


def _rounded_unit(avail, grid):
    """The power-of-two unit of ``avail`` bytes on a grid of ``grid`` levels, and the table width."""
    unit = 1 << (-(-avail // grid) - 1).bit_length() if avail > grid else 1
    top = avail // unit
    return unit, top + 1 + max(8, top // 32)


def _rounded_search(z, f, b, avail, levels, params, shared=None):
    """Rounded grid: one table, then the largest level whose schedule really fits.

    Every probe reconstructs the table's optimal schedule at one level and
    measures it in exact bytes.  Returns ``(cost, peak, tree)`` of the cheapest schedule found that really
    fits ``avail`` bytes, or None.
    """
    n = z.n
    table, unit, width = _rounded_table(z, f, b, avail, levels, shared)
    top = avail // unit
    evaluated = {}

    def probe(m):
        if m not in evaluated:
            tree = table.tree(m)
            evaluated[m] = None if tree is None else _tree_peak_cost(tree, z, f, b) + (tree,)
        r = evaluated[m]
        return r is not None and r[0] <= avail

    # The largest fitting level: fitting is monotone up to rounding noise, so
    # gallop from the budget level (up if it fits, down if not), bisect the
    # bracket, then look at a few levels above the answer.
    finite = np.flatnonzero(np.isfinite(table.by_t[n - 1][0][:width]))
    if len(finite) and not probe(width - 1):
        first = int(finite[0])
        start = min(max(top, first), width - 1)
        step = 1
        if probe(start):
            lo, hi = start, width - 1
            while lo + step < hi and probe(lo + step):
                lo, step = lo + step, step * 2
            hi = min(hi, lo + step)
        else:
            lo, hi = first - 1, start
            while hi - step > lo and not probe(hi - step):
                hi, step = hi - step, step * 2
            lo = max(lo, hi - step)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if probe(mid):
                lo = mid
            else:
                hi = mid
        for m in range(lo + 1, min(lo + 4, width)):
            probe(m)
    del table
    fits = [(r[1], r[0], r[2]) for r in evaluated.values() if r is not None and r[0] <= avail]
    params.update(grid="rounded", unit_bytes=unit, levels=width)
    if not fits:
        return None
    cost, peak, tree = min(fits, key=lambda r: (r[0], r[1]))
    return cost, peak, tree


def _exact_table(z, f, b, unit, width, shared):
    """The exact-grid table of ``width`` levels, reused from ``shared`` when one as wide exists."""
    key = ("exact", unit)
    dtype = np.float64 if z.n * z.n * width <= _F64_CELLS else np.float32
    if shared is not None and shared.get("key") == key:
        table = shared["table"]
        if table.W >= width and table.by_t[0].dtype == dtype:
            return table
    table = _Table(z.scaled(unit, "up"), f, b, width, dtype)
    if shared is not None:
        shared.pop("table", None)
        shared.update(key=key, table=table)
    return table


def _least_peak(z, f, b, shared):
    """The least-peak tree and its (peak, cost); kept in ``shared`` (it needs no budget)."""
    if shared is not None and "least" in shared:
        return shared["least"]
    least = _least_peak_tree(z, f, b)
    found = (least,) + _tree_peak_cost(least, z, f, b)
    if shared is not None:
        shared["least"] = found
    return found


@chains_only("dp")
def dp(model, *, budget=None, levels=500, shared=None):
    """Optimal persistent schedule of a heterogeneous chain (rotor's dynamic program).

    Parameters
    ----------
    model : planner.model.Model
        A chain.
    budget : int or None, keyword-only
        Activation budget in bytes (``input_bytes`` included, as ``peak_bytes``).
        None: no recomputation (the store-all schedule, the least compute).
    levels : int, keyword-only
        Memory levels of the rounded grid (default 500); see Notes.  A
        library and benchmark knob (benchmarks/bench_dp.py ``--levels``): the
        registry, hence :func:`planner.solvers.solve` and the CLI, always uses
        the default, because the grid is refined near the budget anyway.
    shared : dict or None, keyword-only
        Work kept across calls on the same model (``sweep`` passes one dict
        for all its memory sizes): the rounded table of each octave of
        budgets and the least-peak schedule are built once, each table as
        wide as the largest budget of ``shared["budgets"]`` (the budgets the
        caller announced, optional) in its octave needs.  Answers are the
        same as without it.

    Returns
    -------
    ops : list of Op
        Forward and backward ops; the registry inserts the frees.
    params : dict
        ``grid``: ``"none"`` (store-all fits), ``"exact"``, ``"rounded"``,
        ``"exact-fallback"`` (no rounded schedule fitted; a short chain's exact
        table, in float32, did), or ``"least-peak"`` (none fitted; the
        least-peak schedule did);
        ``unit_bytes`` and ``levels`` of the grid; ``dp_compute`` and
        ``dp_peak_bytes``: the DP's own cost and peak of the returned schedule
        (exact, equal to the simulator's).

    Raises
    ------
    NotApplicableError
        On a model that is not a chain.
    TooLargeError
        On a chain too long for the O(n^3 x levels) table (beyond about 1,300
        layers at 500 levels: more than 4 GB of tables or 3e11 steps), when the
        budget is below the store-all peak.
    InfeasibleError
        When no persistent schedule fits; ``least_bytes`` is the least budget
        for which ``dp`` finds one (the exact least peak of the class).
    OptionError
        For ``levels`` below 2.

    Notes
    -----
    Memory grid.  Let ``B = budget - input_bytes`` and ``g`` the gcd of every
    size of the model.  When the exact grid of ``B / g + 1`` levels is small
    (``n^2 x levels <= 2e7`` cells and ``n^3/6 x levels <= 3e8``), the DP runs
    on it: nothing is rounded and the schedule is optimal over the class.
    Otherwise sizes are rounded to the nearest multiple of ``unit`` bytes, the
    power of two with ``B / unit`` in ``(L / 2, L]``, ``L = levels`` doubled
    while the same two limits allow (so short chains get a much finer grid)
    and capped at ``3e8 / (n^3 / 6)`` levels (at least 128) on long chains;
    the table is built up to ``B / unit`` plus 1/32 of headroom.  Budgets of
    one octave share a unit, hence a table (see ``shared``).  Its optimal
    schedules are then evaluated in exact bytes
    at the budget level and by bisection around it, and the cheapest one whose
    *exact* peak fits ``B`` is returned: rounding never produces a schedule that
    does not fit, and near the budget it costs at most the rounding noise of a
    few units.  Whenever ``budget`` is at least the least peak of the class
    (``least_bytes``, found by an exact O(n^3) least-peak DP without a memory
    axis), a schedule is returned, so ``least_bytes`` is exact.  Budgets of at
    least the store-all peak return store-all at once.

    The cost ``dp_compute`` and the peak ``dp_peak_bytes`` are recomputed in
    exact bytes and float64 along the returned schedule with the recurrence's
    own formulas; they equal the simulator's ``compute`` and ``peak_bytes``.

    Complexity: O(n^3 x levels) time, vectorised with numpy over the split and
    the memory axis (segments whose store-everything peak fits are filled in
    O(levels)), O(n^2 x levels) memory (two float32 copies above 2e7 cells).

    References
    ----------
    O. Beaumont, L. Eyraud-Dubois, J. Herrmann, A. Joly, A. Shilova, "Optimal
    checkpointing for heterogeneous chains: how to train deep neural networks
    with limited memory", INRIA report hal-02352969, 2019 (rotor).
    """
    check_levels(levels)
    if shared is not None and shared.get("model") is not model:
        announced = shared.get("budgets", ())
        shared.clear()  # work kept for another model
        shared.update(model=model, budgets=announced)
    if shared is not None:
        shared["avails"] = [a - model.input_bytes for a in shared.get("budgets", ()) if a is not None]
    n = len(model)
    f = [float(layer.forward) for layer in model.layers]
    b = [float(layer.backward) for layer in model.layers]
    z = _sizes(model)
    ops_all = store_all_ops(model)
    sa_peak, sa_cost = _tree_peak_cost(store_all_tree(z), z, f, b)
    params = {"grid": "none", "unit_bytes": None, "levels": None}
    if budget is None or sa_peak + model.input_bytes <= budget:
        params.update(dp_compute=sa_cost, dp_peak_bytes=sa_peak + model.input_bytes)
        return ops_all, params
    work = n**3 / 6 * (levels + levels // 32)
    table_bytes = 4.0 * n * n * (levels + levels // 32)
    if work > _MAX_WORK or table_bytes > _MAX_TABLE_BYTES:
        raise TooLargeError(
            f"dp: a chain of {n} layers at {levels} memory levels is too large for the O(n^3 x levels) "
            f"dynamic program (about {table_bytes / 1e9:.1f} GB of tables); use revolve, sequential "
            "or chen-greedy"
        )
    avail = budget - model.input_bytes
    unit = size_unit(model, with_input=False)
    exact_levels = avail // unit + 1 if avail >= 0 else 0
    known = shared.get("least") if shared is not None else None
    if known is not None and known[1] > avail:
        found = None  # below the least peak of the class: no table can find a schedule
    elif avail >= 0 and n * n * exact_levels <= _EXACT_CELLS and n**3 / 6 * exact_levels <= _WORK:
        # Exact: every size is a whole number of units, nothing is rounded.
        tree = _exact_table(z, f, b, unit, exact_levels, shared).tree(exact_levels - 1)
        if tree is not None:
            peak, cost = _tree_peak_cost(tree, z, f, b)
            params.update(grid="exact", unit_bytes=unit, levels=exact_levels)
            params.update(dp_compute=cost, dp_peak_bytes=peak + model.input_bytes)
            return tree_ops(tree), params
        found = None
    else:
        found = _rounded_search(z, f, b, avail, levels, params, shared) if avail >= 0 else None
        if found is None and avail >= 0 and n**3 / 6 * exact_levels <= _WORK and (
            n * n * exact_levels <= _FALLBACK_EXACT_CELLS
        ):
            # Rounding hid every fitting schedule (a budget within bytes of a peak, sizes of a
            # few bytes beside large ones): a short chain still affords the exact table.
            tree = _Table(z.scaled(unit, "up"), f, b, exact_levels, np.float32).tree(exact_levels - 1)
            if tree is not None:
                found = _tree_peak_cost(tree, z, f, b)[::-1] + (tree,)
                params.update(grid="exact-fallback", unit_bytes=unit, levels=exact_levels)
    if found is None:
        least, lp_peak, lp_cost = _least_peak(z, f, b, shared)
        if lp_peak > avail:
            raise InfeasibleError(
                f"dp: no schedule fits {budget} bytes of activation memory; the least peak of a "
                f"persistent schedule is {lp_peak + model.input_bytes} bytes",
                least_bytes=lp_peak + model.input_bytes,
            )
        found = (lp_cost, lp_peak, least)
        params.update(grid="least-peak")
    cost, peak, tree = found
    params.update(dp_compute=cost, dp_peak_bytes=peak + model.input_bytes)
    return tree_ops(tree), params
