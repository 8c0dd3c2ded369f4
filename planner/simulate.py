"""THE simulator: replays a schedule exactly as SPEC sections 3 and 5 say.

Every schedule any solver emits goes through :func:`simulate` before it is
written; its numbers are the ones edgeplan reports.  Nothing here depends on a
solver, an environment variable or global state.
"""

import math
from array import array
from dataclasses import dataclass

from planner.device import time_scale
from planner.errors import ScheduleError
from planner.schedule import OpKind

__all__ = ["SimulationResult", "simulate", "replay"]

_FORWARD = OpKind.FORWARD
_BACKWARD = OpKind.BACKWARD
_FREE = OpKind.FREE
_PAGEOUT = OpKind.PAGEOUT
_PAGEIN = OpKind.PAGEIN
_PAGEOUT_SAVED = OpKind.PAGEOUT_SAVED
_DROP_SAVED = OpKind.DROP_SAVED
_PAGEIN_SAVED = OpKind.PAGEIN_SAVED


@dataclass(frozen=True)
class SimulationResult:
    """What a replay found.

    Attributes
    ----------
    valid : bool
    error : ScheduleError or None
        The first violated rule (with ``index`` and ``layer``) when invalid.
    peak_bytes : int
        Peak memory (input, outputs held, saved data, gradients, workspace).
    peak_index : int
        Index of the op at which the peak is reached (-1 for an empty schedule).
    compute, baseline_compute, overhead : float
        ``overhead`` is ``(compute + transfer) / baseline_compute - 1``.
    forwards : int
        Number of forward ops.
    n_ops : int
        Number of ops replayed (up to the error, when invalid).
    timeline : array.array or None
        Memory after each op, including its workspace (only when asked for).
    transfer : float
        Time of every pageout and pagein (SPEC section 5), in the model's time unit.
    pageouts, pageins : int
        Number of pageout and pagein ops.
    time : float or None
        The step's time with transfers beside compute (a storage with
        ``overlap``, :mod:`planner.timing`), in the model's time unit; None
        when transfers are serial (the step's time is then ``compute +
        transfer``).  ``overhead`` is ``time / baseline_compute - 1`` then.
    """

    valid: bool
    error: ScheduleError
    peak_bytes: int
    peak_index: int
    compute: float
    baseline_compute: float
    overhead: float
    forwards: int
    n_ops: int
    timeline: object = None
    transfer: float = 0.0
    pageouts: int = 0
    pageins: int = 0
    time: float = None

    @property
    def step_time(self):
        """The step's time: ``time`` with overlapped transfers, else ``compute + transfer``."""
        return self.compute + self.transfer if self.time is None else self.time

    @property
    def pages(self):
        """Whether the schedule has paging ops (it is then an ``edgeplan-schedule/2``)."""
        return self.pageouts > 0 or self.pageins > 0

    def predicted(self):
        """The ``predicted`` object of a schedule file (with the transfer fields for /2)."""
        doc = {
            "peak_bytes": self.peak_bytes,
            "compute": self.compute,
            "baseline_compute": self.baseline_compute,
            "overhead": self.overhead,
            "forwards": self.forwards,
        }
        if self.pages:
            doc["transfer"] = self.transfer
            doc["pageouts"] = self.pageouts
            doc["pageins"] = self.pageins
        if self.time is not None:
            doc["time"] = self.time
        return doc


def simulate(model, ops, *, timeline=False, storage=None):
    """Replay ``ops`` on ``model`` and measure it.

    Parameters
    ----------
    model : planner.model.Model
    ops : iterable of planner.schedule.Op
        Consumed once; a generator works, so long schedules can stream.
    timeline : bool, keyword-only
        Also record the memory after each op (as ``array('q')``).  Kept for
        checking a schedule op by op (the simulator tests compare it with
        the reference replay's memory at every op); it costs one append per
        op only when asked for.
    storage : planner.device.Storage or None, keyword-only
        Where ``pageout`` and ``pagein`` ops transfer to (SPEC section 5);
        without one, a paging op is invalid.

    Returns
    -------
    SimulationResult
        ``valid`` is False and ``error`` says why at the first broken rule; the
        numbers then cover the ops before it.

    Raises
    ------
    ModelError
        If the ops page and the model's ``time_unit`` is not a time
        (``s``, ``ms``, ``us``, ``ns``): transfer times cannot be converted.

    Notes
    -----
    O(1) work per free, O(inputs) per forward and backward: 10^6 ops take a
    few seconds.  Memory at any moment is ``input_bytes + sum(output_bytes of
    A) + sum(saved_bytes of S) + sum(output_bytes of G)``; the peak adds the
    running op's workspace, measured after a forward's output and saved data
    are added and after a backward's new input gradients are allocated (and the
    sink's gradient, which appears at its backward).  An input whose gradient
    is already in G (a layer with several consumers, one of whose backwards
    ran) gets a fresh gradient of its output size, added into the held one as
    autograd does: it counts in that backward's peak and is gone after it.
    Which backward makes it is decided by the state, not by the graph: the
    first consumer's backward to run starts the gradient, every later one
    makes a fresh one.  The sink's output may not be freed before the sink's
    backward: the loss reads it.  Paged copies (the sets P and PS) do not
    count; a pagein adds the output to memory as a forward does, a
    pagein_saved the record as a forward with save does, and a drop_saved
    takes the record out of S (docs/format.md, "Paging backward records").
    """
    if storage is not None and storage.overlap:
        ops = list(ops)  # read twice: the replay, then the timeline (planner.timing)
        return _overlapped(model, ops, storage, simulate(model, ops, timeline=timeline, storage=_serial(storage)))
    layers = model.layers
    n = len(layers)
    tables = model.tables
    out, saved, wsf, wsb = (
        column.tolist()
        for column in (tables.output_bytes, tables.saved_bytes, tables.workspace_forward, tables.workspace_backward)
    )
    ins = tables.inputs
    holds = tables.holds  # pinned by a forward with save until the backward
    sink = model.sink
    # SPEC section 3's sets, as flags: A (outputs), S (saved data), G (gradients), D (backwards run).
    in_a, in_s, in_g, done = ([False] * n for _ in range(4))
    hold = [0] * n  # saved data that reads layer i's output
    waiting = [len(c) for c in model.consumers]  # consumers whose backward has not run
    runs_f = [0] * n  # forward ops per layer
    paged = _Paged(storage, out, saved)  # P and PS, and the paging ops per layer
    in_p, in_ps = paged.in_p, paged.in_ps
    mem = peak = model.input_bytes
    peak_index = count = -1
    trace = array("q") if timeline else None
    for count, op in enumerate(ops):
        kind, i = op.kind, op.layer
        if kind is _FREE:
            if not in_a[i] or hold[i] or (i == sink and not done[i]):
                break
            in_a[i] = False
            mem -= out[i]
            if trace is not None:
                trace.append(mem)
            continue
        if kind is _FORWARD:
            save = op.save
            if in_a[i] or done[i] or (save and (in_s[i] or in_ps[i])) or _first_missing(ins[i], in_a) is not None:
                break
            in_a[i] = True
            mem += out[i]
            if save:
                in_s[i] = True
                mem += saved[i]
                for j in holds[i]:
                    hold[j] += 1
            now = mem + wsf[i]
            runs_f[i] += 1
        elif kind is _BACKWARD:
            if done[i] or not in_s[i] or waiting[i] or _first_missing(holds[i], in_a) is not None:
                break
            if i == sink and not in_g[i]:
                in_g[i] = True
                mem += out[i]
            fresh = 0  # gradients made and added into ones an earlier backward started
            for j in ins[i]:
                if in_g[j]:
                    fresh += out[j]
                else:
                    in_g[j] = True
                    mem += out[j]
                waiting[j] -= 1
            now = mem + fresh + wsb[i]
            in_s[i] = False
            mem -= saved[i]
            for j in holds[i]:
                hold[j] -= 1
            if in_g[i]:
                in_g[i] = False
                mem -= out[i]
            if in_p[i]:
                paged.drop(i)
            if in_ps[i]:
                paged.drop_record(i)
            done[i] = True
        elif kind is _PAGEOUT or kind is _PAGEIN:
            if not paged.move(kind, i, in_a, done):
                break
            if kind is _PAGEIN:
                in_a[i] = True
                mem += out[i]
            now = mem
        elif kind is _DROP_SAVED:
            if not in_s[i] or not in_ps[i]:
                break
            in_s[i] = False
            mem -= saved[i]
            for j in holds[i]:
                hold[j] -= 1
            if trace is not None:
                trace.append(mem)
            continue
        elif kind is _PAGEOUT_SAVED or kind is _PAGEIN_SAVED:
            if not paged.move_record(kind, i, in_s, done):
                break
            if kind is _PAGEIN_SAVED:
                in_s[i] = True
                mem += saved[i]
                for j in holds[i]:
                    hold[j] += 1
            now = mem
        else:  # pragma: no cover - OpKind is closed
            break
        if now > peak:
            peak = now
            peak_index = count
        if trace is not None:
            trace.append(now)
    else:  # every op replayed
        return _result(model, _unfinished(layers, done), (peak, peak_index, count + 1), (runs_f, done, paged), trace)
    error = _op_error(model, count, op, (in_a, in_s, done, hold, waiting, paged))
    return _result(model, error, (peak, peak_index, count), (runs_f, done, paged), trace)


def _serial(storage):
    from dataclasses import replace

    return replace(storage, overlap=False)


def _overlapped(model, ops, storage, result):
    """``result`` (a serial replay) with the step's time of transfers beside compute."""
    from dataclasses import replace

    from planner.timing import overlapped_time

    if not result.valid or not result.pages:
        return result
    time, _ = overlapped_time(model, ops, storage, time_scale(model))
    base = result.baseline_compute
    return replace(result, time=time, overhead=(time / base - 1.0) if base > 0 else 0.0)


class _Paged:
    """The sets P (outputs paged out to ``storage``) and PS (records paged out) of a replay.

    Also counts the paging ops per layer: ``runs_out``/``runs_in`` for outputs,
    ``records_out``/``records_in`` for records (docs/format.md).
    """

    __slots__ = (
        "storage", "capacity", "out", "saved", "in_p", "in_ps", "bytes",
        "runs_out", "runs_in", "records_out", "records_in",
    )

    def __init__(self, storage, out, saved):
        n = len(out)
        self.storage = storage
        self.capacity = None if storage is None else storage.bytes  # None: unlimited
        self.out = out
        self.saved = saved
        self.in_p = [False] * n
        self.in_ps = [False] * n
        self.bytes = 0  # sum(output_bytes of P) + sum(saved_bytes of PS)
        self.runs_out = [0] * n
        self.runs_in = [0] * n
        self.records_out = [0] * n
        self.records_in = [0] * n

    def check(self, kind, i, in_a, done):
        """Why a pageout or pagein of layer ``i`` breaks SPEC section 5, or None."""
        if kind is _PAGEOUT or kind is _PAGEIN:
            return _page_check(kind, i, in_a, self.in_p, done, self.storage, self.bytes + self.out[i])
        return None

    def check_record(self, kind, i, in_s, done):
        """Why a pageout_saved, drop_saved or pagein_saved of layer ``i`` is invalid, or None."""
        if kind is not _DROP_SAVED and self.storage is None:
            return "a paging op needs a storage (edgeplan-schedule/2), and none is given"
        if kind is _PAGEIN_SAVED:
            if not self.in_ps[i]:
                return "its saved data is not paged out"
            if in_s[i]:
                return "its saved data is already in memory"
            return "its backward has already run"
        if not in_s[i]:
            return "its saved data is not in memory"
        if kind is _DROP_SAVED:
            return "its saved data is not paged out (pageout_saved it first)"
        if self.in_ps[i]:
            return "its saved data is already paged out"
        after = self.bytes + self.saved[i]
        return f"the storage is full: {after} bytes paged out, more than its {self.storage.bytes} bytes"

    def move_record(self, kind, i, in_s, done):
        """Record a pageout_saved or pagein_saved of layer ``i``; False, recording nothing, if invalid."""
        return self._move(kind is _PAGEOUT_SAVED, i, in_s, done, self.in_ps, self.saved,
                          self.records_out, self.records_in)

    def drop_record(self, i):
        """Layer ``i``'s backward ran: its paged record is released."""
        self.in_ps[i] = False
        self.bytes -= self.saved[i]

    def move(self, kind, i, in_a, done):
        """Record a pageout or pagein of layer ``i``; False, recording nothing, if it breaks a rule.

        The rules of :func:`_page_check` (which says which one broke), tested
        inline: this runs once per paging op of the replay.
        """
        return self._move(kind is _PAGEOUT, i, in_a, done, self.in_p, self.out, self.runs_out, self.runs_in)

    def _move(self, out, i, present, done, paged, sizes, outs, ins):
        """One transfer of an output (``present`` A, ``paged`` P) or a record (S, PS); False if invalid."""
        if self.storage is None:
            return False
        if out:
            after = self.bytes + sizes[i]
            if not present[i] or paged[i] or (self.capacity is not None and after > self.capacity):
                return False
            paged[i] = True
            self.bytes = after
            outs[i] += 1
            return True
        if not paged[i] or present[i] or done[i]:
            return False
        ins[i] += 1
        return True

    def drop(self, i):
        """Layer ``i``'s backward ran: its paged copy is released."""
        self.in_p[i] = False
        self.bytes -= self.out[i]


def _op_error(model, index, op, state):
    """The :class:`ScheduleError` of op #``index``, which breaks a rule in ``state``."""
    in_a, in_s, done, hold, waiting, paged = state
    kind, i = op.kind, op.layer
    if kind is _FREE:
        message = _free_problem(model, i, in_a, in_s, hold)
    elif kind is _FORWARD:
        message = _forward_problem(model, i, op.save, in_a, in_s, done, paged.in_ps)
    elif kind is _BACKWARD:
        message = _backward_problem(model, i, in_a, in_s, done, waiting)
    elif kind is _PAGEOUT or kind is _PAGEIN:
        message = paged.check(kind, i, in_a, done)
    elif kind in (_PAGEOUT_SAVED, _DROP_SAVED, _PAGEIN_SAVED):
        message = paged.check_record(kind, i, in_s, done)
    else:  # pragma: no cover - OpKind is closed
        message = f"unknown op {kind!r}"
    layers = model.layers
    name = layers[i].name if 0 <= i < len(layers) else str(i)
    return ScheduleError(f"op #{index} ({kind.value} {name}): {message}", index=index, layer=name)


def _unfinished(layers, done):
    """The error of a schedule that ends before every backward ran, or None if none is missing."""
    missing = done.count(False)
    if not missing:
        return None
    first = done.index(False)
    return ScheduleError(
        f"the schedule ends before every backward ran: {missing} missing, "
        f"the first is {layers[first].name!r}",
        index=None,
        layer=layers[first].name,
    )


def _result(model, error, counts, runs, trace):
    """The :class:`SimulationResult` of a replay.

    ``counts`` is (peak, the op index at the peak, ops replayed); the costs come
    from the per-layer op counts ``runs`` (forwards, backwards done, paging).
    """
    peak, peak_index, n_ops = counts
    runs_f, done, paged = runs
    # Summed exactly (math.fsum) from per-layer counts, so the result does not
    # depend on the order of the ops and a schedule without recomputation has
    # exactly the baseline's compute (overhead 0.0, never -1e-16).
    layers = model.layers
    compute = math.fsum(
        [l.forward * k for l, k in zip(layers, runs_f) if k] + [l.backward for l, d in zip(layers, done) if d]
    )
    baseline = model.baseline_compute
    transfer, pageouts, pageins = _transfer(model, paged)
    return SimulationResult(
        valid=error is None,
        error=error,
        peak_bytes=peak,
        peak_index=peak_index,
        compute=compute,
        baseline_compute=baseline,
        overhead=((compute + transfer) / baseline - 1.0) if baseline > 0 else 0.0,
        forwards=sum(runs_f),
        n_ops=n_ops,
        timeline=trace,
        transfer=transfer,
        pageouts=pageouts,
        pageins=pageins,
    )


def _page_check(kind, i, in_a, in_p, done, storage, paged_after):
    """Why a pageout or pagein of layer ``i`` breaks SPEC section 5, or None.

    ``paged_after`` is the paged bytes a pageout would leave in ``storage``.
    """
    if storage is None:
        return "a paging op needs a storage (edgeplan-schedule/2), and none is given"
    if kind is _PAGEOUT:
        if not in_a[i]:
            return "its output is not in memory"
        if in_p[i]:
            return "its output is already paged out"
        if storage.bytes is not None and paged_after > storage.bytes:
            return (
                f"the storage is full: {paged_after} bytes paged out, "
                f"more than its {storage.bytes} bytes"
            )
        return None
    if not in_p[i]:
        return "its output is not paged out"
    if in_a[i]:
        return "its output is already in memory"
    if done[i]:
        return "its backward has already run"
    return None


def _transfer(model, paged):
    """(transfer time in the model's unit, pageouts, pageins), summed exactly per layer.

    Records' transfers (``pageout_saved``, ``pagein_saved``) count with the outputs'.
    """
    storage = paged.storage
    pageouts = sum(paged.runs_out) + sum(paged.records_out)
    pageins = sum(paged.runs_in) + sum(paged.records_in)
    if not pageouts and not pageins:
        return 0.0, 0, 0
    scale = time_scale(model)
    out, saved = paged.out, paged.saved
    seconds = math.fsum(
        [storage.pageout_seconds(out[i]) * k for i, k in enumerate(paged.runs_out) if k]
        + [storage.pagein_seconds(out[i]) * k for i, k in enumerate(paged.runs_in) if k]
        + [storage.pageout_seconds(saved[i]) * k for i, k in enumerate(paged.records_out) if k]
        + [storage.pagein_seconds(saved[i]) * k for i, k in enumerate(paged.records_in) if k]
    )
    return seconds * scale, pageouts, pageins


def _free_problem(model, i, in_a, in_s, hold):
    """Why free ``i`` is invalid (the first rule broken, in the order the simulator checks)."""
    if not in_a[i]:
        return "its output is not in memory"
    if hold[i]:
        return _holder_message(model, i, in_s)
    return "the sink's output is read by the loss until the sink's backward"


def _forward_problem(model, i, save, in_a, in_s, done, in_ps):
    """Why forward ``i`` is invalid (the first rule broken)."""
    if in_a[i]:
        return "its output is already in memory"
    if done[i]:
        return "its backward has already run"
    if save and in_s[i]:
        return "its saved data is already in memory"
    if save and in_ps[i]:
        return "its saved data is paged out (page it in instead of forwarding it again with save)"
    missing = _first_missing(model.layers[i].inputs, in_a)
    return f"input {model.layers[missing].name!r} is not in memory"


def _backward_problem(model, i, in_a, in_s, done, waiting):
    """Why backward ``i`` is invalid (the first rule broken)."""
    layers = model.layers
    if done[i]:
        return "its backward has already run"
    if not in_s[i]:
        return "its saved data is not in memory (forward it with save first)"
    if waiting[i]:
        pending = [c for c in model.consumers[i] if not done[c]]
        return f"the backward of its consumer {layers[pending[0]].name!r} has not run"
    if layers[i].needs_inputs:
        missing = _first_missing(layers[i].inputs, in_a)
        if missing is not None:
            return f"input {layers[missing].name!r} is not in memory"
    return "its output is not in memory"


def _first_missing(inputs, in_a):
    """The first of ``inputs`` whose output is not in memory, or None."""
    for j in inputs:
        if not in_a[j]:
            return j
    return None


def _holder_message(model, i, in_s):
    layer = model.layers[i]
    if in_s[i] and layer.needs_output:
        return "its own saved data still reads its output (needs_output)"
    for c in model.consumers[i]:
        if in_s[c] and model.layers[c].needs_inputs:
            return f"the saved data of its consumer {model.layers[c].name!r} still reads it"
    return "saved data still reads it"  # pragma: no cover


def replay(model, ops):
    """Simulate and raise the :class:`ScheduleError` if the schedule is invalid.

    For callers that treat an invalid schedule as a bug rather than an answer
    (benchmarks/bench_fidelity.py replays hand-made PyTorch frees with it).
    """
    result = simulate(model, ops)
    if not result.valid:
        raise result.error
    return result
