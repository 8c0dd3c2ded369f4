"""``sequential``: PyTorch's ``checkpoint_sequential``, reproduced faithfully."""

from planner.errors import InfeasibleError, NotApplicableError
from planner.lowering import RECOMPUTE, STORE, insert_frees, segments_to_ops
from planner.simulate import simulate

__all__ = ["sequential", "sequential_segments"]

# Above this many candidate segment counts the search looks at the ones with
# the least recomputation first and stops at the first that fits.
_MAX_CANDIDATES = 2000


def sequential_segments(n, segments):
    """The segments of ``checkpoint_sequential(functions, segments, input)``.

    The first ``segments - 1`` segments hold ``n // segments`` layers each and
    are checkpointed; the last holds the rest and runs plain.

    Returns
    -------
    list of (start, stop, mode)
    """
    if not 1 <= segments <= n:
        raise ValueError(f"segments must be between 1 and the number of layers ({n}), got {segments}")
    size = n // segments
    result = [(k * size, (k + 1) * size, RECOMPUTE) for k in range(segments - 1)]
    result.append(((segments - 1) * size, n, STORE))
    return result


def sequential(model, *, budget=None, segments=None):
    """PyTorch's ``checkpoint_sequential(..., use_reentrant=False)`` on a chain.

    Parameters
    ----------
    model : planner.model.Model
        A chain.
    budget : int or None, keyword-only
        Activation budget in bytes.  Used only when ``segments`` is None.
    segments : int or None, keyword-only
        The segment count.  None picks the count with the least compute whose
        peak fits ``budget`` (the least peak when ``budget`` is None).

    Returns
    -------
    ops : list of Op
    params : dict
        ``{"segments": s}``.

    Raises
    ------
    NotApplicableError
        On a model that is not a chain.
    InfeasibleError
        When no segment count fits; ``least_bytes`` is the least peak of any.

    Notes
    -----
    Each candidate is replayed by the simulator: O(n) per candidate, O(n^2)
    when every count has to be tried.
    """
    if not model.is_chain:
        raise NotApplicableError(
            "sequential (checkpoint_sequential) applies to chains only; this model is a DAG"
        )
    n = len(model)
    if segments is not None:
        if not isinstance(segments, int) or isinstance(segments, bool) or not 1 <= segments <= n:
            raise ValueError(f"--segments must be between 1 and {n} (the number of layers)")
        return segments_to_ops(model, sequential_segments(n, segments)), {"segments": segments}

    # Recomputed forward time for each count; try the cheapest first.
    prefix = [0.0]
    for layer in model.layers:
        prefix.append(prefix[-1] + layer.forward)
    counts = range(1, n + 1)
    if n > _MAX_CANDIDATES:
        counts = range(1, _MAX_CANDIDATES + 1)
    order = sorted(counts, key=lambda s: (prefix[(s - 1) * (n // s)], s))
    best = None
    for s in order:
        ops = segments_to_ops(model, sequential_segments(n, s))
        peak = simulate(model, insert_frees(model, ops)).peak_bytes
        if budget is not None and peak <= budget:
            return ops, {"segments": s}
        if best is None or peak < best[0]:
            best = (peak, s, ops)
    if budget is None:
        return best[2], {"segments": best[1]}
    raise InfeasibleError(
        f"no segment count fits {budget} bytes; the least peak is {best[0]} bytes "
        f"(segments={best[1]})",
        least_bytes=best[0],
    )
