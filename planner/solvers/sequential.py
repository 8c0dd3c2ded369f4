"""``sequential``: PyTorch's ``checkpoint_sequential``, reproduced faithfully."""

from planner.errors import InfeasibleError, OptionError
from planner.lowering import (
    RECOMPUTE,
    STORE,
    chain_segments_peak,
    fits_int64,
    hold_segment_inputs,
    insert_frees,
    segments_to_ops,
)
from planner.model import chains_only
from planner.simulate import simulate

__all__ = ["sequential", "sequential_segments"]


def sequential_segments(n, segments):
    """The segments of ``checkpoint_sequential(functions, segments, input)``.

    The first ``segments - 1`` segments hold ``n // segments`` layers each and
    are checkpointed; the last holds the rest and runs plain.

    Returns
    -------
    list of (start, stop, mode)
    """
    if not 1 <= segments <= n:
        raise OptionError(f"segments must be between 1 and the number of layers ({n}), got {segments}")
    size = n // segments
    result = [(k * size, (k + 1) * size, RECOMPUTE) for k in range(segments - 1)]
    result.append(((segments - 1) * size, n, STORE))
    return result


def _lowered(model, segments):
    """Complete ops of ``segments``, frees where PyTorch frees."""
    return hold_segment_inputs(insert_frees(model, segments_to_ops(model, segments)), segments)


@chains_only("sequential")
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
        Complete ops, frees included: every output is freed as early as the
        rules allow, except that a checkpointed segment's input stays until
        the backward of the segment's first layer, as PyTorch's checkpoint
        keeps it (docs/fidelity.md).
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
    Candidates are tried from the least recomputation up and the first that
    fits is taken: O(n) numpy work each (the exact segment-peak evaluator of
    :mod:`planner.lowering`, or the simulator when sizes could overflow
    int64), O(n^2) when every count has to be tried.
    """
    n = len(model)
    if segments is not None:
        if not isinstance(segments, int) or isinstance(segments, bool) or not 1 <= segments <= n:
            raise OptionError(f"--segments must be between 1 and {n} (the number of layers)")
        return _lowered(model, sequential_segments(n, segments)), {"segments": segments}

    # Recomputed forward time for each count; try the cheapest first.
    prefix = [0.0]
    for layer in model.layers:
        prefix.append(prefix[-1] + layer.forward)
    order = sorted(range(1, n + 1), key=lambda s: (prefix[(s - 1) * (n // s)], s))
    if fits_int64(model):
        def peak_of(s):
            starts = [start for start, _, _ in sequential_segments(n, s)]
            return chain_segments_peak(model, starts, hold_inputs=True)

    else:

        def peak_of(s):
            return simulate(model, _lowered(model, sequential_segments(n, s))).peak_bytes

    best = None
    for s in order:
        peak = peak_of(s)
        if budget is not None and peak <= budget:
            return _lowered(model, sequential_segments(n, s)), {"segments": s}
        if best is None or peak < best[0]:
            best = (peak, s)
    if budget is None:
        return _lowered(model, sequential_segments(n, best[1])), {"segments": best[1]}
    raise InfeasibleError(
        f"no segment count fits {budget} bytes; the least peak is {best[0]} bytes "
        f"(segments={best[1]})",
        least_bytes=best[0],
    )
