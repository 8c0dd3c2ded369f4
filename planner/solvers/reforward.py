"""``reforward``: Feng and Huang's re-forwarding (optimal gradient checkpointing).

A *checkpoint set* keeps some layer outputs through the forward pass; every
stretch of layers between two kept outputs is either stored (forwarded with
save, plain autograd) or *re-forwarded*: run without save in the forward pass
and run once more, with save, right before its backward.  Every layer is thus
recomputed at most once.  Feng and Huang pick the checkpoint set that
minimises the peak memory with an exact dynamic program on chains, and reduce
arbitrary graphs to chains by splitting them at the vertices every path from
the input to the loss crosses.

This module does the same on edgeplan's cost model:

1. The model is cut into *units* at its splitting vertices (layer ``v`` such
   that no edge jumps over it in the topological order; every layer of a chain
   is one).  A unit is a consecutive range of the topological order whose only
   output read later is its last layer's.  A unit that is not a single layer
   (a branched block: a residual block, an inception module, ...) is a leaf of
   the decomposition and is stored or re-forwarded as a whole.  (Feng and
   Huang go on into the branches of such blocks; checkpoints inside parallel
   branches are not consecutive ranges of one topological order with a
   single tensor crossing each cut, which the exact peak model relies on.)
2. A dynamic program over the chain of units chooses the segments (consecutive
   units, each stored or re-forwarded) with the least peak memory, using an
   exact model of what the simulator measures for the ops
   :func:`planner.lowering.segments_to_ops` makes of them.  The segment that
   ends with the sink is stored: the sink's output, read by the loss, may not
   be freed before its backward, so the sink is forwarded once, with save.
3. A second pass over Pareto fronts (relative peak, recomputation) finds,
   among the schedules that fit the budget, the one with the least compute.
"""

from dataclasses import dataclass

import numpy as np

from planner.errors import InfeasibleError, OptionError
from planner.lowering import RECOMPUTE, STORE, segments_to_ops, size_dtype, splitting_vertices

__all__ = ["reforward", "reforward_plan", "ReforwardPlan", "splitting_units"]

_S = 0  # the previous segment was stored
_R = 1  # the previous segment was re-forwarded
_NONE = 2  # no previous segment (unit 0: its entry is the model input)
_NEG = -(1 << 62)
_POS = 1 << 62

#: Pareto points kept per state by the least-compute pass on large models; small
#: ones get more (about 1.6e7 / units^2, at most 512; see reforward_plan).
FRONT_CAP = 32


@dataclass(frozen=True)
class ReforwardPlan:
    """The decisions of :func:`reforward_plan` and what the model predicts for them.

    Attributes
    ----------
    segments : tuple of (start, stop, mode)
        Half-open layer ranges for :func:`planner.lowering.segments_to_ops`.
    peak_bytes : int
        The peak the dynamic program's memory model predicts (the simulator
        measures the same after :func:`planner.lowering.insert_frees`).
    least_bytes : int
        The least peak of any re-forwarding schedule of the model.
    recompute : float
        Forward time of the re-forwarded layers (compute minus baseline).
    units : int
        Number of units the model was split into (``len(model)`` on a chain).
    exact : bool
        The least-compute pass kept every Pareto point (no front grew beyond
        ``front_cap``), so ``recompute`` is the least of any re-forwarding
        schedule that fits; otherwise it is the least the thinned fronts found.
    """

    segments: tuple
    peak_bytes: int
    least_bytes: int
    recompute: float
    units: int
    exact: bool = True


def splitting_units(model):
    """Split the topological order at the vertices every input-to-sink path crosses.

    Parameters
    ----------
    model : planner.model.Model

    Returns
    -------
    list of (start, stop)
        Consecutive half-open layer ranges covering the model; each range ends
        with a splitting vertex, whose output is the only one of the range
        that later layers read.

    Notes
    -----
    Layer ``v`` is a splitting vertex exactly when no edge ``p -> c`` (the
    model input counting as position -1) has ``p < v < c``: every path then
    climbs through ``v``, and every layer before ``v`` is its ancestor and every
    layer after it its descendant.  :func:`planner.lowering.splitting_vertices`
    finds them all in O(n + edges).
    """
    units = []
    start = 0
    for v in splitting_vertices(model, input_edges=True):
        units.append((start, v + 1))
        start = v + 1
    return units


class _Units:
    """Per-unit quantities of the memory model (arrays indexed by unit).

    For unit ``k`` (layers ``lo..hi-1``, exit ``e = hi - 1``, entry ``x`` = the
    previous unit's exit, or the model input for unit 0):

    - ``outx``: bytes of the entry's output (0 for the model input);
      ``hx``: a layer of the unit that reads the entry keeps it in its saved
      data (``needs_inputs``); ``nox``: the entry's own backward reads it.
    - ``gex``: bytes of the exit's output (and of its gradient).
    - ``keep``: bytes the unit keeps after a forward pass with save (its saved
      data and the internal outputs saved data reads; not the exit's output).
    - ``fwd[save][xr]``: the unit's peak during a forward pass, relative to
      what was there before it, when the entry is (``xr``) or is not kept
      throughout (then it counts until its last reader in the unit).
    - ``bwd[sticky]``: the unit's peak during its backward, relative to what
      was there before, the entry's output not counted; it is subtracted once
      the unit releases the entry, unless ``sticky`` (the entry's own saved
      data still reads it).
    - ``recompute``: the unit's forward time.
    """

    def __init__(self, model, ranges):
        layers = model.layers
        k = len(ranges)
        self.ranges = ranges
        self.count = k
        self.outx = [0] * k
        self.hx = [False] * k
        self.nox = [False] * k
        self.gex = [0] * k
        self.keep = [0] * k
        self.fwd = [[[0] * k, [0] * k], [[0] * k, [0] * k]]
        self.bwd = [[0] * k, [0] * k]
        self.recompute = [0.0] * k
        consumers = model.consumers
        for u, (lo, hi) in enumerate(ranges):
            x = ranges[u - 1][1] - 1 if u > 0 else None
            e = hi - 1
            if x is not None:
                self.outx[u] = layers[x].output_bytes
                self.nox[u] = layers[x].needs_output
                self.hx[u] = any(layers[c].needs_inputs for c in consumers[x])
            self.gex[u] = layers[e].output_bytes
            self.recompute[u] = sum(layers[i].forward for i in range(lo, hi))
            for save in (0, 1):
                for xr in (0, 1):
                    peak, kept = _unit_forward(model, lo, hi, x, save, xr)
                    self.fwd[save][xr][u] = peak
                    if save:
                        self.keep[u] = kept
            for sticky in (0, 1):
                self.bwd[sticky][u] = _unit_backward(model, lo, hi, x, sticky, self.keep[u])


def _unit_forward(model, lo, hi, x, save, xr):
    """Peak (relative) and kept bytes of one forward pass over a unit."""
    layers = model.layers
    consumers = model.consumers
    e = hi - 1
    last = {}
    for i in range(lo, hi):
        for p in layers[i].inputs:
            last[p] = i
    outx = layers[x].output_bytes if (x is not None and not xr) else 0
    mem = 0
    peak = _NEG
    for i in range(lo, hi):
        layer = layers[i]
        mem += layer.output_bytes + (layer.saved_bytes if save else 0)
        peak = max(peak, mem + outx + layer.workspace_forward)
        for p in layer.inputs:
            if last[p] != i:
                continue
            if p == x:
                outx = 0
            elif not (save and _held(layers, consumers, p)):
                mem -= layers[p].output_bytes
    return peak, mem - layers[e].output_bytes


def _held(layers, consumers, p):
    """Saved data reads layer ``p``'s output after a forward with save."""
    return layers[p].needs_output or any(layers[c].needs_inputs for c in consumers[p])


def _unit_backward(model, lo, hi, x, sticky, keep):
    """Peak of a unit's backward relative to what was there before (entry not counted)."""
    layers = model.layers
    consumers = model.consumers
    e = hi - 1
    # Whose output stays until its own backward: needs_output, and the sink,
    # whose output the loss reads until then (SPEC section 3).
    own = model.tables.output_at_backward[lo:hi].tolist()
    hold = {}
    for p in range(lo, hi):
        hold[p] = int(own[p - lo]) + (
            sum(layers[c].needs_inputs for c in consumers[p]) if p != e else 0
        )
    hold_x = sum(layers[c].needs_inputs for c in consumers[x]) if x is not None else 0
    ex = layers[e]
    mem = keep + (ex.output_bytes if own[-1] else 0) + ex.output_bytes
    grads = {e}
    peak = _NEG
    for i in range(hi - 1, lo - 1, -1):
        layer = layers[i]
        fresh = 0  # an input another backward gave a gradient gets a fresh one (SPEC section 3)
        for p in layer.inputs:
            if p in grads:
                fresh += layers[p].output_bytes
            else:
                grads.add(p)
                mem += layers[p].output_bytes
        peak = max(peak, mem + fresh + layer.workspace_backward)
        mem -= layer.saved_bytes + layer.output_bytes  # saved data, own gradient
        released = []
        if own[i - lo]:
            released.append(i)
        if layer.needs_inputs:
            released.extend(layer.inputs)
        for p in released:
            if p == x:
                hold_x -= 1
                if hold_x == 0 and not sticky:
                    mem -= layers[x].output_bytes
            else:
                hold[p] -= 1
                if hold[p] == 0:
                    mem -= layers[p].output_bytes
    return peak


def _arrays(units, dtype):
    """The unit quantities as numpy arrays, with the prefix sums the transitions use.

    ``cum_t[k]``: bytes units ``0..k-1`` keep after a pass with save when they
    share a segment (their ``keep`` plus each exit the next unit keeps);
    ``g1``/``g2``: each unit's forward/backward peak on top of that prefix;
    ``cum_f``: prefix sums of the forward times.
    """
    k = units.count
    a = {
        name: np.array(getattr(units, name), dtype=dtype)
        for name in ("outx", "gex", "keep")
    }
    hx = np.array(units.hx, dtype=bool)
    nox = np.array(units.nox, dtype=bool)
    fwd = [[np.array(units.fwd[s][r], dtype=dtype) for r in (0, 1)] for s in (0, 1)]
    bwd = [np.array(units.bwd[s], dtype=dtype) for s in (0, 1)]
    # retention of unit j's exit when unit j + 1 is in the same segment (saved pass)
    bret = np.zeros(k, dtype=dtype)
    if k > 1:
        nexit = nox[1:] | hx[1:]  # exit of j read by its own backward or held by j + 1
        bret[:-1] = np.where(nexit, a["gex"][:-1], 0)
    cum_t = np.zeros(k + 1, dtype=dtype)
    cum_t[1:] = np.cumsum(a["keep"] + bret)
    xr_int = nox | hx  # entry of unit k kept when k is not the first of its segment
    g1 = cum_t[:-1] + np.where(xr_int, fwd[1][1], fwd[1][0])
    g2 = cum_t[:-1] + np.where(nox, bwd[1], bwd[0])
    cum_f = np.zeros(k + 1)
    cum_f[1:] = np.cumsum(np.array(units.recompute, dtype=float))
    grad_exit = np.zeros(k + 1, dtype=dtype)  # gradient held while [A, B) is recomputed
    grad_exit[1:k] = a["gex"][: k - 1]
    return dict(
        a, hx=hx, nox=nox, fwd=fwd, bwd=bwd, bret=bret, cum_t=cum_t, g1=g1, g2=g2,
        cum_f=cum_f, grad_exit=grad_exit, k=k,
    )


def _running_max(values, dtype):
    """``out[0] = NEG``, ``out[j] = max(values[:j])``."""
    out = np.empty(len(values) + 1, dtype=dtype)
    out[0] = _NEG
    if len(values):
        out[1:] = np.maximum.accumulate(values)
    return out


def _transitions(t, a, pm, dtype):
    """Per-successor arrays for the segments that start at unit ``a``.

    Returns ``{mode: (L, shift, cost)}``, arrays over ``B = a+1 .. K``: the
    segment's own peak, what it leaves for the segments after it (the entry
    retention included), and its recomputation.
    """
    k = t["k"]
    stops = np.arange(a + 1, k + 1)
    cum_t = t["cum_t"]
    outx = t["outx"][a]
    hx = bool(t["hx"][a])
    sticky = pm == _S and bool(t["nox"][a])
    entry_kept = outx if (hx or sticky) else 0
    xr = 1 if (hx or sticky) else 0
    m1 = _running_max(t["g1"][a + 1 : k], dtype)
    m2 = _running_max(t["g2"][a + 1 : k], dtype)
    bw_first = entry_kept + t["bwd"][1 if sticky else 0][a]
    bw = np.maximum(bw_first, entry_kept - cum_t[a] + m2)
    saved_first = entry_kept + t["fwd"][1][xr][a]
    saved_pass = np.maximum(saved_first, entry_kept - cum_t[a] + m1)
    result = {}
    if pm != _S:
        peak = np.maximum(saved_pass, bw)
        keep = cum_t[stops] - cum_t[a] - t["bret"][stops - 1]
        result[_S] = (peak, entry_kept + keep, np.zeros(len(stops)))
    beta = outx
    plain = beta + np.maximum(t["fwd"][0][1][a], _running_max(t["fwd"][0][0][a + 1 : k], dtype))
    recompute = t["grad_exit"][stops] + saved_pass
    peak = np.maximum(np.maximum(plain, recompute), bw)
    # The segment holding the sink is never re-forwarded: the sink's output,
    # read by the loss, may not be freed before its backward (SPEC section 3).
    peak[-1] = _POS
    shift = np.full(len(stops), beta, dtype=dtype)
    result[_R] = (peak, shift, t["cum_f"][stops] - t["cum_f"][a])
    return result


def _least_peak(t, dtype):
    """The min-peak dynamic program: least relative peak from each (unit, previous mode)."""
    k = t["k"]
    f = {_S: np.full(k + 1, _NEG, dtype=dtype), _R: np.full(k + 1, _NEG, dtype=dtype)}
    best = None
    for a in range(k - 1, -1, -1):
        for pm in ((_S, _R) if a > 0 else (_NONE,)):
            value = None
            for mode, (peak, shift, _) in _transitions(t, a, pm, dtype).items():
                cand = np.maximum(peak, shift + f[mode][a + 1 :]).min()
                value = cand if value is None else min(value, cand)
            if a > 0:
                f[pm][a] = value
            else:
                best = value
    return int(best), f


def _prefix_bounds(t, f, limit, dtype):
    """Bounds on the bytes a fitting prefix keeps when it ends at each (unit, mode).

    A left-to-right pass over the same transitions: a prefix counts only if
    each of its segments fits ``limit`` on top of what the earlier ones keep,
    and the least-peak suffix (``f``) still fits after it.  Returns
    ``(least, most)``: the least such bytes exactly (``_POS`` where no fitting
    schedule passes) and an upper bound of the most.  The least-compute pass
    uses them to drop and merge Pareto points no prefix can use.
    """
    k = t["k"]
    least = {_S: np.full(k + 1, _POS, dtype=dtype), _R: np.full(k + 1, _POS, dtype=dtype)}
    most = {_S: np.full(k + 1, _NEG, dtype=dtype), _R: np.full(k + 1, _NEG, dtype=dtype)}
    for a in range(k):
        for pm in ((_S, _R) if a > 0 else (_NONE,)):
            low = 0 if a == 0 else least[pm][a]
            high = 0 if a == 0 else most[pm][a]
            if low >= _POS:
                continue
            for mode, (peak, shift, _) in _transitions(t, a, pm, dtype).items():
                cap = limit - f[mode][a + 1 :]
                after = low + shift
                ok = (low + peak <= limit) & (after <= cap)
                target = least[mode][a + 1 :]
                least[mode][a + 1 :] = np.where(ok & (after < target), after, target)
                top = np.minimum(np.minimum(high, limit - peak) + shift, cap)
                target = most[mode][a + 1 :]
                most[mode][a + 1 :] = np.where(ok & (top > target), top, target)
    return least, most


class _Store:
    """Append-only storage of the Pareto fronts of one mode, in decreasing unit order."""

    def __init__(self, dtype, capacity=1024):
        self.r = np.empty(capacity, dtype=dtype)
        self.c = np.empty(capacity)
        self.owner = np.empty(capacity, dtype=np.int64)
        self.ptr = np.empty(capacity, dtype=np.int64)
        self.start = {}  # unit -> index of the first element of its front
        self.size = 0

    def add(self, unit, r, c, ptr):
        self.start[unit] = self.size
        end = self.size + len(r)
        if end > len(self.r):
            grow = max(end, 2 * len(self.r))
            for name in ("r", "c", "owner", "ptr"):
                old = getattr(self, name)
                new = np.empty(grow, dtype=old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        self.r[self.size : end] = r
        self.c[self.size : end] = c
        self.owner[self.size : end] = unit
        self.ptr[self.size : end] = ptr
        self.size = end


def _pareto(r, c):
    """Indices of the points no other point beats in both (ties: one), by increasing r."""
    order = np.argsort(r, kind="stable")  # the fronts come in sorted runs: timsort is fastest
    cs = c[order]
    keep = np.ones(len(cs), dtype=bool)
    keep[1:] = cs[1:] < np.minimum.accumulate(cs)[:-1]
    order = order[keep]
    rs = r[order]
    last = np.ones(len(order), dtype=bool)  # of equal peaks the later is cheaper
    last[:-1] = rs[:-1] != rs[1:]
    return order[last]


def _thin(r, cap):
    """At most ``cap`` indices of a front sorted by increasing peak ``r``.

    For ``cap`` levels evenly spaced between the front's least and largest
    peak, keeps the cheapest point at or below each level; the least-peak
    point (so the least-peak schedule stays reachable) and the cheapest are
    always kept.
    """
    lo, hi = r[0], r[-1]
    levels = np.array([lo + (hi - lo) * j // (cap - 1) for j in range(cap)], dtype=r.dtype)
    picks = np.searchsorted(r, levels, side="right") - 1
    return np.unique(np.concatenate(([0], picks, [len(r) - 1])))


def _least_compute(t, limit, dtype, cap, bounds):
    """Pareto fronts of (relative peak, recomputation) per (unit, previous mode).

    Returns the segments (in units) with the least recomputation whose
    relative peak is at most ``limit``, that peak, and whether every front
    stayed within ``cap`` points (then the answer is exact).
    """
    k = t["k"]
    stores = {_S: _Store(dtype), _R: _Store(dtype)}
    for store in stores.values():  # the empty suffix
        store.add(k, np.array([_NEG], dtype=dtype), np.zeros(1), np.array([-1]))
    exact = True
    final = None
    for a in range(k - 1, -1, -1):
        for pm in ((_S, _R) if a > 0 else (_NONE,)):
            rs, cs, links = [], [], []
            # what the suffix may use: at most ``room``, at least ``floor``
            room = limit - (0 if a == 0 else bounds[0][pm][a])
            floor = limit - (0 if a == 0 else bounds[1][pm][a])
            for mode, (peak, shift, cost) in (
                _transitions(t, a, pm, dtype).items() if room >= 0 else ()
            ):
                store = stores[mode]
                # only segment ends whose own peak fits; their fronts are the
                # tail of the store (fronts are stored by decreasing unit)
                fits = np.nonzero(peak <= room)[0]
                if len(fits) == 0:
                    continue
                first = store.start[a + 1 + int(fits[-1])]
                owner = store.owner[first : store.size]
                idx = owner - (a + 1)
                lifted = shift[idx] + store.r[first : store.size]
                # points under the segment's own peak all end at that peak: of
                # each successor's (a prefix of its front) only the last, cheapest
                under = lifted <= peak[idx]
                redundant = under[:-1] & under[1:] & (owner[:-1] == owner[1:])
                rr = np.maximum(peak[idx], lifted)
                cc = cost[idx] + store.c[first : store.size]
                ok = rr <= room
                ok[:-1] &= ~redundant
                ok = np.nonzero(ok)[0]
                rs.append(rr[ok])
                cs.append(cc[ok])
                links.append((ok + first) * 2 + mode)  # successor element and its mode
            if rs:
                r = np.concatenate(rs)
                c = np.concatenate(cs)
                link = np.concatenate(links)
                keep = _pareto(r, c)
                # every prefix leaves at least ``floor``: of the points below it
                # only the cheapest (the last) can be used
                below = int(np.searchsorted(r[keep], floor, side="right"))
                if below > 1:
                    keep = keep[below - 1 :]
                if len(keep) > cap:
                    exact = False
                    keep = keep[_thin(r[keep], cap)]
                r, c, link = r[keep], c[keep], link[keep]
            else:
                r, c, link = np.zeros(0, dtype=dtype), np.zeros(0), np.zeros(0, dtype=np.int64)
            if a > 0:
                stores[pm].add(a, r, c, link)
            else:
                final = (r, c, link)
    r, c, link = final
    j = int(np.argmin(c))  # sorted by peak: ties go to the least peak
    segments = []
    start, code = 0, int(link[j])
    while True:
        elem, mode = divmod(code, 2)
        store = stores[mode]
        stop = int(store.owner[elem])
        segments.append((start, stop, mode))
        if stop == k:
            break
        start, code = stop, int(store.ptr[elem])
    return segments, int(r[j]), exact


def reforward_plan(model, *, budget=None, front_cap=None):
    """Choose re-forwarding segments for ``model`` (the decisions, not the ops).

    Parameters
    ----------
    model : planner.model.Model
        A chain or a DAG.
    budget : int or None, keyword-only
        Activation budget in bytes (``peak_bytes`` includes ``input_bytes``).
        None asks for the least-peak schedule.
    front_cap : int or None, keyword-only
        Pareto points kept per state by the least-compute pass (>= 2).  Fronts
        that stay within it make the answer exact; larger fronts are thinned
        (``exact`` is then False, the schedule still fits).  None: 512 points
        down to :data:`FRONT_CAP` as the model grows (``1.6e7 / units^2``).

    Returns
    -------
    ReforwardPlan
        With a budget: the schedule with the least compute among those whose
        peak fits it.  Without: the least-peak schedule (Feng and Huang's
        objective), the least compute among equal peaks.

    Raises
    ------
    InfeasibleError
        When even the least-peak schedule does not fit; ``least_bytes`` is its
        peak.

    Notes
    -----
    With ``K`` units (``K = n`` on a chain): the unit quantities take
    O(n + edges) time, the least-peak program and the prefix bounds O(K^2)
    (numpy over the segment ends for each segment start), and the
    least-compute pass O(K^2 F log(K F)) with fronts of at most
    ``F = front_cap`` points.  The least peak is exact; the least compute
    under a budget is exact while no front exceeds ``front_cap`` (always at
    the least peak and on small models; the problem is a knapsack in
    general).  When the store-all schedule fits it is returned at once.

    The peak model is exact: the predicted peak is the one the simulator
    measures for ``segments_to_ops`` of the segments after
    ``insert_frees``, workspaces, saved data, the outputs saved data holds
    (``needs_inputs``/``needs_output``), gradients and ``input_bytes``
    included.

    References
    ----------
    J. Feng and D. Huang, "Cutting Down Training Memory by Re-forwarding",
    arXiv:1808.00079 (2018); "Optimal Gradient Checkpoint Search for Arbitrary
    Computation Graphs", CVPR 2021.
    """
    if front_cap is not None and (
        not isinstance(front_cap, int) or isinstance(front_cap, bool) or front_cap < 2
    ):
        raise OptionError(f"front_cap must be an integer of at least 2, got {front_cap!r}")
    ranges = splitting_units(model)
    if front_cap is None:
        front_cap = max(FRONT_CAP, min(512, 16_000_000 // len(ranges) ** 2))
    units = _Units(model, ranges)
    dtype = size_dtype(model, headroom=2)
    t = _arrays(units, dtype)
    base = model.input_bytes
    relative, f = _least_peak(t, dtype)
    least = base + max(0, relative)
    if budget is not None and least > budget:
        raise InfeasibleError(
            f"reforward needs at least {least} bytes of activation memory, more than the "
            f"budget of {budget} bytes",
            least_bytes=least,
        )
    limit = least if budget is None else budget
    k = t["k"]
    # store-all first: no recomputation at all
    peak, shift, _ = _transitions(t, 0, _NONE, dtype)[_S]
    store_all = base + max(0, int(peak[-1]))
    if store_all <= limit:
        chosen, peak_bytes, exact = [(0, k, _S)], store_all, True
    else:
        bounds = _prefix_bounds(t, f, limit - base, dtype)
        chosen, rel, exact = _least_compute(t, limit - base, dtype, front_cap, bounds)
        peak_bytes = base + max(0, rel)
    segments = tuple(
        (ranges[a][0], ranges[b - 1][1], STORE if mode == _S else RECOMPUTE)
        for a, b, mode in chosen
    )
    recompute = sum(
        units.recompute[u] for a, b, mode in chosen if mode == _R for u in range(a, b)
    )
    return ReforwardPlan(segments, peak_bytes, least, recompute, k, exact)


def reforward(model, *, budget=None):
    """Feng and Huang's re-forwarding: the best checkpoint set, each layer recomputed at most once.

    Parameters
    ----------
    model : planner.model.Model
        A chain or a DAG.
    budget : int or None, keyword-only
        Activation budget in bytes.  With a budget, the least-compute
        re-forwarding schedule that fits; with None, the least-peak schedule.

    Returns
    -------
    ops : list of Op
        Forward and backward ops from :func:`planner.lowering.segments_to_ops`.
    params : dict
        ``segments`` (how many), ``recomputed`` (layers forwarded twice) and
        ``units`` (the pieces the splitting vertices cut the model into).

    Raises
    ------
    InfeasibleError
        When no re-forwarding schedule fits; ``least_bytes`` is the least peak.

    Notes
    -----
    See :func:`reforward_plan` for the method and its complexity.

    References
    ----------
    J. Feng and D. Huang, "Cutting Down Training Memory by Re-forwarding",
    arXiv:1808.00079 (2018); "Optimal Gradient Checkpoint Search for Arbitrary
    Computation Graphs", CVPR 2021.
    """
    plan = reforward_plan(model, budget=budget)
    params = {
        "segments": len(plan.segments),
        "recomputed": sum(stop - start for start, stop, mode in plan.segments if mode == RECOMPUTE),
        "units": plan.units,
    }
    return segments_to_ops(model, plan.segments), params
