"""``store-all``: plain autograd, no recomputation."""

from planner.lowering import store_all_ops

__all__ = ["store_all"]


def store_all(model, *, budget=None):
    """Forward every layer with save, then run every backward.

    Each output is freed as soon as nothing reads it any more (the shared
    lowering does that), so the peak is what plain autograd holds.

    Parameters
    ----------
    model : planner.model.Model
    budget : int or None, keyword-only
        Ignored: store-all has one schedule; the registry checks that it fits.

    Returns
    -------
    ops : list of Op
    params : dict
        Empty: store-all has no parameters.

    Notes
    -----
    O(n) for n layers.
    """
    return store_all_ops(model), {}
