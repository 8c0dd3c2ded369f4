"""Exhaustive oracles for ``dp-paging`` (small chains only), sharing no code with it.

* :func:`class_schedules` enumerates every schedule of ``dp-paging``'s class
  (persistent schedules where ``Solve(s, t)`` may page its checkpoint
  ``a[s-1]`` out while ``Solve(s', t)`` runs and page it back in for
  ``Solve(s, s'-1)``; see :mod:`planner.solvers.dp_paging`), lowers each with
  the shared :func:`planner.lowering.insert_frees` (the sink's output held until
  its backward) and measures it with the simulator.
* :func:`overlap_class_schedules` is the same class with transfers beside
  compute (``edgeplan-schedule/3``, a storage with ``overlap``): each schedule
  of :func:`class_schedules` with every pagein issued at any earlier place and
  every free that follows a pageout of its output at any later place (never
  past another op on the same output), in every order among themselves, each
  measured by the simulator on the device's timeline (its step's time).  The
  greedy of :func:`planner.solvers._overlap.overlap` picks one member per
  schedule; this enumerates all of them.
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

import itertools

from planner.lowering import insert_frees
from planner.schedule import OpKind, backward, forward, free, pagein, pageout
from planner.simulate import simulate
from tests.exhaustive import search_all_schedules

__all__ = ["class_schedules", "class_optimum", "overlap_class_schedules", "optimal_schedule", "lower_holding_sink"]

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


def overlap_class_schedules(model, storage):
    """Every schedule of the class with its transfers moved for the copy engine.

    Returns
    -------
    list of (peak_bytes, step_time, ops)
        The valid ones, measured with ``storage`` (whose ``overlap`` should be
        true; ``step_time`` is then the device's timeline).  The schedules of
        :func:`class_schedules` are among them (nothing moved).
    """
    result, seen = [], set()
    for _, _, ops in class_schedules(model, storage):
        for variant in _transfer_placements(ops):
            if variant in seen:
                continue
            seen.add(variant)
            sim = simulate(model, variant, storage=storage)
            if sim.valid:
                result.append((sim.peak_bytes, sim.step_time, variant))
    return result


def _transfer_placements(ops):
    """``ops`` with each pagein anywhere earlier and each free after a pageout anywhere later (tuples).

    A moved op never passes another op on the same output; the moved ops take
    every order among themselves where their ranges meet.
    """
    moved, fixed, paged = [], [], set()
    for op in ops:
        if op.kind is OpKind.PAGEOUT:
            paged.add(op.layer)
        if op.kind is OpKind.PAGEIN or (op.kind is OpKind.FREE and op.layer in paged):
            paged.discard(op.layer)
            moved.append((op, len(fixed)))  # its place: before fixed[len(fixed)]
        else:
            fixed.append(op)
    ranges = []  # slots (before fixed[k]; k = len(fixed): at the end) each moved op may take
    for op, slot in moved:
        same = [k for k, other in enumerate(fixed) if other.layer == op.layer]
        if op.kind is OpKind.PAGEIN:
            lo = max([k + 1 for k in same if k < slot], default=0)
            ranges.append((lo, slot))
        else:
            hi = min([k for k in same if k >= slot], default=len(fixed))
            ranges.append((slot, hi))

    def walk(k, left, prefix):
        if k > len(fixed):
            yield tuple(prefix)
            return
        here = [m for m in left if ranges[m][0] <= k]
        due = [m for m in here if ranges[m][1] == k]
        for size in range(len(due), len(here) + 1):
            for chosen in itertools.permutations(here, size):
                if not set(due) <= set(chosen):
                    continue
                rest = [m for m in left if m not in chosen]
                tail = prefix + [moved[m][0] for m in chosen] + ([fixed[k]] if k < len(fixed) else [])
                yield from walk(k + 1, rest, tail)

    yield from walk(0, list(range(len(moved))), [])


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


def compare_overlap(cases):
    """How ``dp-paging`` with transfers beside compute compares with its class's brute force.

    Returns
    -------
    dict
        ``budgets`` compared (every distinct peak of
        :func:`overlap_class_schedules`), ``equal`` (dp-paging's step equals
        the class optimum's) and ``gaps`` (``dp-paging / optimum - 1`` where not).
    """
    from dataclasses import replace

    from planner.solvers.dp_paging import dp_paging

    stats = {"budgets": 0, "equal": 0, "gaps": []}
    for model, storage in cases:
        storage = replace(storage, overlap=True)
        schedules = overlap_class_schedules(model, storage)
        for budget in sorted({peak for peak, _, _ in schedules}):
            best = min(step for peak, step, _ in schedules if peak <= budget)
            ops, _ = dp_paging(model, budget=budget, storage=storage)
            step = simulate(model, ops, storage=storage).step_time
            stats["budgets"] += 1
            if step <= best * (1 + 1e-9):
                stats["equal"] += 1
            else:
                stats["gaps"].append(step / best - 1)
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
    # python -m tests.exhaustive_paging --overlap [CHAINS [SEED]]: transfers beside compute
    if sys.argv[1:2] == ["--overlap"]:
        count, seed = ([int(a) for a in sys.argv[2:]] + [24, 7][len(sys.argv) - 2 :])[:2]
        s = compare_overlap(_random_cases([3, 4] * (count // 2), seed))
        gaps = s["gaps"]
        print(
            f"{count} chains of 3-4 layers (seed {seed}), {s['budgets']} budgets: dp-paging equals the "
            f"brute-force optimum of its class with transfers beside compute at {s['equal']}; slower at "
            f"{len(gaps)}, by {100 * (sum(gaps) / len(gaps) if gaps else 0):.2f}% on average, "
            f"{100 * max(gaps, default=0):.2f}% at most"
        )
        sys.exit(0)
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
