"""``sqrt-n``: Chen et al.'s sqrt(n) checkpointing of a chain."""

import math

from planner.lowering import RECOMPUTE, STORE, segments_to_ops
from planner.model import chains_only

__all__ = ["sqrt_n", "sqrt_n_segments"]


def sqrt_n_segments(n):
    """Split ``n`` layers into ``k = round(sqrt(n))`` segments of near-equal size.

    Segment sizes differ by at most one (the longer ones first).  Every segment
    but the last is recomputed; the last is stored, because its backward
    follows its forward at once.

    Parameters
    ----------
    n : int
        Number of layers, ``n >= 1``.

    Returns
    -------
    list of (start, stop, mode)
    """
    if n < 1:
        raise ValueError(f"a chain has at least one layer, got {n}")
    k = max(1, round(math.sqrt(n)))
    size, extra = divmod(n, k)
    result = []
    start = 0
    for index in range(k):
        stop = start + size + (1 if index < extra else 0)
        result.append((start, stop, RECOMPUTE))
        start = stop
    last = result[-1]
    result[-1] = (last[0], last[1], STORE)
    return result


@chains_only("sqrt-n")
def sqrt_n(model, *, budget=None):
    """Chen et al.'s sqrt(n) strategy on a chain.

    The chain is cut into about sqrt(n) segments of about sqrt(n) layers; the
    input of each segment is kept from the forward pass, everything else in a
    segment is dropped and recomputed once, just before the segment's
    backward.  Memory O(sqrt(n)) layer outputs for one extra forward pass.

    Parameters
    ----------
    model : planner.model.Model
        A chain.
    budget : int or None, keyword-only
        Ignored: the strategy has one schedule; the registry checks that it
        fits.

    Returns
    -------
    ops : list of Op
        Forward and backward ops (the shared lowering adds the frees).
    params : dict
        ``{"segments": k}``.

    Raises
    ------
    NotApplicableError
        On a model that is not a chain.

    Notes
    -----
    O(n) for n layers.

    References
    ----------
    T. Chen, B. Xu, C. Zhang and C. Guestrin, "Training Deep Nets with
    Sublinear Memory Cost", arXiv:1604.06174, 2016, section 4.
    """
    segments = sqrt_n_segments(len(model))
    return segments_to_ops(model, segments), {"segments": len(segments)}
