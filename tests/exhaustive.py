"""Exhaustive searches used as oracles for ``dp`` (small chains) and ``milp`` (small chains and DAGs).

Two oracles, sharing no code with ``planner.solvers.dp``:

* :func:`persistent_schedules` enumerates every *persistent* schedule of a
  chain (a kept checkpoint stays until its segment is fully reversed: the
  class of Beaumont et al. 2019), lowers each with the shared
  :func:`planner.lowering.insert_frees` and measures it with the simulator.
* :func:`optimal_schedule` is a Dijkstra search over ALL valid schedules of a
  chain or a DAG: the states are the simulator's sets ``A`` (outputs held),
  ``S`` (saved data held) and ``D`` (backwards done), ``G`` is derived from
  them (a layer one of whose consumers' backwards ran and whose own has not);
  every forward (with or without save), backward and free allowed by SPEC
  section 3 is an edge (the sink's output is never freed before the sink's
  backward), weighted by its compute time; an op whose memory (workspace, and
  for a backward the new and fresh gradients of its inputs, included) would
  exceed the budget is not allowed.  The schedule it returns is replayed by the
  simulator, which must measure the peak the search counted, before it is
  returned.  Its skeleton, :func:`search_all_schedules`,
  also serves :mod:`tests.exhaustive_paging`, which adds pageouts and pageins.
"""

import heapq
import itertools

from planner.lowering import insert_frees
from planner.schedule import OpKind, backward, forward, free
from planner.simulate import simulate

__all__ = ["persistent_schedules", "persistent_optimum", "optimal_schedule", "search_all_schedules"]


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
    """Cheapest valid schedule of a chain or DAG within ``budget`` bytes, over ALL schedules.

    Parameters
    ----------
    model : planner.model.Model
        A chain or DAG of a few layers (the state space is exponential).
    budget : int

    Returns
    -------
    (compute, ops) or None
        ``ops`` include the frees; they were replayed by the simulator, are
        valid, and peak at most ``budget``.

    Notes
    -----
    Dead outputs (a layer whose backward has run, and so its consumers':
    nothing can read it again) are freed at once, which never costs
    compute nor memory; every other free is a choice of the search.
    """
    return search_all_schedules(model, budget)


def search_all_schedules(model, budget, *, storage=None, more_moves=None):
    """The Dijkstra search of :func:`optimal_schedule`, with room for more kinds of ops.

    States are ``(A, S, P, D)`` as bit sets over the layers (``P``,
    the paged copies, stays empty unless ``more_moves`` fills it); the edges are
    every forward (with or without save), backward and free that SPEC section 3
    allows, and for each layer ``i`` the ones ``more_moves(i, state, base, add)``
    adds with ``add((time, peak, next_state, op))``, ``base`` being the memory
    of ``state``.  An edge whose peak exceeds ``budget`` is not taken.

    Returns
    -------
    (cost, ops) or None
        ``cost`` is compute plus transfer; ``ops`` (the frees included) were
        replayed by the simulator with ``storage``, are valid, cost ``cost``
        and peak at most ``budget``.
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
    sink = n - 1
    full = (1 << n) - 1

    def mask(indices):
        return sum(1 << j for j in indices)

    producers = [mask(l.inputs) for l in layers]
    readers = [mask(c) for c in model.consumers]  # whose backward must run before i's
    pinning = [mask(c for c in model.consumers[i] if ni[c]) for i in range(n)]  # saved data reading i
    # A backward allocates the gradient of each input not in G and a fresh one of each input in
    # G (SPEC section 3): either way every input's size counts in its peak.
    grads_at = [sum(out[j] for j in l.inputs) + (out[i] if i == sink else 0) for i, l in enumerate(layers)]

    def memory(a, s, d):
        total = model.input_bytes
        for i in range(n):
            # the gradient of i: a consumer's backward ran, i's has not
            g = (d & readers[i]) and not (d >> i & 1)
            total += out[i] * ((a >> i & 1) + (1 if g else 0)) + saved[i] * (s >> i & 1)
        return total

    def held(i, s, d):
        # free i not allowed while saved data reads it, nor the sink's output
        # before the sink's backward (the loss reads it)
        if (s >> i & 1) and no[i]:
            return True
        if i == sink:
            return not (d >> i & 1)
        return bool(s & pinning[i])

    def canonical(a, d):
        # an output whose backward ran is dead: its consumers' backwards ran before
        return a & ~d

    def moves(state):
        a, s, p, d = state
        base = memory(a, s, d)
        found = []
        add = found.append
        for i in range(n):
            bit = 1 << i
            input_ok = (a & producers[i]) == producers[i]
            if not (a & bit) and not (d & bit) and input_ok:
                for save in (False, True):
                    if save and (s & bit):
                        continue
                    peak = base + out[i] + (saved[i] if save else 0) + wf[i]
                    nxt = (canonical(a | bit, d), (s | bit) if save else s, p, d)
                    add((tf[i], peak, nxt, forward(i, save)))
            if (s & bit) and not (d & bit) and (d & readers[i]) == readers[i]:
                if (not ni[i] or input_ok) and (not no[i] or a & bit):
                    peak = base + grads_at[i] + wb[i]
                    nd = d | bit
                    add((tb[i], peak, (canonical(a, nd), s & ~bit, p & ~bit, nd), backward(i)))
            if (a & bit) and not held(i, s, d):
                add((0.0, base, (a & ~bit, s, p, d), free(i)))
            if more_moves is not None:
                more_moves(i, state, base, add)
        return found

    if memory(0, 0, 0) > budget:
        return None
    found = _dijkstra((0, 0, 0, 0), lambda state: state[3] == full, moves, budget)
    if found is None:
        return None
    cost, path = found
    ops = _with_dead_frees(path, n)
    sim = simulate(model, ops, storage=storage)
    assert sim.valid, sim.error
    # the search counts memory as the simulator does, op by op
    assert sim.peak_bytes == max([model.input_bytes] + [peak for *_, peak in path]), sim.peak_bytes
    assert sim.peak_bytes <= budget, (sim.peak_bytes, budget)
    total = sim.compute + sim.transfer
    assert abs(total - cost) <= 1e-9 * max(1.0, total), (total, cost)
    return cost, ops


def _dijkstra(start, is_goal, edges, budget):
    """(cost, [(state, op, next state, peak), ...]) of a cheapest path from ``start`` to a goal, or None.

    ``edges(state)`` lists ``(time, peak, next_state, op)``; an edge whose
    peak exceeds ``budget`` is not taken.
    """
    dist = {start: 0.0}
    parent = {start: None}
    counter = itertools.count()
    heap = [(0.0, next(counter), start)]
    while heap:
        cost, _, state = heapq.heappop(heap)
        if cost > dist[state]:
            continue
        if is_goal(state):
            path = []
            while parent[state] is not None:
                prev, op, peak = parent[state]
                path.append((prev, op, state, peak))
                state = prev
            path.reverse()
            return cost, path
        for dt, peak, nxt, op in edges(state):
            if peak > budget:
                continue
            c = cost + dt
            if c < dist.get(nxt, float("inf")):
                dist[nxt] = c
                parent[nxt] = (state, op, peak)
                heapq.heappush(heap, (c, next(counter), nxt))
    return None


def _with_dead_frees(path, n):
    """The ops of a search ``path``, with the frees of dead outputs the states made implicitly."""
    ops = []
    for prev, op, nxt, _ in path:
        ops.append(op)
        if op.kind is OpKind.FREE:
            continue
        before = prev[0] | ((1 << op.layer) if op.kind in (OpKind.FORWARD, OpKind.PAGEIN) else 0)
        dropped = before & ~nxt[0]
        ops.extend(free(i) for i in range(n) if dropped >> i & 1)
    return ops


def block_class(plan, unit):
    """Every schedule of ``hierarchical``'s class for a plan, as ``(need, compute, ops)``.

    ``plan`` is a :class:`planner.solvers.blocks._Plan` (its blocks and menus);
    ``need`` is the least number of memory units (of ``unit`` bytes) with which
    the program's cost model admits the schedule, written here as a closed
    formula per structure rather than as the solver's table over memory levels.
    ``keep`` says whether the input of the first block must stay to the end
    (the model input always does); each option's quantities for that ``keep``
    are ``(F, B, shift, compute, keeps output)``:

    * one block ``s`` with option ``o``: ``max(F + delta(s), B)``;
    * option ``o`` on block ``s``, then blocks ``s+1..t`` (structure ``S``,
      with ``keep`` = whether o's backward needs its output):
      ``max(F + delta(t), B, shift + need(S))``;
    * blocks ``s..s'-1`` forwarded without save, then ``s'..t`` (``S1``,
      nothing kept), then ``s..s'-1`` (``S2``, the same ``keep``):
      ``max(nosave(s) + delta(t), input(s) + nosave(j) + delta(t) for s < j <
      s', input(s) + need(S1), need(S2))``.

    ``ops`` are forward/backward ops of the whole model (no frees).
    """
    plan._needs(unit)
    blocks, menus = plan.blocks, plan.menus
    a_in, delta, nosave, needs = plan.a_in, plan.delta, plan.nosave, plan.needs

    def shifted(ops, start):
        return [type(op)(op.kind, op.layer + start, op.save) for op in ops]

    def variants(s, t, keep):
        for o, option in enumerate(menus[s]):
            fwd, bwd, shift, cost, keeps_out = needs[s][o][keep]
            head = shifted(option.fwd_ops, blocks[s].start)
            tail = shifted(option.bwd_ops, blocks[s].start)
            if s == t:
                yield max(fwd + delta[s], bwd), cost, head + tail
                continue
            for need, compute, ops in variants(s + 1, t, keeps_out):
                yield max(fwd + delta[t], bwd, shift + need), cost + compute, head + ops + tail
        for s2 in range(s + 1, t + 1):
            limit = max([nosave[s] + delta[t]] + [a_in[s] + nosave[j] + delta[t] for j in range(s + 1, s2)])
            plain = [forward(i, False) for b in blocks[s:s2] for i in range(b.start, b.stop)]
            ftime = sum(b.forward_time for b in blocks[s:s2])
            rights = list(variants(s2, t, 0))
            for n2, c2, ops2 in variants(s, s2 - 1, keep):
                for n1, c1, ops1 in rights:
                    yield max(limit, a_in[s] + n1, n2), ftime + c1 + c2, plain + ops1 + ops2

    return list(variants(0, len(blocks) - 1, 1))
