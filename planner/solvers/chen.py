"""``chen-greedy``: Chen et al.'s memory planning with a segment budget, for chains and DAGs.

Walk the layers in topological order and add up the memory each one holds
(``output_bytes + saved_bytes``) since the last checkpoint; at a split point
where the sum passes the segment budget ``b``, keep that layer's output as a
checkpoint and start a new segment.  Segments are recomputed once before their
backward, the last one is stored (Algorithm 3 of Chen et al. 2016).  The
budget ``b`` is searched, as the paper suggests, over a bounded grid.

Split points are the layers after which a single tensor crosses the
topological order: the layer's own output.  They are the articulation points
of the undirected graph (the model input left out: it is always in memory) at
which the order can be cut, plus the first layer when only its output
crosses; on a chain, every layer but the last.  Cutting only there is what
makes a segment's recomputation need nothing but its checkpoint.

Names: the strategy is ``chen-greedy`` and its function ``chen_greedy`` (the
same name as a Python identifier); the module is named after the paper, as
``revolve`` is, because it also holds the paper's building blocks
(:func:`split_points`, :func:`greedy_checkpoints`) that tests and benchmarks
import from here.
"""

from planner.errors import InfeasibleError
from planner.lowering import (
    RECOMPUTE,
    STORE,
    chain_segments_peak,
    fits_int64,
    insert_frees,
    segments_to_ops,
    splitting_vertices,
)
from planner.simulate import simulate

__all__ = [
    "chen_greedy",
    "split_points",
    "greedy_checkpoints",
    "checkpoints_to_segments",
]

# Number of segment budgets tried (a geometric grid from the smallest layer
# to the whole model, plus 0); distinct checkpoint sets are evaluated once.
_GRID = 48
# Segment budgets tried between the neighbours of the best one of the grid.
_REFINE = 16


def split_points(model):
    """Layers after which only their own output crosses the topological order.

    Parameters
    ----------
    model : planner.model.Model

    Returns
    -------
    list of int
        Increasing layer indices, the sink excluded.

    Notes
    -----
    O(n + edges), by :func:`planner.lowering.splitting_vertices`.
    """
    return [v for v in splitting_vertices(model, input_edges=False) if v < len(model) - 1]


def greedy_checkpoints(costs, candidates, segment_budget):
    """Chen et al.'s greedy pass: checkpoints for one segment budget.

    Parameters
    ----------
    costs : sequence of int
        Memory each layer holds, in topological order.
    candidates : sequence of bool
        Whether each layer may be a checkpoint (a split point).
    segment_budget : float
        The budget ``b`` of one segment.

    Returns
    -------
    list of int
        The checkpointed layers, increasing.

    Notes
    -----
    O(n).
    """
    result = []
    total = 0
    for v, cost in enumerate(costs):
        total += cost
        if candidates[v] and total > segment_budget:
            result.append(v)
            total = 0
    return result


def checkpoints_to_segments(n, checkpoints):
    """Segments ending at each checkpoint, recomputed, and a last stored one."""
    result = []
    start = 0
    for v in checkpoints:
        result.append((start, v + 1, RECOMPUTE))
        start = v + 1
    result.append((start, n, STORE))
    return result


def _budget_grid(costs):
    positive = [c for c in costs if c > 0]
    total = sum(costs)
    if not positive:
        return [0]
    low, high = min(positive), total
    grid = {0, high}
    if high > low:
        ratio = (high / low) ** (1.0 / (_GRID - 1))
        value = float(low)
        for _ in range(_GRID):
            grid.add(int(value))
            value *= ratio
    # Chen et al.'s own guess, b = sqrt(x * y), from the pass with b = 0 (every
    # split point a checkpoint: x is about the total, y the largest layer).
    grid.add(int((total * max(costs)) ** 0.5))
    return sorted(grid)


def chen_greedy(model, *, budget=None):
    """Chen et al.'s greedy checkpoint selection with a searched segment budget.

    Parameters
    ----------
    model : planner.model.Model
        A chain or a DAG.
    budget : int or None, keyword-only
        Activation budget in bytes.  The search keeps, among the checkpoint
        sets the greedy pass gives for a grid of segment budgets, the one with
        the least compute whose peak fits; without a budget, the one with the
        least peak (ties to less compute).

    Returns
    -------
    ops : list of Op
        Forward and backward ops (the shared lowering adds the frees).
    params : dict
        ``{"segment_budget": b, "checkpoints": k}``.

    Raises
    ------
    InfeasibleError
        When no checkpoint set fits ``budget``; ``least_bytes`` is the least
        peak among them.

    Notes
    -----
    About 50 segment budgets, a geometric grid from the smallest layer to the
    whole model, give at most as many distinct checkpoint sets; each greedy
    pass is O(n).  On a chain each set's peak comes from an exact O(n) numpy
    evaluation; on a DAG from the simulator (O(ops) each), taken in order of
    compute and stopped at the first that fits.  A second grid of 16 budgets
    between the neighbours of the best one refines it.  20,000-layer chains
    and 2,000-node DAGs take a few seconds.

    References
    ----------
    T. Chen, B. Xu, C. Zhang and C. Guestrin, "Training Deep Nets with
    Sublinear Memory Cost", arXiv:1604.06174, 2016, Algorithm 3.
    P. Jain et al., "Checkmate: Breaking the Memory Wall with Optimal Tensor
    Rematerialization", MLSys 2020 (the greedy over articulation points as a
    baseline).
    """
    n = len(model)
    layers = model.layers
    costs = [layer.output_bytes + layer.saved_bytes for layer in layers]
    allowed = [False] * n
    for v in split_points(model):
        allowed[v] = True

    forward_prefix = [0.0]
    for layer in layers:
        forward_prefix.append(forward_prefix[-1] + layer.forward)

    if model.is_chain and fits_int64(model):
        def peak_of(points):
            return chain_segments_peak(model, [0] + [v + 1 for v in points])
    else:

        def peak_of(points):
            ops = segments_to_ops(model, checkpoints_to_segments(n, points))
            return simulate(model, insert_frees(model, ops)).peak_bytes

    plans = {}  # checkpoint set -> the first segment budget that gave it
    peaks = {}

    def search(budgets):
        """Evaluate new checkpoint sets in order of compute; (fit, least) found."""
        fresh = []
        for b in budgets:
            points = tuple(greedy_checkpoints(costs, allowed, b))
            if points not in plans:
                plans[points] = b
                fresh.append(points)
        # compute = baseline + the forwards of every recomputed segment
        rows = sorted((forward_prefix[p[-1] + 1] if p else 0.0, len(p), p) for p in fresh)
        fit = least = None
        for extra, _, points in rows:
            if points not in peaks:
                peaks[points] = peak_of(points)
            peak = peaks[points]
            if least is None or (peak, extra) < least[:2]:
                least = (peak, extra, points)
            if budget is not None and peak <= budget:
                fit = (peak, extra, points)
                break
        return fit, least

    grid = _budget_grid(costs)
    fit, least = search(grid)
    # A second, finer grid around the best segment budget of the first.
    anchor = plans[(fit or least)[2]]
    where = grid.index(anchor)
    low = grid[max(where - 1, 0)]
    high = grid[min(where + 1, len(grid) - 1)]
    if high > low + 1:
        step = (high - low) / (_REFINE + 1)
        fit2, least2 = search([low + int(step * (k + 1)) for k in range(_REFINE)])
        if fit2 is not None and (fit is None or fit2[1] < fit[1]):
            fit = fit2
        if least2 is not None and least2[:2] < least[:2]:
            least = least2
    if budget is not None and fit is None:
        raise InfeasibleError(
            f"no segment budget fits {budget} bytes; the least peak is {least[0]} bytes "
            f"({len(least[2])} checkpoints)",
            least_bytes=least[0],
        )
    points = (fit or least)[2]
    ops = segments_to_ops(model, checkpoints_to_segments(n, points))
    return ops, {"segment_budget": plans[points], "checkpoints": len(points)}
