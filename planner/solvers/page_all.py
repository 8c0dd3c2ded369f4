"""``page-all``: POET's paging-only baseline, no recomputation (SPEC section 5)."""

from planner.lowering import insert_frees, store_all_ops
from planner.schedule import pagein, pageout
from planner.solvers._overlap import overlap

__all__ = ["page_all"]


def page_all(model, *, budget=None, storage):
    """Store-all's order, with every output paged out that the rules let it free.

    Every layer is forwarded once, with save, in topological order, then every
    backward runs in reverse.  An output is paged out right after its forward
    when there is a stretch between two of its reads (forwards and backwards
    that read it) during which no saved data pins it; the shared lowering then
    frees it at the start of that stretch, and it is paged in right before the
    read that ends it.

    Parameters
    ----------
    model : planner.model.Model
    budget : int or None, keyword-only
        Page-all has one schedule (the registry checks that it fits); with
        transfers beside compute (``storage.overlap``) its pageins are moved
        earlier and its frees after pageouts later within it
        (:func:`planner.solvers._overlap.overlap`).
    storage : planner.device.Storage, keyword-only
        With ``storage.bytes`` set, outputs are paged in topological order
        while they fit (paged copies are kept until their layer's backward, so
        every paged output is in storage at the turn from forwards to
        backwards).

    Returns
    -------
    ops : list of Op
        Forward, backward, pageout, pagein and free ops (the shared lowering's frees).
    params : dict
        ``paged``: the number of outputs paged out.

    Notes
    -----
    O(n + e) for n layers and e edges.  Without recomputation every forward
    saves what its backward needs, and saved data pins the tensors its
    backward reads (SPEC section 3): an output read by a backward stays in
    memory from the forward of its reader to that backward whatever is paged.
    So paging alone releases only outputs with unpinned stretches between
    reads, such as a skip connection whose first reader's backward does not
    read it; where there are none, page-all is store-all.  Paging pays with
    recomputation (``dp-paging``, ``milp-paging``), where a checkpoint kept
    without saved data can be paged out instead of held.

    References
    ----------
    Patil et al., "POET: Training Neural Networks on Tiny Devices with
    Integrated Rematerialization and Paging", ICML 2022.
    """
    n = len(model)
    capacity = storage.bytes
    used = 0
    paged = set()
    pageins_before = {}
    for i in range(n):
        stretches = _unpinned_reads(model, i)
        if not stretches:
            continue
        size = model.layers[i].output_bytes
        if capacity is not None and used + size > capacity:
            continue
        used += size
        paged.add(i)
        for position in stretches:
            pageins_before.setdefault(position, []).append(i)
    base = store_all_ops(model)
    ops = []
    for position, op in enumerate(base):
        ops.extend(pagein(i) for i in pageins_before.get(position, ()))
        ops.append(op)
        if position < n and position in paged:
            ops.append(pageout(position))
    ops = insert_frees(model, ops)
    if storage.overlap:  # pageins earlier and frees after pageouts later, where they hide behind compute
        ops, _ = overlap(model, ops, storage, budget)
    return ops, {"paged": len(paged)}


def _unpinned_reads(model, i):
    """Positions (in store-all's op order) of the reads of ``i`` that end an unpinned stretch.

    Position ``k < n`` is layer k's forward, ``2n - 1 - k`` its backward.
    """
    n = len(model)
    layers = model.layers
    back = 2 * n - 1
    reads = {i}  # its forward makes it
    holds = []  # (from, to): saved data that pins it
    if model.tables.output_at_backward[i]:  # its backward reads it (the sink's: the loss does)
        reads.add(back - i)
        holds.append((i, back - i))
    for c in model.consumers[i]:
        reads.add(c)
        if layers[c].needs_inputs:
            reads.add(back - c)
            holds.append((c, back - c))
    reads = sorted(reads)
    # A stretch with no op inside would free and read it back for nothing.
    return [
        later
        for now, later in zip(reads, reads[1:])
        if later > now + 1 and not any(start <= now < stop for start, stop in holds)
    ]
