"""Exhaustive oracles for ``dp-paging`` (small chains only), sharing no code with it.

* :func:`class_schedules` enumerates every schedule of ``dp-paging``'s class
  (persistent schedules where ``Solve(s, t)`` may page its checkpoint
  ``a[s-1]`` out while ``Solve(s', t)`` runs and page it back in for
  ``Solve(s, s'-1)``; see :mod:`planner.solvers.dp_paging`), lowers each with
  the shared :func:`planner.lowering.insert_frees` (the sink's output held until
  its backward) and measures it with the simulator.
* :func:`optimal_schedule` is a Dijkstra search over ALL valid schedules: the
  states are the simulator's sets ``A`` (outputs in memory), ``S`` (saved
  data), ``P`` (paged copies) and ``D`` (backwards done); every forward (with
  or without save), backward, free, pageout and pagein that SPEC sections 3
  and 5 allow is an edge weighted by its compute or transfer time; an op whose
  memory would exceed the budget, or a pageout beyond the storage capacity, is
  not allowed.  Its schedule is replayed by the simulator before it is
  returned.

``python -m tests.exhaustive_paging`` prints how often, and by how much, the
unrestricted optimum beats the class optimum on random chains.
"""

from planner.lowering import insert_frees
from planner.schedule import OpKind, backward, forward, free, pagein, pageout
from planner.simulate import simulate
from tests.exhaustive import search_all_schedules

__all__ = ["class_schedules", "class_optimum", "optimal_schedule", "lower_holding_sink"]

_R, _N, _P = "released", "pinned", "paged"


def lower_holding_sink(model, ops):
    """``insert_frees``, then the sink's output freed only after the sink's backward."""
    ops = list(insert_frees(model, ops))
    sink = model.sink
    frees = [k for k, op in enumerate(ops) if op.kind is OpKind.FREE and op.layer == sink]
    back = [k for k, op in enumerate(ops) if op.kind is OpKind.BACKWARD and op.layer == sink][0]
    if frees and frees[0] < back:
        ops.pop(frees[0])
        ops.insert(back, free(sink))
    return ops


def _variants(model, s, t, mode):
    """Every op sequence of Solve(s, t) with ``a[s-1]`` in ``mode`` (generator)."""
    layers = model.layers
    sub = _N if layers[s].needs_output else _R
    if s == t:
        yield (forward(s, True), backward(s))
    else:
        for rest in _variants(model, s + 1, t, sub):
            yield (forward(s, True),) + rest + (backward(s),)
    for split in range(s + 1, t + 1):
        head = tuple(forward(k, False) for k in range(s, split))
        rights = list(_variants(model, split, t, _R))
        for left in _variants(model, s, split - 1, mode):
            for right in rights:
                yield head + right + left
        if s == 0 or mode == _N:
            continue
        write = () if mode == _P else (pageout(s - 1),)
        for left in _variants(model, s, split - 1, _P):
            for right in rights:
                yield write + head + right + (pagein(s - 1),) + left


def class_schedules(model, storage):
    """Every schedule of the class as ``(peak_bytes, compute + transfer, ops)``."""
    result = []
    for ops in _variants(model, 0, len(model) - 1, _R):
        ops = lower_holding_sink(model, ops)
        sim = simulate(model, ops, storage=storage)
        assert sim.valid, sim.error
        result.append((sim.peak_bytes, sim.compute + sim.transfer, ops))
    return result


def class_optimum(schedules, budget):
    """Least cost of the schedules whose peak fits ``budget`` (None if none fits)."""
    fits = [c for p, c, _ in schedules if p <= budget]
    return min(fits) if fits else None


def optimal_schedule(model, budget, storage):
    """Cheapest valid schedule of a chain within ``budget`` bytes, over ALL schedules.

    Parameters
    ----------
    model : planner.model.Model
        A chain of a few layers (the state space is exponential).
    budget : int
    storage : planner.device.Storage

    Returns
    -------
    (cost, ops) or None
        ``cost`` is compute plus transfer; ``ops`` include the frees, were
        replayed by the simulator, are valid and peak at most ``budget``.

    Notes
    -----
    Dead outputs (nothing can read them again: their backward and their
    consumer's have run) are freed at once; every other free is a choice.
    The search is :func:`tests.exhaustive.search_all_schedules` (the one
    over schedules without paging) with the pageouts and pageins added.
    """
    out = [l.output_bytes for l in model.layers]
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[model.time_unit]
    t_out = [(storage.write_latency_s + o / storage.write_bytes_per_s) * scale for o in out]
    t_in = [(storage.read_latency_s + o / storage.read_bytes_per_s) * scale for o in out]
    cap = storage.bytes

    def paging_moves(i, state, base, add):
        a, s, p, d = state
        bit = 1 << i
        if (a & bit) and not (p & bit) and not (d & bit):
            if cap is None or sum(o for k, o in enumerate(out) if p >> k & 1) + out[i] <= cap:
                add((t_out[i], base, (a, s, p | bit, d), pageout(i)))
        if (p & bit) and not (a & bit) and not (d & bit):
            add((t_in[i], base + out[i], (a | bit, s, p, d), pagein(i)))

    return search_all_schedules(model, budget, storage=storage, more_moves=paging_moves)


def compare_unrestricted(cases, *, every=1):
    """How the unrestricted optimum compares with the class optimum.

    Parameters
    ----------
    cases : iterable of (model, storage)
    every : int, keyword-only
        Compare at every ``every``-th distinct class budget.

    Returns
    -------
    dict
        ``budgets`` compared, ``beaten`` (unrestricted strictly cheaper),
        ``gaps`` (relative gaps ``class / unrestricted - 1`` where beaten),
        ``below`` (budgets just under the class's least peak: 99%, 90% and
        75% of it) and ``below_fits`` (of those, where an unrestricted
        schedule fits).
    """
    stats = {"budgets": 0, "beaten": 0, "gaps": [], "below": 0, "below_fits": 0}
    for model, storage in cases:
        schedules = class_schedules(model, storage)
        peaks = sorted({peak for peak, _, _ in schedules})
        for budget in peaks[::every]:
            best = class_optimum(schedules, budget)
            found = optimal_schedule(model, budget, storage)
            stats["budgets"] += 1
            if found[0] < best * (1 - 1e-9):
                stats["beaten"] += 1
                stats["gaps"].append(best / found[0] - 1)
        for frac in (0.99, 0.9, 0.75):
            stats["below"] += 1
            if optimal_schedule(model, int(peaks[0] * frac), storage) is not None:
                stats["below_fits"] += 1
    return stats


def _random_cases(sizes, seed):
    """Random timed chains with random storage figures (as the tests draw them)."""
    import numpy as np

    from planner.device import Storage
    from planner.model import model_from_dict
    from planner.synthetic import random_chain

    rng = np.random.default_rng(seed)
    for k, n in enumerate(sizes):
        doc = random_chain(n, seed * 1000 + k).to_dict()
        doc["time_unit"] = "ms"
        storage = Storage(
            read_bytes_per_s=float(rng.uniform(2e6, 1e8)),
            write_bytes_per_s=float(rng.uniform(2e6, 1e8)),
            read_latency_s=float(rng.uniform(0, 3e-3)),
            write_latency_s=float(rng.uniform(0, 3e-3)),
        )
        yield model_from_dict(doc), storage


if __name__ == "__main__":  # pragma: no cover - a report, run by hand
    import sys

    # python -m tests.exhaustive_paging [CHAINS_OF_6 [EVERY [SEED]]]
    args = [int(a) for a in sys.argv[1:]] + [8, 3, 7][len(sys.argv) - 1 :]
    for label, sizes, every in (("n=3..5", [3, 4, 5] * 8, 1), ("n=6", [6] * args[0], args[1])):
        if not sizes:
            continue
        s = compare_unrestricted(_random_cases(sizes, args[2]), every=every)
        gaps = s["gaps"]
        print(
            f"{label}: {len(sizes)} chains, {s['budgets']} budgets; unrestricted cheaper at {s['beaten']} "
            f"({100 * s['beaten'] / max(1, s['budgets']):.1f}%), by {100 * (sum(gaps) / len(gaps) if gaps else 0):.2f}% "
            f"on average, {100 * max(gaps, default=0):.2f}% at most; below the class's least peak "
            f"(99/90/75%): {s['below_fits']} of {s['below']} budgets fit unrestricted",
            flush=True,
        )
