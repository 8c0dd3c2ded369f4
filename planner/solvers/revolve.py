"""``revolve``: Griewank and Walther's binomial checkpointing for chains.

A chain of ``l`` layers is reversed with ``c`` snapshots of the states between
layers (state ``x_i`` is the input of layer ``i``; ``x_0`` is the model input,
which edgeplan always holds, so it is one snapshot for free).  With
``--snapshots C`` at most ``C`` layer outputs are held as checkpoints at once,
that is ``c = C + 1`` revolve snapshots.  The schedule advances (forwards
without save) from a snapshot to a split point chosen by the binomial rule,
stores it, reverses the right part with one snapshot less and then the left
part with the same snapshots.  Each reversal step ("turn") forwards its layer
with save and runs its backward.  The number of advance steps is the optimum
``numforw(l, c)`` of Griewank and Walther, so a schedule has
``l + numforw(l, C + 1)`` forward ops.

The ops are produced by an iterative, lazy generator that also emits every
``free`` at the earliest moment SPEC section 3 allows (the same frees as
:func:`planner.lowering.insert_frees`), so schedules of 10^6 layers can stream
through the simulator without ever being held as a list.
"""

import math

from planner.errors import InfeasibleError, OptionError
from planner.model import chains_only
from planner.schedule import backward, forward, free
from planner.simulate import simulate

__all__ = [
    "revolve",
    "revolve_ops",
    "binomial_split",
    "numforw",
    "repetitions",
    "balanced_snapshots",
]

# A schedule handed to the registry is held as a tuple and replayed: beyond
# this many ops (about a minute of simulation) --snapshots is refused.
MAX_OPS = 30_000_000
# While searching the snapshot count, candidates longer than this are skipped.
_SEARCH_MAX_OPS = 3_000_000
# Every snapshot count up to this one is a candidate; above it a geometric grid.
_DENSE_CANDIDATES = 24
_GRID_RATIO = 1.25


def _beta(c, r):
    """``binom(c + r, c)``: the most steps ``c`` snapshots reverse with ``r`` repetitions."""
    if r < 0:
        return 0
    return math.comb(c + r, c)


def repetitions(l, c):
    """The least ``r`` with ``binom(c + r, c) >= l`` (the repetition number).

    Parameters
    ----------
    l : int
        Number of steps (layers), ``l >= 1``.
    c : int
        Number of revolve snapshots, ``c >= 1`` (the start state included).

    Returns
    -------
    int
    """
    r = 0
    beta = 1
    while beta < l:
        r += 1
        beta = beta * (c + r) // r
    return r


def numforw(l, c):
    """Griewank and Walther's least number of advance steps to reverse ``l`` steps.

    Parameters
    ----------
    l : int
        Number of steps, ``l >= 1``.
    c : int
        Number of snapshots, ``c >= 1``, the one holding the start state included.

    Returns
    -------
    int
        ``r * l - binom(c + r, c + 1)`` with ``r = repetitions(l, c)``;
        ``l * (l - 1) / 2`` for ``c = 1``.  The turn steps (one forward with
        save per step) are not counted.

    References
    ----------
    A. Griewank and A. Walther, "Algorithm 799: revolve: an implementation of
    checkpointing for the reverse or adjoint mode of computational
    differentiation", ACM TOMS 26(1), 2000.
    """
    if l < 1 or c < 1:
        raise ValueError(f"numforw needs l >= 1 and c >= 1, got l={l}, c={c}")
    if c == 1:
        return l * (l - 1) // 2
    r = repetitions(l, c)
    return r * l - math.comb(c + r, c + 1)


def binomial_split(l, c):
    """Where the binomial rule stores the next snapshot, counted from the start.

    Parameters
    ----------
    l : int
        Steps of the range to reverse, ``l >= 2``.
    c : int
        Snapshots for it, ``c >= 2``, the one holding its start included.

    Returns
    -------
    int
        ``m`` with ``1 <= m < l``: advance ``m`` steps and store the state.

    Notes
    -----
    For ``l >= 2`` steps and ``c >= 2`` snapshots with repetition number ``r``,
    any ``m`` with ``beta(c, r-2) <= m <= beta(c, r-1)`` and
    ``beta(c-1, r-1) <= l - m <= beta(c-1, r)`` gives
    ``m + numforw(l - m, c - 1) + numforw(m, c) = numforw(l, c)``, because
    ``numforw`` is piecewise linear with slope ``r`` and Pascal's rule joins the
    pieces.  The largest such ``m`` is taken: the snapshot as late as possible.
    """
    r = repetitions(l, c)
    hi = min(l - 1, _beta(c, r - 1), l - _beta(c - 1, r - 1))
    return max(hi, 1)


def _revolve_snapshots(n, snapshots):
    """``--snapshots C`` as revolve's ``c``: ``C + 1`` (the start state), C clamped to ``n - 1``.

    More than ``n - 1`` checkpoints cannot be used on ``n`` layers.
    """
    return min(snapshots, max(n - 1, 0)) + 1


def _tasks_check(n, snapshots):
    if not isinstance(snapshots, int) or isinstance(snapshots, bool) or snapshots < 0:
        raise OptionError(f"--snapshots must be an integer >= 0, got {snapshots!r}")
    return _revolve_snapshots(n, snapshots)


def revolve_ops(model, snapshots, *, frees=True):
    """Yield the revolve schedule of a chain, lazily.

    Parameters
    ----------
    model : planner.model.Model
        A chain (its ``needs_inputs`` and ``needs_output`` flags decide where
        frees go).
    snapshots : int
        Layer outputs that may be held as checkpoints at once (the model input
        is one more, for free).
    frees : bool, keyword-only
        Also yield every ``free`` as early as SPEC section 3 allows.  Without
        them, pass the ops to :func:`planner.lowering.insert_frees`.

    Yields
    ------
    Op

    Notes
    -----
    Iterative: an explicit stack of pending ranges, at most about ``c + r``
    deep (each level stores a snapshot, so either the snapshots or the
    repetitions left go down by one).  O(1) work per op plus O(r) per stored
    snapshot; nothing but the stack is held.
    """
    n = len(model)
    c0 = _tasks_check(n, snapshots)
    layers = model.layers
    # Each layer's turn (forward with save, backward and the frees around
    # them) and its plain forward, made once: the loop below only yields.
    # The loss reads the sink's output until the sink's backward (SPEC section
    # 3): it is freed after that backward, as if the backward read it.
    turns = []
    for j, layer in enumerate(layers):
        kept = model.tables.output_at_backward[j]
        ops = [forward(j, True)]
        if frees:
            if not kept:
                ops.append(free(j))
            if j and not layer.needs_inputs:
                ops.append(free(j - 1))
        ops.append(backward(j))
        if frees:
            if kept:
                ops.append(free(j))
            if j and layer.needs_inputs:
                ops.append(free(j - 1))
        turns.append(tuple(ops))
    plain = [forward(j, False) for j in range(n)]
    drop = [free(j) for j in range(n)] if frees else None

    stack = [(0, n, c0)]
    while stack:
        start, stop, c = stack.pop()
        if stop - start == 1:
            yield from turns[start]
            continue
        if c == 1:
            ends = range(stop - 1, start - 1, -1)
        else:
            m = binomial_split(stop - start, c)
            stack.append((start, start + m, c))
            stack.append((start + m, stop, c - 1))
            ends = (start + m,)
        for end in ends:
            # Advance from the snapshot x_start to x_end: x_start is kept,
            # the states in between are dropped as soon as they are read.
            if start < end:
                yield plain[start]
            if drop is None:
                for k in range(start + 1, end):
                    yield plain[k]
            else:
                for k in range(start + 1, end):
                    yield plain[k]
                    yield drop[k - 1]
            if c == 1:
                yield from turns[end]


def _walk(n, c0, forward_times=None):
    """Walk the recursion without making ops.

    Returns the number of advance steps and, with ``forward_times``, their
    total forward time, plus the split points of the first sweep.
    """
    prefix = None
    pprefix = None
    if forward_times is not None:
        prefix = [0.0]
        for t in forward_times:
            prefix.append(prefix[-1] + t)
        pprefix = [0.0]
        for p in prefix[:-1]:
            pprefix.append(pprefix[-1] + p)
    advances = 0
    time = 0.0
    first_sweep = []
    stack = [(0, n, c0, True)]
    while stack:
        start, stop, c, spine = stack.pop()
        length = stop - start
        if length == 1:
            continue
        if c == 1:
            advances += length * (length - 1) // 2
            if prefix is not None:
                # sum over j in [start, stop) of (prefix[j] - prefix[start])
                time += (pprefix[stop] - pprefix[start]) - length * prefix[start]
            continue
        if length <= c + 1:
            # One repetition: the split is always one step further, so every
            # step but the last is advanced once and each state is stored.
            advances += length - 1
            if prefix is not None:
                time += prefix[stop - 1] - prefix[start]
            if spine:
                first_sweep.extend(range(start + 1, stop))
            continue
        m = binomial_split(length, c)
        advances += m
        if prefix is not None:
            time += prefix[start + m] - prefix[start]
        if spine:
            first_sweep.append(start + m)
        stack.append((start, start + m, c, False))
        stack.append((start + m, stop, c - 1, spine))
    return advances, time, first_sweep


def balanced_snapshots(l):
    """Revolve's suggested snapshot count when nothing limits memory.

    The least ``c`` with ``binom(2c, c) >= l``: as many snapshots as
    repetitions.  Returned as layer outputs, ``c - 1`` (the input is free).
    """
    c = 1
    while math.comb(2 * c, c) < l:
        c += 1
    return c - 1


def _op_count(n, snapshots):
    """Forward, backward and free ops of the schedule, from the closed form."""
    c = _revolve_snapshots(n, snapshots)
    forwards = n + numforw(n, c)
    frees = forwards  # every output made is freed again
    return forwards + n + frees


def _candidates(n):
    """Snapshot counts worth trying for ``n`` layers, a bounded set."""
    top = n - 1
    found = set(range(0, min(top, _DENSE_CANDIDATES) + 1))
    value = float(_DENSE_CANDIDATES)
    while value < top:
        value *= _GRID_RATIO
        found.add(min(top, int(round(value))))
    found.add(top)
    limit = max(_SEARCH_MAX_OPS, 8 * n)  # the largest count always qualifies
    return sorted(k for k in found if _op_count(n, k) <= limit)


def _lower_bound(model, snapshots, first_sweep):
    """Memory when the sink is forwarded with save: a moment of the schedule."""
    n = len(model)
    layers = model.layers
    held = {s - 1 for s in first_sweep if s >= 1}
    if n >= 2:
        held.add(n - 2)
    sink = layers[n - 1]
    return (
        model.input_bytes
        + sum(layers[i].output_bytes for i in held)
        + sink.output_bytes
        + sink.saved_bytes
        + sink.workspace_forward
    )


class _LazyOps:
    """The ops of a revolve schedule, made again each time they are iterated.

    The registry replays them through the simulator as a stream and the
    schedule file is written from a second pass, so a 10^6-layer schedule is
    never held as a list.
    """

    def __init__(self, model, snapshots, count):
        self._model = model
        self._snapshots = snapshots
        self._count = count

    def __iter__(self):
        return revolve_ops(self._model, self._snapshots)

    def __len__(self):
        return self._count


@chains_only("revolve")
def revolve(model, *, budget=None, snapshots=None):
    """Binomial checkpointing (Griewank and Walther's revolve) on a chain.

    Parameters
    ----------
    model : planner.model.Model
        A chain.
    budget : int or None, keyword-only
        Activation budget in bytes; used only when ``snapshots`` is None.
    snapshots : int or None, keyword-only
        Layer outputs that may be held as checkpoints at once (``--snapshots
        C``); the model input is one more snapshot, for free.  None chooses:
        with a budget, the snapshot count whose schedule has the least compute
        among those whose simulated peak fits (candidates: every count up to
        24, then a geometric grid, each at most max(3 million, 8 n) ops); without a
        budget, revolve's balanced count (as many snapshots as repetitions).

    Returns
    -------
    ops : re-iterable sequence of Op
        Forward, backward and free ops, generated anew on each iteration (the
        registry replays them as a stream; the schedule file is written from
        another pass).
    params : dict
        ``{"snapshots": C}``.

    Raises
    ------
    NotApplicableError
        On a model that is not a chain.
    OptionError
        A negative ``snapshots``, or one whose schedule would exceed 3 x 10^7
        ops.
    InfeasibleError
        When no candidate fits ``budget``; ``least_bytes`` is the least peak
        among the candidates.

    Notes
    -----
    A schedule of ``l`` layers has ``l + numforw(l, C + 1)`` forward ops, the
    optimum for ``C + 1`` snapshots on a uniform chain; making it costs O(1)
    per op.  Choosing ``C`` walks each candidate's recursion (O(l)) to get its
    compute and a lower bound of its peak, then simulates candidates in order
    of compute (streaming, O(ops) each) until one fits.

    References
    ----------
    A. Griewank and A. Walther, "Algorithm 799: revolve: an implementation of
    checkpointing for the reverse or adjoint mode of computational
    differentiation", ACM TOMS 26(1):19-45, 2000.
    """
    n = len(model)
    if snapshots is not None:
        _tasks_check(n, snapshots)
        count = _op_count(n, snapshots)
        if count > MAX_OPS:
            raise OptionError(
                f"--snapshots {snapshots} on {n} layers gives {count:,} ops, more than the "
                f"limit of {MAX_OPS:,}; use more snapshots"
            )
        return _LazyOps(model, snapshots, count), {"snapshots": snapshots}
    if budget is None:
        chosen = min(balanced_snapshots(n), n - 1)
        return _LazyOps(model, chosen, _op_count(n, chosen)), {"snapshots": chosen}

    times = [layer.forward for layer in model.layers]
    rows = []
    for k in _candidates(n):
        _, extra, sweep = _walk(n, k + 1, times)
        rows.append((extra, k, _lower_bound(model, k, sweep)))
    rows.sort()
    best_peak = None
    best_k = None
    skipped = []
    for extra, k, bound in rows:
        if bound > budget:
            skipped.append((bound, k))
            continue
        peak = simulate(model, revolve_ops(model, k)).peak_bytes
        if peak <= budget:
            return _LazyOps(model, k, _op_count(n, k)), {"snapshots": k}
        if best_peak is None or peak < best_peak:
            best_peak, best_k = peak, k
    # Nothing fits: the least peak among the candidates, for least_bytes.
    for bound, k in sorted(skipped):
        if best_peak is not None and bound >= best_peak:
            break
        peak = simulate(model, revolve_ops(model, k)).peak_bytes
        if best_peak is None or peak < best_peak:
            best_peak, best_k = peak, k
    raise InfeasibleError(
        f"no snapshot count fits {budget} bytes; the least peak is {best_peak} bytes "
        f"(snapshots={best_k})",
        least_bytes=best_peak,
    )
