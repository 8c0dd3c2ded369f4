"""A step's time when transfers run beside compute (``edgeplan-schedule/3``, docs/format.md).

The device computes on one stream and copies on one copy engine (DMA, a CUDA
copy stream, a background writer thread).  The ops are issued in schedule
order; each op is *issued* when the compute stream reaches it:

* ``forward L`` and ``backward L`` run on the compute stream.  They start when
  it is free and every pagein of an output they read has finished (a forward
  reads its inputs; a backward reads what its saved data reads,
  :attr:`planner.model.Model.saved_reads`, and the sink's backward also reads
  the sink's output); they take their ``forward`` or ``backward`` time;
* ``pageout L`` and ``pagein L`` run on the copy engine, one at a time in
  schedule order: each starts when it is issued and the engine is free, and
  takes its transfer time (SPEC section 5).  Compute does not wait for them;
* ``free L`` waits on the compute stream until every transfer of L issued
  before it has finished (memory that is being copied cannot be released),
  then takes no time;
* the record ops (docs/format.md, "Paging backward records"):
  ``pageout_saved L`` and ``pagein_saved L`` run on the copy engine like the
  output transfers; ``drop_saved L`` waits for L's ``pageout_saved`` as a free
  waits for a pageout, and ``backward L`` also waits for L's ``pagein_saved``.

The step ends when both are idle.  Because every op is issued in schedule
order and memory only changes at an op's issue (a pagein's memory is counted
from its issue, a freed output after its transfers), the simulator's peak
(op by op, SPEC section 3) is the peak at every moment.  With one copy engine
and a compute stream that waits only where said, the step's time is between
``compute`` and ``compute + transfer``.
"""

__all__ = ["overlapped_time"]


def overlapped_time(model, ops, storage, scale):
    """``(time, wait)`` of a valid schedule, in the model's time unit.

    Parameters
    ----------
    model : planner.model.Model
    ops : sequence of planner.schedule.Op
        A valid schedule (the simulator checked it).
    storage : planner.device.Storage
    scale : float
        How many of the model's time unit make one second.

    Returns
    -------
    time : float
        When the last op of either stream ends.
    wait : float
        Time the compute stream stood still waiting for a transfer.
    """
    from planner.schedule import OpKind

    layers = model.layers
    reads_f, reads_b = model.tables.inputs, model.tables.backward_reads  # the sink's backward: the loss's read
    seconds = {
        OpKind.PAGEOUT: [storage.pageout_seconds(layer.output_bytes) * scale for layer in layers],
        OpKind.PAGEIN: [storage.pagein_seconds(layer.output_bytes) * scale for layer in layers],
        OpKind.PAGEOUT_SAVED: [storage.pageout_seconds(layer.saved_bytes) * scale for layer in layers],
        OpKind.PAGEIN_SAVED: [storage.pagein_seconds(layer.saved_bytes) * scale for layer in layers],
    }
    now = engine = wait = 0.0
    ready = {}  # layer -> end of its latest pagein
    busy = {}  # layer -> end of its latest transfer
    record_ready = {}  # layer -> end of its record's latest pagein_saved
    record_busy = {}  # layer -> end of its record's latest pageout_saved
    for op in ops:
        kind, i = op.kind, op.layer
        if kind is OpKind.FORWARD or kind is OpKind.BACKWARD:
            reads = reads_f[i] if kind is OpKind.FORWARD else reads_b[i]
            start = max([now] + [ready[j] for j in reads if j in ready])
            if kind is OpKind.BACKWARD and i in record_ready:
                start = max(start, record_ready[i])
            wait += start - now
            now = start + (layers[i].forward if kind is OpKind.FORWARD else layers[i].backward)
        elif kind is OpKind.FREE or kind is OpKind.DROP_SAVED:
            until = (busy if kind is OpKind.FREE else record_busy).get(i, 0.0)
            if until > now:
                wait += until - now
                now = until
        else:
            engine = max(engine, now) + seconds[kind][i]
            if kind is OpKind.PAGEOUT or kind is OpKind.PAGEIN:
                busy[i] = engine
                if kind is OpKind.PAGEIN:
                    ready[i] = engine
            elif kind is OpKind.PAGEOUT_SAVED:
                record_busy[i] = engine
            else:
                record_ready[i] = engine
    return max(now, engine), wait
