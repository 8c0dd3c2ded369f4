"""Exhaustive searches used as oracles for the ``dp`` strategy (small chains only).

Two oracles, sharing no code with ``planner.solvers.dp``:

* :func:`persistent_schedules` enumerates every *persistent* schedule of a
  chain (a kept checkpoint stays until its segment is fully reversed: the
  class of Beaumont et al. 2019), lowers each with the shared
  :func:`planner.lowering.insert_frees` and measures it with the simulator.
* :func:`optimal_schedule` is a Dijkstra search over ALL valid schedules: the
  states are the simulator's sets ``A`` (outputs held), ``S`` (saved data held)
  and ``D`` (backwards done), ``G`` is derived from them; every forward (with
  or without save), backward and free allowed by SPEC section 3 is an edge
  (the sink's output is never freed before the sink's backward),
  weighted by its compute time; an op whose memory (workspace included) would
  exceed the budget is not allowed.  The schedule it returns is replayed by the
  simulator before it is returned.
"""

import heapq
import itertools

from planner.lowering import insert_frees
from planner.schedule import backward, forward, free
from planner.simulate import simulate

__all__ = ["persistent_schedules", "persistent_optimum", "optimal_schedule"]


def _solve_variants(s, t):
    """Every op sequence of Solve(s, t): layers s..t reversed from a[s-1] (generator)."""
    # F_all: forward s with save, the rest, backward s.
    if s == t:
        yield (forward(s, True), backward(s))
        return
    for rest in _solve_variants(s + 1, t):
        yield (forward(s, True),) + rest + (backward(s),)
    # F_ck at s, F_n up to split - 1, then the right part, then the left part.
    for split in range(s + 1, t + 1):
        head = tuple(forward(k, False) for k in range(s, split))
        rights = list(_solve_variants(split, t))
        for left in _solve_variants(s, split - 1):
            for right in rights:
                yield head + right + left


def persistent_schedules(model):
    """Every persistent schedule of a chain as ``(peak_bytes, compute, ops)``.

    ``ops`` are forward/backward ops; peak and compute are the simulator's
    after the shared lowering inserted the frees.
    """
    n = len(model)
    result = []
    for ops in _solve_variants(0, n - 1):
        sim = simulate(model, insert_frees(model, ops))
        assert sim.valid, sim.error
        result.append((sim.peak_bytes, sim.compute, ops))
    return result


def persistent_optimum(schedules, budget):
    """Least compute of the schedules whose peak fits ``budget`` (None if none fits)."""
    fits = [c for p, c, _ in schedules if p <= budget]
    return min(fits) if fits else None


def optimal_schedule(model, budget):
    """Cheapest valid schedule of a chain within ``budget`` bytes, over ALL schedules.

    Parameters
    ----------
    model : planner.model.Model
        A chain of a few layers (the state space is exponential).
    budget : int

    Returns
    -------
    (compute, ops) or None
        ``ops`` include the frees; they were replayed by the simulator, are
        valid, and peak at most ``budget``.

    Notes
    -----
    Dead outputs (a layer whose backward and whose consumer's backward have
    run: nothing can read it again) are freed at once, which never costs
    compute nor memory; every other free is a choice of the search.
    """
    layers = model.layers
    n = len(layers)
    out = [l.output_bytes for l in layers]
    saved = [l.saved_bytes for l in layers]
    wf = [l.workspace_forward for l in layers]
    wb = [l.workspace_backward for l in layers]
    tf = [l.forward for l in layers]
    tb = [l.backward for l in layers]
    ni = [l.needs_inputs for l in layers]
    no = [l.needs_output for l in layers]
    full = (1 << n) - 1

    def bit(i):
        return 1 << i

    def grads(d):
        # gradient of j is held once j + 1's backward ran and j's has not
        return (d >> 1) & ~d & full

    def memory(a, s, d):
        total = model.input_bytes
        g = grads(d)
        for i in range(n):
            if a >> i & 1:
                total += out[i]
            if s >> i & 1:
                total += saved[i]
            if g >> i & 1:
                total += out[i]
        return total

    def held(i, s, d):
        # free i not allowed while saved data reads it, nor the sink's output
        # before the sink's backward (the loss reads it)
        if (s >> i & 1) and no[i]:
            return True
        if i == n - 1:
            return not (d >> i & 1)
        return (s >> (i + 1) & 1) and ni[i + 1]

    def canonical(a, d):
        for i in range(n):
            if (a >> i & 1) and (d >> i & 1) and (i == n - 1 or d >> (i + 1) & 1):
                a &= ~bit(i)
        return a

    start = (0, 0, 0)
    if memory(*start) > budget:
        return None
    dist = {start: 0.0}
    parent = {start: None}
    counter = itertools.count()
    heap = [(0.0, next(counter), start)]
    goal = None
    while heap:
        cost, _, state = heapq.heappop(heap)
        if cost > dist[state]:
            continue
        a, s, d = state
        if d == full:
            goal = state
            break
        base = memory(a, s, d)
        moves = []
        for i in range(n):
            b = bit(i)
            input_ok = i == 0 or (a >> (i - 1) & 1)
            # forward i (with and without save)
            if not (a & b) and not (d & b) and input_ok:
                for save in (False, True):
                    if save and (s & b):
                        continue
                    peak = base + out[i] + (saved[i] if save else 0) + wf[i]
                    na, ns = a | b, (s | b) if save else s
                    moves.append((tf[i], peak, (canonical(na, d), ns, d), forward(i, save)))
            # backward i
            if (s & b) and not (d & b) and (i == n - 1 or d >> (i + 1) & 1):
                if (not ni[i] or input_ok) and (not no[i] or a & b):
                    g_new = out[i - 1] if i > 0 else 0
                    sink_grad = out[i] if i == n - 1 else 0
                    peak = base + g_new + sink_grad + wb[i]
                    nd = d | b
                    moves.append((tb[i], peak, (canonical(a, nd), s & ~b, nd), backward(i)))
            # free i
            if (a & b) and not held(i, s, d):
                moves.append((0.0, base, (a & ~b, s, d), free(i)))
        for dt, peak, nxt, op in moves:
            if peak > budget:
                continue
            c = cost + dt
            if c < dist.get(nxt, float("inf")):
                dist[nxt] = c
                parent[nxt] = (state, op)
                heapq.heappush(heap, (c, next(counter), nxt))
    if goal is None:
        return None
    # Rebuild the op list, adding the canonical frees the search made implicitly.
    path = []
    state = goal
    while parent[state] is not None:
        prev, op = parent[state]
        path.append((prev, op, state))
        state = prev
    path.reverse()
    ops = []
    for prev, op, nxt in path:
        ops.append(op)
        before = prev[0] | (bit(op.layer) if op.kind.value == "forward" else 0)
        if op.kind.value == "free":
            continue
        dropped = before & ~nxt[0]
        ops.extend(free(i) for i in range(n) if dropped >> i & 1)
    sim = simulate(model, ops)
    assert sim.valid, sim.error
    assert sim.peak_bytes <= budget, (sim.peak_bytes, budget)
    assert abs(sim.compute - dist[goal]) <= 1e-9 * max(1.0, sim.compute), (sim.compute, dist[goal])
    return dist[goal], ops
