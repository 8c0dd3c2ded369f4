"""``dp-paging``: the persistent chain DP with checkpoints paged to storage (SPEC section 5).

The class is rotor's (Beaumont et al. 2019, see :mod:`planner.solvers.dp`):
``Solve(s, t)`` reverses layers ``s..t`` given the checkpoint ``a[s-1]`` (the
output of layer ``s - 1``; the model input for ``s = 0``) and, for ``t < n -
1``, the gradient of ``a[t]``.  It does one of

* ``F_all``: ``forward(s, save)``, ``Solve(s + 1, t)``, ``backward(s)``;
* ``F_ck`` at ``s'``: ``forward(k, no save)`` for ``k = s..s'-1`` (``a[s-1]``
  stays in memory), ``Solve(s', t)``, ``Solve(s, s'-1)``;
* ``F_pg`` at ``s'`` (new): ``pageout(s-1)`` (unless ``a[s-1]`` is already
  in storage), the same forwards, after which ``a[s-1]`` is freed,
  ``Solve(s', t)`` without ``a[s-1]`` in memory, ``pagein(s-1)``, then
  ``Solve(s, s'-1)`` with ``a[s-1]`` *paged*: a later ``F_pg`` of the same
  checkpoint costs only its pagein.

``F_pg`` is the heterogeneous-chain counterpart of H-Revolve's disk level
(Herrmann & Pallez 2020; Aupy et al.'s Disk-Revolve): a checkpoint is written
when the forward sweep leaves it and read back when the sweep returns to it,
instead of occupying memory while the rest of its segment is reversed.  With
``F_pg`` never chosen the class is exactly ``dp``'s, so ``dp-paging`` is never
worse than ``dp``.

A subproblem comes in three *modes* for ``a[s-1]``: *released* (freed after
its last use inside), *pinned* (the caller's backward of ``s - 1`` reads it:
``needs_output``; it can be neither freed nor paged) and *paged* (released,
and already in storage).  Memory is counted exactly as the simulator does
with the frees of :func:`planner.lowering.insert_frees` (every output freed
right after its last read, the sink's output held until its backward), peaks relative to what the
caller holds besides ``a[s-1]`` and the gradient of ``a[t]``:

* ``F_all``: as in ``dp`` (forward peak ``p + g + o[s] + sv[s] + wf[s]``, the
  rest on top of ``h p + sv[s]``, backward peak ``h p + sv[s] + [no[s] or
  sink] o[s] + o[s] + p + wb[s]``, ``h`` = pinned or ``needs_inputs[s]``);
* ``F_ck``: forward ``k`` peaks at ``p + g + [k > s] o[k-1] + o[k] + wf[k]``,
  then ``Solve(s', t)`` on top of ``p``, then ``Solve(s, s'-1)``;
* ``F_pg``: the same forwards, but ``p`` only counts during ``forward(s)``;
  ``Solve(s', t)`` runs on top of nothing; the pagein adds ``p`` to the
  ``g' = o[s'-1]`` left by the right part, which ``Solve(s, s'-1)``'s own
  first forward already counts.

The cost is compute plus transfer time: a pageout costs ``write_latency_s +
o / write_bytes_per_s``, a pagein ``read_latency_s + o / read_bytes_per_s``,
converted to the model's ``time_unit``.
"""

from dataclasses import dataclass, replace

import numpy as np
from numpy.lib.stride_tricks import as_strided

from planner.device import time_scale
from planner.errors import InfeasibleError, NotApplicableError, TooLargeError
from planner.lowering import insert_frees, size_unit
from planner.model import chains_only
from planner.solvers._persistent import PAGED, PINNED, RELEASED, ChainSizes, chain_arrays, check_levels
from planner.solvers._overlap import overlap
from planner.solvers._persistent import build_tree, store_all_tree, tree_ops

__all__ = ["dp_paging", "transfer_costs"]

# Exact byte grid when the table takes at most _EXACT_TABLE_BYTES and the work
# (n^3 / 6 x levels x 3 modes without repeated layers, see _repeats) is at most
# _WORK; a rounded grid is refined (x2 at a time) up to _EXACT_CELLS cells.
_EXACT_CELLS = 4_000_000
_EXACT_TABLE_BYTES = 5e8
_WORK = 2e8
_MAX_WORK = 1e9  # about 45 s of numpy
_MAX_TABLE_BYTES = 1.5e9
_MIN_LEVELS = 64
#: Relative slack of :meth:`_Table._choice` (sums of the same terms in another order).
_TIE = 1e-12
#: About how many sums :func:`_split_min` takes in one call.
_CHUNK = 32768
_SECONDS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


# --------------------------------------------------------------------------
# Transfer costs


def transfer_costs(model, storage):
    """Per-layer ``(pageout, pagein)`` times in the model's time unit, as numpy arrays.

    Raises
    ------
    ModelError
        The model's ``time_unit`` is not a time (``s``, ``ms``, ``us``, ``ns``).
    """
    scale = time_scale(model)
    outs = [layer.output_bytes for layer in model.layers]
    write = np.array([storage.pageout_seconds(o) * scale for o in outs])
    read = np.array([storage.pagein_seconds(o) * scale for o in outs])
    return write, read


# --------------------------------------------------------------------------
# Sizes and the per-subproblem formulas


@dataclass(frozen=True)
class _Chain(ChainSizes):
    """Sizes (grid units or bytes, int64), flags and what may be paged."""

    pageable: np.ndarray  # pageable[i]: a[i] may be paged out

    def can_page(self, s):
        return s > 0 and self.o[s - 1] > 0 and bool(self.pageable[s - 1])

    def modes(self, s):
        """The modes that differ for a subproblem starting at ``s``."""
        if s == 0 or self.o[s - 1] == 0:
            return (RELEASED,)
        page = self.can_page(s)
        modes = (RELEASED, PINNED) if (page or not self.ni[s]) else (RELEASED,)
        return modes + ((PAGED,) if page else ())

    def key(self, s, mode):
        return mode if mode in self.modes(s) else RELEASED

    def split_peaks(self, s):
        """(F_ck, F_pg) peaks of ``forward(k)`` for ``k = s..s+j``, without ``g``.

        ``F_ck`` holds ``a[s-1]`` throughout; ``F_pg`` only during ``forward(s)``.
        """
        q = self.chain_peaks(s).astype(np.int64)
        p = self.prev(s)
        return q + p, np.maximum(q, q[0] + p)


def _chain(model, pageable):
    return _Chain(**chain_arrays(model, np.int64), pageable=np.asarray(pageable, dtype=bool))


@dataclass(frozen=True)
class _Costs:
    f: np.ndarray
    b: np.ndarray
    out: np.ndarray  # pageout time of a[i]
    inn: np.ndarray  # pagein time of a[i]

    def pg(self, s, mode):
        """Transfer time of ``F_pg`` at ``s`` in ``mode``."""
        return (0.0 if mode == PAGED else float(self.out[s - 1])) + float(self.inn[s - 1])


# --------------------------------------------------------------------------
# Decision trees (planner.solvers._persistent): ("all", s, t, mode, child) or
# ("ck"|"pg", s, t, mode, split, right, left)


def _tree_eval(tree, z, c):
    """Exact (peak above ``input_bytes``, cost, storage peak bytes) of a tree."""
    peak = [0] * len(tree)
    cost = [0.0] * len(tree)
    store = [0] * len(tree)  # storage peak in bytes while the node runs, paged a[s-1] excluded
    for x in range(len(tree) - 1, -1, -1):
        node = tree[x]
        s, t, mode = node[1], node[2], node[3]
        if node[0] == "all":
            child = node[4]
            need, off = z.all_need(s, t, mode)
            cst = float(c.f[s] + c.b[s])
            st = 0
            if child >= 0:
                need = max(need, off + peak[child])
                cst += cost[child]
                st = store[child]
        else:
            split, right, left = node[4], node[5], node[6]
            ck, pg = z.split_peaks(s)
            g, p = z.grad(t), z.prev(s)
            fch = float(np.sum(c.f[s:split]))
            # The right part's paged checkpoint a[split-1] stays in storage until
            # backward(split - 1), the left part's first backward (counted over
            # the whole left part: an upper bound).
            leak = int(z.o[split - 1]) if _pages_own(tree, right) else 0
            st = max(store[right], store[left] + leak)
            if node[0] == "ck":
                need = max(g + int(ck[split - s - 1]), p + peak[right], peak[left])
                cst = fch + cost[right] + cost[left]
            else:
                need = max(g + int(pg[split - s - 1]), peak[right], peak[left])
                cst = fch + c.pg(s, mode) + cost[right] + cost[left]
                # a[s-1] is in storage from here until the caller's backward(s - 1)
                st += 0 if mode == PAGED else int(z.o[s - 1])
        peak[x], cost[x], store[x] = int(need), cst, st
    return peak[0], cost[0], store[0]


def _pages_own(tree, x):
    """Whether the subtree at ``x`` pages its own checkpoint ``a[s-1]``."""
    while x >= 0:
        node = tree[x]
        if node[0] == "pg":
            return True
        if node[0] == "all":
            return False
        x = node[6]  # F_ck: the left part keeps the same checkpoint
    return False


def _cells(z):
    """``(s, t, p, g, ck, pg)`` for every ``Solve(s, t)`` in the order the recurrence fills them.

    ``s`` from ``n - 1`` down, ``t`` from ``s`` up (every part a cell reads is
    filled before it); ``p`` and ``g`` are ``a[s-1]``'s and the gradient's
    sizes, ``ck`` and ``pg`` the forward chains' peaks (:meth:`_Chain.split_peaks`,
    None where ``s`` is the sink).
    """
    n = z.n
    for s in range(n - 1, -1, -1):
        p = z.prev(s)
        ck, pg = z.split_peaks(s) if s < n - 1 else (None, None)
        for t in range(s, n):
            yield s, t, p, z.grad(t), ck, pg


# --------------------------------------------------------------------------
# The memory-indexed table


class _Table:
    """``C(s, t, mode, m)`` for ``m = 0..W-1`` grid units.

    Filled by diagonals ``k = t - s``: ``Solve(s, s + k)`` reads only shorter
    segments (its left parts ``(s, s + j)`` and right parts ``(s + 1 + j,
    s + k)`` for ``j < k``), so a whole diagonal is one numpy computation over
    ``s``, the split and the memory axis, on strided views of the table (no
    copies of the parts), which is stored by diagonals so that every part of a
    split is one contiguous block: ``S[mode, t - s, s, m]`` holds ``C(s, t,
    mode, m) + fsum[t + 1]`` (``fsum``: prefix sums of forward times), so that a split's
    value ``C(s', t) + C(s, s' - 1) + f(s..s'-1)`` is that of ``(s', t)`` plus
    that of ``(s, s' - 1)`` minus ``fsum[t + 1] + fsum[s]``: one addition per split and level.  Every mode is
    filled for every ``s``: a mode that does not differ for ``s``
    (:meth:`_Chain.modes`) gets the released mode's values from the same
    formulas.  Choices are not stored: :meth:`_choice` recomputes the options
    of one cell with the same arithmetic.  What the fill never writes (rows
    ``s >= n - k`` of diagonal ``k``, modes read nowhere) is never read.
    """

    def __init__(self, z, c, width, repeats=None):
        self.z, self.c, self.W = z, c, width
        self.repeats = _repeats(_layer_ids(z, c), z.n) if repeats is None else repeats
        n = z.n
        self.page_any = any(z.can_page(s) for s in range(n))
        self.fsum = np.concatenate(([0.0], np.cumsum(c.f)))
        self.p = np.array([z.prev(s) for s in range(n)], dtype=np.int64)
        self.g = np.array([z.grad(t) for t in range(n)], dtype=np.int64)
        self.ckp = np.full((n, n), np.iinfo(np.int64).max // 4, dtype=np.int64)
        self.pgp = self.ckp.copy()
        for s in range(n - 1):
            ck, pg = z.split_peaks(s)
            self.ckp[s, : len(ck)], self.pgp[s, : len(pg)] = ck, pg
        prev = np.concatenate(([0.0], np.asarray(c.out, dtype=float)[:-1]))
        self.pg_in = np.concatenate(([0.0], np.asarray(c.inn, dtype=float)[:-1]))
        self.pg_out = prev
        # Only what the fill writes is ever read (rows s < n - k of diagonal k, the modes
        # it fills): the rest is never touched, so never paged in.
        self.S = np.empty((3 if self.page_any else 2, n, n, width))
        self._fill()

    def _pg_cost(self, s, mode):
        return (0.0 if mode == PAGED else self.pg_out[s]) + self.pg_in[s]

    def _fill(self):
        z, c, W, S = self.z, self.c, self.W, self.S
        n = z.n
        cols = np.arange(W)
        p, g, fsum = self.p, self.g, self.fsum
        o, sv, wf, wb = (np.asarray(a, dtype=np.int64) for a in (z.o, z.sv, z.wf, z.wb))
        fb = c.f + c.b
        sub_mode = np.where(z.no, PINNED, RELEASED)
        pageable = np.array([z.can_page(s) for s in range(n)])
        # The modes read anywhere: pinned by F_all's sub-problem after a layer whose
        # backward reads its output, paged where a checkpoint can be paged.  A mode is
        # filled for every s (where it is not read, from the same formulas).
        modes = [RELEASED] + ([PINNED] if z.no[:-1].any() else []) + ([PAGED] if self.page_any else [])
        ad, a_s, am = S.strides[1:]
        biggest = max(k * (n - k) for k in range(n)) * W
        shift_buf, split_buf = np.empty(biggest), np.empty(max(n * W, _CHUNK))  # reused: fresh arrays cost page faults
        for k, cls, reps in self.repeats:
            L = n - k
            # One row per class of equal segments; the others are copied from it.
            full = len(reps) == L
            s = np.arange(L) if full else reps
            rows = slice(0, L) if full else reps  # s, as a view where it can be
            t = s + k
            if k > 0:
                sub = S[sub_mode[s], k - 1, s + 1]  # Solve(s + 1, t) in F_all's sub mode, (R, W)
                # rights[j, s] = Solve(s + 1 + j, t): diagonal k - 1 - j, from s + 1 + j
                rights = as_strided(S[RELEASED, k - 1, 1:], (k, L, W), (a_s - ad, a_s, am))
                if not full:
                    rights = rights[:, reps]
                # shifted[j, s, m] = rights[j, s, m - p[s]], inf below F_ck's thresholds (above p[s])
                shifted = _shift_rows(rights, p[s], shift_buf[: k * len(s) * W].reshape(k, len(s), W))
                _poison(shifted, (self.ckp[s, :k] + g[t][:, None]).T)
                base = fsum[t + 1] + fsum[s]  # both shifts, subtracted from a split's sum
                shift = (fsum[t + 1] - base)[:, None]
                if self.page_any:
                    # F_pg's splits are the same in the released and the paged mode (its
                    # left parts are paged either way); only the pageout's cost differs.
                    pg_rows = np.flatnonzero(pageable[s])
                    pg_best = np.full((len(s), W), np.inf)
                    if len(pg_rows):
                        q = _rows(pg_rows, len(s))
                        lefts = S[PAGED][:k, _rows(s[q], L)]
                        thresholds = self.pgp[s[q], :k] + g[t[q]][:, None]
                        pg_best[q] = _split_min(rights[:, q], lefts, split_buf, thresholds) + shift[q]
            for mode in modes:
                h = p[s] if mode == PINNED else np.where(z.ni[s], p[s], 0)
                need_f = p[s] + g[t] + o[s] + sv[s] + wf[s]
                need_b = h + sv[s] + np.where(z.no[s], o[s], 0) + o[s] + p[s] + wb[s]
                off = h + sv[s]
                lo = np.maximum(np.maximum(need_f, need_b), off)
                ok = cols[None, :] >= lo[:, None]
                if k == 0:
                    row = np.where(ok, (fb[s] + fsum[t + 1])[:, None], np.inf)
                else:
                    idx = np.clip(cols[None, :] - off[:, None], 0, W - 1)
                    row = np.where(ok, fb[s][:, None] + np.take_along_axis(sub, idx, axis=1), np.inf)
                    lefts = S[mode][:k, rows]  # lefts[j, s] = Solve(s, s + j)
                    best = _split_min(shifted, lefts, split_buf) + shift
                    np.minimum(row, best, out=row)
                    if mode != PINNED and self.page_any:
                        cost = (0.0 if mode == PAGED else self.pg_out[s]) + self.pg_in[s]
                        best = pg_best + np.broadcast_to(cost, (len(s),))[:, None]
                        np.minimum(row, best, out=row)
                S[mode, k, rows] = row
            if not full:
                # C(s, t) of a copy is its class's C: only the stored fsum[t + 1] differs.
                for mode in modes:
                    src = S[mode, k, reps[cls]]
                    S[mode, k, :L] = src + (fsum[k + 1 : n + 1] - fsum[reps[cls] + k + 1])[:, None]

    def tree(self, m):
        """The optimal tree of ``Solve(0, n-1)`` within ``m`` units, or None."""
        z = self.z
        if not np.isfinite(self.S[RELEASED, z.n - 1, 0, m]):
            return None
        return build_tree(z, self._choice, m)

    def _choice(self, s, t, mode, m):
        """The option that attains ``C(s, t, mode, m)``, the options in the fill's order.

        Up to rounding: a segment copied from an equal one (:func:`_repeats`)
        was summed in another order.
        """
        z, c, S, fsum = self.z, self.c, self.S, self.fsum
        target = S[mode, t - s, s, m]
        target += _TIE * max(1.0, abs(target))
        need, off = z.all_need(s, t, mode)
        if m >= max(need, off):
            v = c.f[s] + c.b[s] + (S[z.sub_mode(s), t - s - 1, s + 1, m - off] if s < t else fsum[t + 1])
            if v <= target:
                return "all", None
        k = t - s
        base = fsum[t + 1] + fsum[s]
        if k and m >= self.p[s]:
            j = np.arange(k)
            v = S[RELEASED, k - 1 - j, s + 1 + j, m - self.p[s]] + S[mode, j, s, m]
            v[self.ckp[s, :k] + self.g[t] > m] = np.inf
            v = v + (fsum[t + 1] - base)
            if v.min() <= target:
                return "ck", s + 1 + int(np.argmin(v))
        if k and mode != PINNED and self.page_any and z.can_page(s):
            j = np.arange(k)
            v = S[RELEASED, k - 1 - j, s + 1 + j, m] + S[PAGED, j, s, m]
            v[self.pgp[s, :k] + self.g[t] > m] = np.inf
            v = v + (fsum[t + 1] - base) + self._pg_cost(s, mode)
            if v.min() <= target:
                return "pg", s + 1 + int(np.argmin(v))
        raise RuntimeError(f"dp-paging: no choice for Solve({s}, {t}, {mode}, {m})")  # pragma: no cover


def _rows(rows, size):
    """``rows`` (increasing indices below ``size``), as a slice (a view, not a copy) when it is all of them."""
    return slice(0, size) if len(rows) == size else rows


def _shift_rows(rights, p, out):
    """``rights[j, s, m - p[s]]`` into ``out`` (below ``p[s]`` left as it was: :func:`_poison` sets it)."""
    _, L, W = rights.shape
    if (p == p[0]).all():
        q = min(int(p[0]), W)
        out[:, :, q:] = rights[:, :, : W - q]
        return out
    for s in range(L):
        q = min(int(p[s]), W)
        out[:, s, q:] = rights[:, s, : W - q]
    return out


def _layer_ids(z, c):
    """Equal ids for layers whose every size, flag and cost the recurrence reads are equal."""
    n = z.n
    last = np.arange(n) == n - 1
    keys = np.column_stack(
        [np.asarray(a, dtype=float) for a in (z.o, z.sv, z.wf, z.wb, z.ni, z.no, z.pageable, last)]
        + [np.asarray(a, dtype=float) for a in (c.f, c.b, c.out, c.inn)]
    )
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


def _repeats(ids, n):
    """``[(k, cls, reps)]``, one per diagonal ``k``: ``Solve(s, s + k)`` of ``s`` in one class are equal.

    Two segments are equal when their layers ``s - 1..t`` are equal one by one
    (``ids``; no layer before the input): every size, cost and flag the
    recurrence reads is then the same.  ``cls[s]`` is the class of ``s``,
    ``reps`` the first ``s`` of each class (increasing).
    """
    ids = np.asarray(ids, dtype=np.int64)
    base = int(ids.max()) + 2 if len(ids) else 1
    cls = np.concatenate(([-1], ids[:-1])) + 1  # the layer before s (0: the input)
    out = []
    for k in range(n):
        L = n - k
        # (class of (s, t - 1), layer t) as one integer; fewer than n classes each
        _, first, cls = np.unique(cls[:L] * base + ids[k:], return_index=True, return_inverse=True)
        cls = cls.reshape(-1)
        base = max(base, n + 1)
        order = np.argsort(first)  # classes numbered by their first segment
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        cls = rank[cls]
        out.append((k, cls, np.sort(first)))
    return out


def _split_min(a, b, buf, thresholds=None):
    """``min over j of a[j, s, m] + b[j, s, m]``, only where ``thresholds[s, j] <= m`` if given (inf where none).

    A running minimum over the splits ``j``, a few at a time (about
    :data:`_CHUNK` sums, so that each step stays in cache; ``buf``: a reused
    buffer); a split's sums below its thresholds are set to inf first.
    """
    k, R, W = a.shape
    best = np.empty((R, W))
    step = max(1, _CHUNK // best.size)
    for j in range(0, k, step):
        c = min(step, k - j)
        x = buf[: c * best.size].reshape(c, R, W)
        np.add(a[j : j + c], b[j : j + c], out=x)
        if thresholds is not None:
            _poison(x, thresholds[:, j : j + c].T)
        if j == 0:
            np.min(x, axis=0, out=best)
        else:
            np.minimum(best, x[0] if c == 1 else np.min(x, axis=0), out=best)
    return best


def _poison(x, thresholds):
    """``x[j, s, m] = inf`` for ``m < thresholds[j, s]``, in place."""
    W = x.shape[2]
    top = min(int(thresholds.max()), W)
    if top:
        np.copyto(x[:, :, :top], np.inf, where=np.arange(top) < thresholds[:, :, None])


# --------------------------------------------------------------------------
# Least peak (no memory axis)


def _least_peak_tree(z, c):
    """A least-peak tree of the class (ties: least cost), exact integers, O(n^3)."""
    best = {}  # (mode, s, t) -> (peak, cost, option)
    for s, t, p, g, ck, pg in _cells(z):
        for mode in z.modes(s):
            need, off = z.all_need(s, t, mode)
            cost = float(c.f[s] + c.b[s])
            if s < t:
                sp, sc, _ = best[z.key(s + 1, z.sub_mode(s)), s + 1, t]
                need, cost = max(need, off + sp), cost + sc
            cand = [(need, cost, ("all", None))]
            for split in range(s + 1, t + 1):
                rp, rc, _ = best[RELEASED, split, t]
                fch = float(np.sum(c.f[s:split]))
                lp, lc, _ = best[mode, s, split - 1]
                need = max(g + int(ck[split - s - 1]), p + rp, lp)
                cand.append((need, fch + rc + lc, ("ck", split)))
                if mode != PINNED and z.can_page(s):
                    lp, lc, _ = best[PAGED, s, split - 1]
                    need = max(g + int(pg[split - s - 1]), rp, lp)
                    cand.append((need, fch + c.pg(s, mode) + rc + lc, ("pg", split)))
            best[mode, s, t] = min(cand, key=lambda x: (x[0], x[1]))
    return build_tree(z, lambda s, t, mode, _m: best[z.key(s, mode), s, t][2])


# --------------------------------------------------------------------------
# Solving


def _grid_solve(model, z, c, avail, levels, params):
    """Cheapest tree of the table within ``avail`` bytes: ``(cost, peak, store, tree)`` or None."""
    n = z.n
    unit = size_unit(model, with_input=False)
    width = avail // unit + 1
    cells = 3 * n * (n + 1) / 2
    # Steps per memory level: three modes x the splits of every distinct segment
    # (n^3 / 2 without repeated layers).
    repeats = _repeats(_layer_ids(z, c), n)  # equal in bytes: equal on any grid
    steps = 3 * sum(k * len(reps) for k, _, reps in repeats)
    if cells * width * 20 <= _EXACT_TABLE_BYTES and steps * width <= _WORK:
        params.update(grid="exact", unit_bytes=unit, levels=width)
        tree = _Table(z.scaled(unit), c, width, repeats).tree(width - 1)
    else:
        # Rounded up: every size is overestimated, so a schedule of the table fits.
        grid = levels
        while cells * grid * 2 <= _EXACT_CELLS and steps * grid * 2 <= _WORK:
            grid *= 2
        # Long chains: fewer levels (dp's own answer is still taken when cheaper),
        # down to _MIN_LEVELS; beyond, refused.
        while grid > _MIN_LEVELS and (steps * grid > _MAX_WORK or cells * grid * 20 > _MAX_TABLE_BYTES):
            grid //= 2
        if steps * grid > _MAX_WORK or cells * grid * 20 > _MAX_TABLE_BYTES:
            raise TooLargeError(
                f"dp-paging: a chain of {n} layers is too large for the O(n^3 x levels) "
                "dynamic program; use dp, revolve or page-all"
            )
        unit = max(1, -(-avail // grid), unit)
        width = avail // unit + 1
        params.update(grid="rounded", unit_bytes=unit, levels=width)
        tree = _Table(z.scaled(unit), c, width, repeats).tree(width - 1)
    if tree is None:
        return None
    peak, cost, store = _tree_eval(tree, z, c)
    return cost, peak, store, tree


def _solve_mask(model, z, c, avail, levels, params):
    """The grid solution, else the least-peak tree if it fits, else None (+ least peak)."""
    found = _grid_solve(model, z, c, avail, levels, params)
    if found is not None:
        return found, None
    least = _least_peak_tree(z, c)
    peak, cost, store = _tree_eval(least, z, c)
    if peak <= avail:
        params.update(grid="least-peak")
        return (cost, peak, store, least), None
    return None, peak


def _least_masks(model, z, c, capacity):
    """Pageable sets to try for the least peak within ``capacity``: the least-peak tree's, cut to fit, and none."""
    return _capacity_masks(z, _least_peak_tree(z, c), capacity) + [np.zeros(z.n, dtype=bool)]


def _least_within(model, z, c, capacity):
    """The least peak (above ``input_bytes``) of a schedule whose paged outputs fit ``capacity`` (None: any).

    The least-peak tree's when its paged outputs fit; else the least over the
    sets of :func:`_least_masks` (paging none, ``dp``'s class, always fits).
    """
    peak, _, store = _tree_eval(_least_peak_tree(z, c), z, c)
    if capacity is None or store <= capacity:
        return peak
    found = []
    for mask in _least_masks(model, z, c, capacity):
        zm = _chain(model, mask)
        p, _, s = _tree_eval(_least_peak_tree(zm, c), zm, c)
        if s <= capacity:
            found.append(p)
    return min(found)


def _capacity_masks(z, tree, capacity):
    """Sets of pageable layers whose outputs fit ``capacity`` together (greedy, two orders)."""
    paged = sorted({node[1] - 1 for node in tree if node[0] == "pg"})
    masks = []
    for order in (sorted(paged, key=lambda i: -int(z.o[i])), sorted(paged, key=lambda i: int(z.o[i]))):
        chosen, total = [], 0
        for i in order:
            if total + int(z.o[i]) <= capacity:
                chosen.append(i)
                total += int(z.o[i])
        mask = np.zeros(z.n, dtype=bool)
        mask[chosen] = True
        masks.append(mask)
    return masks


@chains_only("dp-paging")
def dp_paging(model, *, budget=None, storage=None, levels=500, power_w=None, time_budget=None):
    """Optimal persistent schedule of a chain with checkpoints paged to storage.

    Parameters
    ----------
    model : planner.model.Model
        A chain.  With a ``storage``, its ``time_unit`` must be a time.
    budget : int or None, keyword-only
        Activation budget in bytes (``input_bytes`` included).  None: store-all.
    storage : planner.device.Storage or None, keyword-only
        Read/write speeds, latencies and optional capacity ``bytes``.  None:
        no paging (``dp``'s class).
    levels : int, keyword-only
        Memory levels of the rounded grid (default 500), see Notes.
    power_w : float or None, keyword-only
        The objective energy: the device's compute power in watts; with the
        storage's ``transfer_power_w`` every forward, backward and transfer is
        charged its joules (time x power) instead of its time, so the
        schedule has the least energy of the class within the budget
        (``dp_cost`` is then in joules).  Energy does not depend on whether
        transfers overlap compute.
    time_budget : float or None, keyword-only
        The most seconds the step may take (its time with transfers beside
        compute when the storage overlaps).  With ``power_w``: the least
        energy found within it, by :func:`_energy_within` (``params``
        ``time_budget_method`` says ``unconstrained``, optimal for the class,
        or ``lagrangian``, a heuristic); without: the fastest schedule, refused
        above it.  Needs a model timed in a time unit.

    Returns
    -------
    ops : list of Op
        Forward, backward, pageout, pagein and free ops (the frees of
        :func:`planner.lowering.insert_frees`: every output freed right after its last read).
    params : dict
        ``grid`` (``"none"``, ``"exact"``, ``"rounded"``, ``"least-peak"``),
        ``unit_bytes``, ``levels``, ``paged`` (layers whose output is paged
        out), ``dp_cost`` (compute plus transfer) and ``dp_peak_bytes`` of
        the returned schedule by the recurrence's own exact formulas (equal to
        the simulator's), and ``storage_bound_bytes`` (an upper bound of the
        bytes in storage at once).

    Raises
    ------
    NotApplicableError
        The model is not a chain.
    TooLargeError
        The chain is too long for the table (above about 310 layers without repeated layers).
    InfeasibleError
        No schedule of the class fits; ``least_bytes`` is the class's exact
        least peak (with paging).  Or none found fits the time budget
        (``least_bytes`` None).
    OptionError
        ``levels`` or ``time_budget`` out of range.
    ModelError
        A storage is given and the model's time unit is not a time.

    Notes
    -----
    The recurrence (module docstring) over ``C(s, t, mode, m)`` for ``m`` on a
    memory grid: the exact byte grid (sizes divided by their gcd) when its
    table takes at most 0.5 GB and 2e8 steps, the schedule then being optimal
    over the class; otherwise sizes are rounded *up* to ``unit = ceil(B / L)`` bytes
    (``L = levels``, doubled while the limits allow, halved down to 64 while
    the table would take more than 1e9 steps or 1.5 GB), so every schedule the
    table returns fits, and ``dp``'s own answer is taken when it is cheaper,
    so that ``dp-paging`` is never worse than ``dp``.  A storage capacity
    (``storage.bytes``) that could be exceeded is met by restricting paging
    to greedy subsets of the layers the unrestricted schedule pages whose
    outputs fit the capacity together (not optimal then, always within it).

    O(n^3 x levels) time (three modes, two options per split), filled one
    diagonal ``t - s`` at a time, vectorised with numpy over ``s``, the split
    and the memory axis (an O(n) loop of array operations); O(n^2 x levels)
    memory.  Segments whose layers ``s - 1..t`` equal another's one by one
    (repeated layers: a uniform chain, repeated blocks) are solved once per
    diagonal and copied, so a chain of equal layers takes O(n^2 x levels).
    With transfers beside compute, up to four tables (the transfer shares,
    :func:`_fastest`: share 0 first, none more once a step as short as its
    compute is found) and the overlap pass for each distinct schedule that
    could still beat the best.  CPU seconds with the ``rpi4-4gb-sd`` storage
    at 30-50% of store-all, transfers beside compute (serial in brackets),
    2026-12-08 on a shared 2-core x86 (``bench_paging.py --timing``): uniform
    chains (exact grid) 0.14-0.19 s on 100 layers, 0.7-1.3 s on 300
    (0.02-0.03 s, 0.17-0.24 s); random chains (rounded grid, no repeated
    layers) 2.7-2.9 s on 100 layers at 500 levels (1.2 s), 8.6-9.3 s on 300
    at 62 levels (4.8-5.3 s).

    References
    ----------
    O. Beaumont, L. Eyraud-Dubois, J. Herrmann, A. Joly, A. Shilova, "Optimal
    checkpointing for heterogeneous chains", INRIA hal-02352969, 2019.
    J. Herrmann, G. Pallez, "H-Revolve: a framework for adjoint computation on
    synchronous hierarchical platforms", ACM TOMS 46(2), 2020.
    G. Aupy, J. Herrmann, P. Hovland, Y. Robert, "Optimal multistage algorithm
    for adjoint computation", SIAM J. Sci. Comput. 38(3), 2016.
    """
    check_levels(levels)
    if time_budget is not None:
        return _within_time(model, budget, storage, levels, power_w, time_budget)
    if power_w is not None:
        ops, params = _dp_paging(model, budget, storage, levels, weights=_energy_weights(model, storage, power_w))
        if storage is not None and storage.overlap:  # the same ops, so the same joules, in less time
            ops, _ = overlap(model, ops, storage, budget)
        return ops, dict(params, objective="energy")
    return _fastest(model, budget, storage, levels)


def _fastest(model, budget, storage, levels):
    """:func:`dp_paging`'s least-time schedule: ``(ops, params)``.

    With transfers beside compute the recurrence charges a transfer in full,
    an upper bound of what it costs on a copy engine.  The schedules planned
    with the transfers charged at 1, 1/2, 1/4 and 0 of their time
    (:data:`_TRANSFER_SHARES`) are overlapped (pageins earlier, frees after
    pageouts later) and the fastest on the device's timeline is kept, the
    first share of that order on ties.  Share 0 is planned first: its
    schedule computes least of the class, and no step is shorter than its
    compute (planner.timing), so once a step that short is found no other
    share can beat it and none is planned (one could only tie, and would
    have been kept if earlier: the step is the same, the schedule may be
    another); not with a storage capacity, met by each share with its own
    restricted class.  The shares are tried in :data:`_SHARE_ORDER`; a share's
    schedule is overlapped only if it can still win (:func:`_cannot_beat`).
    """
    from planner.simulate import simulate

    if storage is None or not storage.overlap or budget is None:
        return _dp_paging(model, budget, storage, levels)
    serial_storage = replace(storage, overlap=False)
    plain = {}  # dp's own schedule, the same for every share
    least = None  # compute of share 0's schedule: the least of the class (within rounding)
    # ... of every share's class unless a storage capacity restricts some (each its own way)
    bounded = getattr(storage, "bytes", None) is None
    best, done = None, {}  # best: (step, rank, ops, result, params); done: ops -> overlapped
    planned = {}
    for rank in _SHARE_ORDER:
        if best is not None and bounded and best[0] <= least * (1 + _TIE):
            break  # no share's step is below the least compute
        share = _TRANSFER_SHARES[rank]
        if rank not in planned:
            planned[rank] = _dp_paging(model, budget, storage, levels, share, plain=plain)
        ops, params = planned[rank]
        serial = simulate(model, ops, storage=serial_storage)
        if least is None:  # share 0: the least compute of the class
            least = serial.compute
            continue
        key = tuple(ops)
        if key not in done:  # the same ops as another share's give the same step
            if _cannot_beat(serial, rank, best):
                continue
            done[key] = overlap(model, ops, storage, budget)
        ops, result = done[key]
        if best is None or (result.step_time, rank) < best[:2]:
            best = (result.step_time, rank, ops, result, dict(params, transfer_share=share))
    _, _, ops, result, params = best
    params["paged"] = sorted({model.layers[op.layer].name for op in ops if op.kind.value == "pageout"},
                             key=[layer.name for layer in model.layers].index)
    return ops, dict(params, dp_cost=result.step_time)


#: The shares of the transfers' time the recurrence is run with, in the order that wins ties.
_TRANSFER_SHARES = (1.0, 0.5, 0.25, 0.0)
#: The order :func:`_fastest` tries them in (ranks in _TRANSFER_SHARES): share 0 planned
#: first for the least compute, 1/4 (often the fastest) overlapped first, share 0 last.
_SHARE_ORDER = (3, 2, 1, 0, 3)

#: Bisection steps on the Lagrange multiplier of a time budget (each one solve of the recurrence).
_LAGRANGE_STEPS = 12


def _within_time(model, budget, storage, levels, power_w, time_budget):
    """:func:`dp_paging` under a time budget: the least energy found within it, or (time) the fastest.

    With the objective energy, the least ``E + lambda x T`` over the class for
    multipliers ``lambda`` (joules per second) found by bisection: the
    least-energy schedule when it is within the budget (``lambda = 0``: then
    optimal for the class), else the least-energy schedule among those of
    the multipliers tried that are within it, the fastest schedule always
    one of them.  A Lagrangian answer is not proven optimal: schedules
    between two points of the lower convex hull of (time, energy) are
    never found, and the recurrence charges transfers serially while the
    budget is on the overlapped step.
    """
    from planner.objective import TimeBudgetError, check_time_budget
    from planner.simulate import simulate

    check_time_budget(time_budget)
    per_second = time_scale(model)
    limit = time_budget * per_second * (1 + 1e-9)

    def measured(ops):
        if storage is not None and storage.overlap:
            return overlap(model, ops, storage, budget)
        return ops, simulate(model, ops, storage=storage)

    fast_ops, fast_params = _fastest(model, budget, storage, levels)
    fast_ops, fast = measured(fast_ops)
    if fast.step_time > limit:
        raise TimeBudgetError(
            f"dp-paging: no schedule found within the time budget of {time_budget:g} s; the fastest that fits "
            f"{budget} bytes takes {fast.step_time / per_second:.6g} s",
            seconds=fast.step_time / per_second,
        )
    if power_w is None:
        return fast_ops, dict(fast_params, time_budget_s=time_budget)
    wc, wt = _energy_weights(model, storage, power_w)

    def joules(result):
        return result.compute * wc + result.transfer * wt

    plain = {}

    def attempt(lam):  # lam: joules per unit of the model's time
        ops, params = _dp_paging(model, budget, storage, levels, weights=(wc + lam, wt + lam), plain=plain)
        ops, result = measured(ops)
        return ops, params, result

    ops, params, result = attempt(0.0)
    base = dict(objective="energy", time_budget_s=time_budget)
    if result.step_time <= limit:
        return ops, dict(params, **base, time_budget_method="unconstrained", lagrange_w=0.0)
    best = (joules(fast), fast_ops, fast_params, None)
    low, high = 0.0, wc  # high: joules per unit of time as large as the compute power
    for _ in range(_LAGRANGE_STEPS):  # raise high until it is within the budget
        ops, params, result = attempt(high)
        if result.step_time <= limit:
            best = min(best, (joules(result), ops, params, high), key=lambda b: b[0])
            break
        low, high = high, high * 8
    else:
        high = None
    for _ in range(_LAGRANGE_STEPS if high is not None else 0):
        lam = (low * high) ** 0.5 if low > 0 else high / 8
        ops, params, result = attempt(lam)
        if result.step_time <= limit:
            best = min(best, (joules(result), ops, params, lam), key=lambda b: b[0])
            high = lam
        else:
            low = lam
    _, ops, params, lam = best
    return ops, dict(params, **base, time_budget_method="lagrangian",
                     lagrange_w=None if lam is None else lam * per_second)


def _cannot_beat(serial, rank, best):
    """Whether overlapping a share's schedule cannot win against ``best`` (then skipped).

    No overlap makes a step shorter than its compute or its transfers
    (planner.timing), which the overlap pass does not change (``serial``:
    the schedule replayed with serial transfers); a tie wins only for a
    share earlier in :data:`_TRANSFER_SHARES` (``rank``).
    """
    if best is None:
        return False
    lower = max(serial.compute, serial.transfer)
    return lower > best[0] or (lower == best[0] and rank > best[1])


def _energy_weights(model, storage, power_w):
    """(joules per unit of compute time, per unit of transfer time) in the model's time unit."""
    from planner.errors import OptionError

    if not (isinstance(power_w, (int, float)) and power_w > 0):
        raise OptionError(f"power_w must be a number of watts > 0, got {power_w!r}")
    per_second = 1.0 / time_scale(model)
    if storage is not None and storage.transfer_power_w is None:
        raise OptionError("the objective energy needs the storage's transfer_power_w")
    return power_w * per_second, (0.0 if storage is None else storage.transfer_power_w * per_second)


def _dp_paging(model, budget, storage, levels, transfer_share=1.0, weights=(1.0, 1.0), plain=None):
    """:func:`dp_paging` with transfers charged at ``transfer_share`` of their time.

    ``weights`` multiply compute and transfer times (joules per unit of time for
    the objective energy).  ``plain``: a dict that keeps ``dp``'s schedule for
    the next call with the same model and budget (:func:`_maybe_plain_dp`).
    """
    n = len(model)
    f = np.array([float(l.forward) for l in model.layers]) * weights[0]
    b = np.array([float(l.backward) for l in model.layers]) * weights[0]
    if storage is None:
        out = inn = np.zeros(n)
        pageable = np.zeros(n, dtype=bool)
    else:
        out, inn = transfer_costs(model, storage)
        out, inn = out * transfer_share * weights[1], inn * transfer_share * weights[1]
        pageable = np.ones(n, dtype=bool)
    c = _Costs(f, b, out, inn)
    z = _chain(model, pageable)
    params = {"grid": "none", "unit_bytes": None, "levels": None}
    sa = store_all_tree(z)
    sa_peak, sa_cost, _ = _tree_eval(sa, z, c)
    if budget is None or sa_peak + model.input_bytes <= budget:
        return _finish(model, sa, (sa_cost, sa_peak, 0), params)
    avail = budget - model.input_bytes
    capacity = None if storage is None else getattr(storage, "bytes", None)
    if avail < 0:
        raise _infeasible(budget, _least_within(model, z, c, capacity) + model.input_bytes)
    found, least = _solve_mask(model, z, c, avail, levels, params)
    if found is not None and capacity is not None and found[2] > capacity:
        candidates = []
        for mask in _capacity_masks(z, found[3], capacity) + _least_masks(model, z, c, capacity):
            zm = _chain(model, mask)
            sub = dict(params)
            got, _ = _solve_mask(model, zm, c, avail, levels, sub)
            if got is not None and got[2] <= capacity:
                candidates.append((got, zm, sub))
        if not candidates:  # the budget is below the least peak within the capacity
            raise _infeasible(budget, _least_within(model, z, c, capacity) + model.input_bytes)
        found, z, params = min(candidates, key=lambda x: x[0][0])
        params = dict(params, capacity_restricted=True)
    if params["grid"] in ("rounded", "least-peak") or found is None:
        found = _maybe_plain_dp(model, budget, found, weights[0], {} if plain is None else plain)
    if found is None:
        if capacity is not None:
            least = _least_within(model, z, c, capacity)
        raise _infeasible(budget, least + model.input_bytes)
    cost, peak, store, tree = found
    return _finish(model, tree, (cost, peak, store), params)


def _infeasible(budget, least):
    return InfeasibleError(
        f"dp-paging: no schedule fits {budget} bytes of activation memory; the least peak of a "
        f"persistent schedule with paging is {least} bytes",
        least_bytes=least,
    )


def _maybe_plain_dp(model, budget, found, weight, plain):
    """``found``, or ``dp``'s schedule when that is cheaper (rounded grids and the least-peak fallback).

    ``dp``'s ops are measured by the simulator after
    :func:`planner.lowering.insert_frees`; ``plain`` keeps them (and their
    result) for the next call with the same model and budget.
    """
    if "dp" not in plain:
        plain["dp"] = _plain_dp(model, budget)
    if plain["dp"] is None:
        return found
    ops, result = plain["dp"]
    if found is None or result.compute * weight < found[0]:
        return result.compute * weight, result.peak_bytes - model.input_bytes, 0, ops
    return found


def _plain_dp(model, budget):
    """``dp``'s schedule within ``budget`` and its simulation, or None."""
    from planner.simulate import simulate
    from planner.solvers.dp import dp  # its public function: the class without paging

    try:
        ops, _ = dp(model, budget=budget)
    except (InfeasibleError, NotApplicableError, TooLargeError):
        return None
    ops = insert_frees(model, ops)
    result = simulate(model, ops)
    if not result.valid or result.peak_bytes > budget:
        return None
    return ops, result


def _finish(model, tree, evaluated, params):
    cost, peak, store = evaluated
    if tree and isinstance(tree[0], tuple):
        ops = insert_frees(model, tree_ops(tree))
    else:  # already lowered ops (dp's schedule)
        ops = tree
    paged = sorted({op.layer for op in ops if op.kind.value == "pageout"})
    params = dict(params)
    params.update(
        paged=[model.layers[i].name for i in paged],
        dp_cost=cost,
        dp_peak_bytes=peak + model.input_bytes,
        storage_bound_bytes=store,
    )
    return ops, params
