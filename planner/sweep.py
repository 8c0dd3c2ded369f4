"""Memory/overhead curves: how much recomputation each strategy needs at each memory size.

:func:`memory_range` finds the interesting interval (from the least memory any
strategy can train with to the memory plain autograd needs), :func:`memory_sizes`
spreads sizes over it and :func:`sweep` solves every strategy at every size.
Every point is a schedule the simulator replayed, exactly as ``edgeplan
solve`` would write it.
"""

from dataclasses import dataclass

from planner import solvers
from planner.budget import split_memory
from planner.errors import OptionError
from planner.objective import TIME

__all__ = ["SweepPoint", "MemoryRange", "SweepPlan", "memory_range", "memory_sizes", "plan", "sweep", "best_overheads"]


@dataclass(frozen=True)
class SweepPoint:
    """One strategy at one memory size.

    Attributes
    ----------
    memory_bytes : int
        Device memory for the whole step (activations + fixed memory).
    activation_bytes : int
        The activation budget at that memory.
    strategy : str
    feasible : bool
        The strategy found a schedule that fits.
    peak_bytes, compute, overhead, forwards
        The simulator's numbers for that schedule (None when infeasible).
        ``peak_bytes`` is activation memory, like every budget.
    least_bytes : int or None
        When infeasible, the least activation budget the strategy needs (if known).
    transfer : float or None
        With a storage (paging, SPEC section 5): the schedule's transfer time,
        which ``overhead`` includes; None without one.
    energy_j : float or None
        The schedule's predicted joules, with a device's power figures.
    """

    memory_bytes: int
    activation_bytes: int
    strategy: str
    feasible: bool
    peak_bytes: int = None
    compute: float = None
    overhead: float = None
    forwards: int = None
    least_bytes: int = None
    transfer: float = None
    energy_j: float = None

    def to_dict(self):
        """The JSON object of ``edgeplan sweep --json`` (``transfer`` only when sweeping with a storage)."""
        doc = {
            "memory_bytes": self.memory_bytes,
            "activation_bytes": self.activation_bytes,
            "strategy": self.strategy,
            "feasible": self.feasible,
            "overhead": self.overhead,
            "peak_bytes": self.peak_bytes,
            "compute": self.compute,
            "forwards": self.forwards,
        }
        if self.transfer is not None:
            doc["transfer"] = self.transfer
        if self.energy_j is not None:
            doc["energy_j"] = self.energy_j
        return doc


@dataclass(frozen=True)
class MemoryRange:
    """The interval worth sweeping, in device memory (fixed memory included).

    Attributes
    ----------
    least_memory_bytes : int
        The least memory with which some strategy trains the model.
    store_all_memory_bytes : int
        The memory plain autograd (``store-all``) needs: above it nothing is
        recomputed.
    fixed_bytes : int
        Parameters x 2 (SGD) or x 4 (Adam).
    store_all_peak_bytes : int
        ``store-all``'s activation peak.
    """

    least_memory_bytes: int
    store_all_memory_bytes: int
    fixed_bytes: int
    store_all_peak_bytes: int


def memory_range(model, *, optimizer="sgd", strategies=None, options=None, shared=None, storage=None):
    """From the least workable memory to the memory of plain autograd.

    Parameters
    ----------
    model : planner.model.Model
    optimizer : {"sgd", "adam"}, keyword-only
    strategies : list of str or None, keyword-only
        Whose least memory counts; default every applicable strategy.
    options : dict or None, keyword-only
        Strategy options, as for :func:`planner.solvers.run_all`.
    shared : dict or None, keyword-only
        Work kept for :func:`sweep` on the same model (pass the same dict).
    storage : planner.device.Storage or None, keyword-only
        For paging strategies (SPEC section 5), which join the default set with it.

    Returns
    -------
    MemoryRange

    Notes
    -----
    Asks every strategy for a schedule with no activation memory at all: each
    answers with the least budget it needs (``InfeasibleError.least_bytes``),
    one solve per strategy.  A strategy that cannot say is left out; when none
    can, the range starts at the store-all memory.
    """
    fixed = split_memory(model, 0, optimizer).fixed_bytes
    store_all = solvers.solve(model, None, "store-all").result.peak_bytes
    known = [store_all]
    outcomes = solvers.run_all(
        model, 0, strategies=strategies, options=options, time_limit=solvers.SWEEP_TIME_LIMIT, shared=shared,
        storage=storage,
    )
    for outcome in outcomes:
        if outcome.feasible:
            known.append(outcome.solution.result.peak_bytes)
        elif outcome.least_bytes is not None:
            known.append(outcome.least_bytes)
    return MemoryRange(
        least_memory_bytes=fixed + min(known),
        store_all_memory_bytes=fixed + store_all,
        fixed_bytes=fixed,
        store_all_peak_bytes=store_all,
    )


def memory_sizes(low, high, steps):
    """``steps`` memory sizes evenly spread from ``low`` to ``high``, both included.

    Parameters
    ----------
    low, high : int
        Bytes, ``low <= high``.
    steps : int
        At least 1; equal sizes (a narrow range) are merged.

    Returns
    -------
    list of int
        Increasing.

    Raises
    ------
    ValueError
        If ``low > high`` or ``steps < 1``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if low > high:
        raise ValueError(f"the lower end {low} is above the upper end {high}")
    if steps == 1:
        return [high]
    sizes = {low + (high - low) * k // (steps - 1) for k in range(steps)}
    return sorted(sizes)


def sweep(
    model, memories, *, optimizer="sgd", strategies=None, options=None, progress=None, shared=None, storage=None,
    objective=TIME,
):
    """Solve every strategy at every memory size.

    Parameters
    ----------
    model : planner.model.Model
    memories : iterable of int
        Device memory sizes in bytes (the fixed memory is subtracted).
    optimizer : {"sgd", "adam"}, keyword-only
    strategies : list of str or None, keyword-only
        Default: the default set (:func:`planner.solvers.applicable`), milp
        with :data:`planner.solvers.SWEEP_TIME_LIMIT` seconds per size unless
        ``options`` give a ``time_limit``.
    options : dict or None, keyword-only
        Strategy options (``segments``, ``snapshots``, ``time_limit``).
    progress : callable or None, keyword-only
        ``progress(memory_bytes, strategy, outcome_or_None)`` before and after
        each solve.
    shared : dict or None, keyword-only
        Work kept across the sizes (and from :func:`memory_range` when it got
        the same dict): dp builds one table per octave of budgets instead of
        one per size.  The points are the same as without it.
    storage : planner.device.Storage or None, keyword-only
        For paging strategies (SPEC section 5), which join the default set with it.
    objective : planner.objective.Objective, keyword-only
        What the paging strategies minimise, the time budget, and the power
        figures of the points' ``energy_j``.

    Returns
    -------
    list of SweepPoint
        By memory, then in the order of ``strategies``.  A memory below the
        fixed memory gives infeasible points.

    Notes
    -----
    ``len(memories) x len(strategies)`` solves; dp's tables are shared, so
    its cost grows with the number of octaves the sizes span, not with the
    number of sizes.
    """
    names = solvers.applicable(model, options, storage=storage) if strategies is None else list(strategies)
    memories = list(memories)
    shared = {} if shared is None else shared
    shared["budgets"] = [split_memory(model, memory, optimizer).activation_bytes for memory in memories]
    points = []
    for memory in memories:
        split = split_memory(model, memory, optimizer)
        if split.activation_bytes < 0:
            points.extend(
                SweepPoint(memory, split.activation_bytes, name, False) for name in names
            )
            continue
        hook = None
        if progress is not None:

            def hook(name, outcome, _memory=memory):
                progress(_memory, name, outcome)

        outcomes = solvers.run_all(
            model, split.activation_bytes, strategies=strategies, options=options, progress=hook,
            time_limit=solvers.SWEEP_TIME_LIMIT, shared=shared, storage=storage, objective=objective,
        )
        for outcome in outcomes:
            if outcome.feasible:
                r = outcome.solution.result
                point = SweepPoint(
                    memory,
                    split.activation_bytes,
                    outcome.strategy,
                    True,
                    peak_bytes=r.peak_bytes,
                    compute=r.compute,
                    overhead=r.overhead,
                    forwards=r.forwards,
                    transfer=r.transfer if storage is not None else None,
                    energy_j=objective.energy(r),
                )
            else:
                point = SweepPoint(
                    memory,
                    split.activation_bytes,
                    outcome.strategy,
                    False,
                    least_bytes=outcome.least_bytes,
                )
            points.append(point)
    return points


@dataclass(frozen=True)
class SweepPlan:
    """The memory sizes of a sweep and what :func:`plan` learnt on the way.

    Attributes
    ----------
    span : MemoryRange
    sizes : list of int
        Device memory sizes, increasing.
    optimizer : str
    storage : planner.device.Storage or None
    shared : dict
        Work kept for :func:`sweep` (pass it on).
    """

    span: MemoryRange
    sizes: list
    optimizer: str
    storage: object
    shared: dict


def plan(model, *, low=None, high=None, steps=12, optimizer="sgd", strategies=None, options=None,
         storage=None, device_memory=None):
    """The sizes ``edgeplan sweep`` solves at: ``steps`` sizes from ``low`` to ``high``.

    Parameters
    ----------
    low, high : int or None, keyword-only
        Default: the least memory any strategy trains with, and what
        store-all needs (at most ``device_memory`` when given, never below ``low``).
    steps : int, keyword-only
    optimizer, strategies, options, storage : keyword-only
        As for :func:`sweep`.
    device_memory : int or None, keyword-only
        The memory of the ``--device``.

    Returns
    -------
    SweepPlan

    Raises
    ------
    OptionError
        If ``low`` is above ``high``.
    """
    shared = {}  # work the strategies keep across the sizes (dp's tables)
    span = memory_range(
        model, optimizer=optimizer, strategies=strategies, options=options, shared=shared, storage=storage
    )
    low = span.least_memory_bytes if low is None else low
    if high is None:
        high = span.store_all_memory_bytes
        if device_memory is not None:
            high = max(min(high, device_memory), low)
    if low > high:
        raise OptionError(f"--from {low:,} bytes is above --to {high:,} bytes")
    return SweepPlan(span=span, sizes=memory_sizes(low, high, steps), optimizer=optimizer, storage=storage,
                     shared=shared)


def best_overheads(points, field="overhead"):
    """``{memory_bytes: least overhead of a feasible point, or None}`` (transfer included when paging).

    With ``field="energy_j"`` (``--objective energy``), the least joules instead.
    """
    best = {}
    for p in points:
        best.setdefault(p.memory_bytes, None)
        value = getattr(p, field)
        if p.feasible and value is not None and (best[p.memory_bytes] is None or value < best[p.memory_bytes]):
            best[p.memory_bytes] = value
    return best
