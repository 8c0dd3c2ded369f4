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
    sink's gradient, which appears at its backward).  The sink's output may
    not be freed before the sink's backward: the loss reads it.  Paged copies (the set
    P) do not count; a pagein adds the output to memory as a forward does.
    """
    layers = model.layers
    n = len(layers)
    out = [layer.output_bytes for layer in layers]
    saved = [layer.saved_bytes for layer in layers]
    wsf = [layer.workspace_forward for layer in layers]
    wsb = [layer.workspace_backward for layer in layers]
    ins = [layer.inputs for layer in layers]
    need_in = [layer.needs_inputs for layer in layers]
    need_out = [layer.needs_output for layer in layers]
    sink = model.sink

    in_a = [False] * n
    in_s = [False] * n
    in_g = [False] * n
    done = [False] * n
    hold = [0] * n  # saved data that reads layer i's output
    waiting = [len(c) for c in model.consumers]  # consumers whose backward has not run

    mem = model.input_bytes
    peak = mem
    peak_index = -1
    runs_f = [0] * n  # forward ops per layer
    forwards = 0
    backwards = 0
    trace = array("q") if timeline else None
    error = None
    count = -1
    in_p = [False] * n  # P: outputs paged out to storage
    paged = 0  # sum(output_bytes of P)
    runs_out = [0] * n  # pageout ops per layer
    runs_in = [0] * n  # pagein ops per layer
    capacity = None if storage is None or storage.bytes is None else storage.bytes

    def broken(index, op, message):
        name = layers[op.layer].name if 0 <= op.layer < n else str(op.layer)
        return ScheduleError(
            f"op #{index} ({op.kind.value} {name}): {message}", index=index, layer=name
        )

    for count, op in enumerate(ops):
        kind = op.kind
        i = op.layer
        if kind is _FREE:
            if not in_a[i] or hold[i] or (i == sink and not done[i]):
                error = broken(count, op, _free_problem(model, i, in_a, in_s, hold))
                break
            in_a[i] = False
            mem -= out[i]
            if trace is not None:
                trace.append(mem)
            continue
        if kind is _FORWARD:
            save = op.save
            if in_a[i] or done[i] or (save and in_s[i]) or _first_missing(ins[i], in_a) is not None:
                error = broken(count, op, _forward_problem(model, i, save, in_a, in_s, done))
                break
            in_a[i] = True
            mem += out[i]
            if save:
                in_s[i] = True
                mem += saved[i]
                if need_out[i]:
                    hold[i] += 1
                if need_in[i]:
                    for j in ins[i]:
                        hold[j] += 1
            now = mem + wsf[i]
            runs_f[i] += 1
            forwards += 1
        elif kind is _BACKWARD:
            if (
                done[i] or not in_s[i] or waiting[i] or (need_out[i] and not in_a[i])
                or (need_in[i] and _first_missing(ins[i], in_a) is not None)
            ):
                error = broken(count, op, _backward_problem(model, i, in_a, in_s, done, waiting))
                break
            if i == sink and not in_g[i]:
                in_g[i] = True
                mem += out[i]
            for j in ins[i]:
                if not in_g[j]:
                    in_g[j] = True
                    mem += out[j]
                waiting[j] -= 1
            now = mem + wsb[i]
            in_s[i] = False
            mem -= saved[i]
            if need_out[i]:
                hold[i] -= 1
            if need_in[i]:
                for j in ins[i]:
                    hold[j] -= 1
            if in_g[i]:
                in_g[i] = False
                mem -= out[i]
            if in_p[i]:
                in_p[i] = False
                paged -= out[i]
            done[i] = True
            backwards += 1
        elif kind is _PAGEOUT or kind is _PAGEIN:
            message = _page_check(kind, i, in_a, in_p, done, storage)
            if message is None and kind is _PAGEOUT:
                if capacity is not None and paged + out[i] > capacity:
                    message = (
                        f"the storage is full: {paged + out[i]} bytes paged out, "
                        f"more than its {capacity} bytes"
                    )
            if message is not None:
                error = broken(count, op, message)
                break
            if kind is _PAGEOUT:
                in_p[i] = True
                paged += out[i]
                runs_out[i] += 1
                if trace is not None:
                    trace.append(mem)
                continue
            in_a[i] = True
            mem += out[i]
            runs_in[i] += 1
            now = mem
        else:  # pragma: no cover - OpKind is closed
            error = broken(count, op, f"unknown op {kind!r}")
            break
        if now > peak:
            peak = now
            peak_index = count
        if trace is not None:
            trace.append(now)
    else:
        count += 1  # every op replayed
        if backwards != n:
            error = _unfinished(layers, done, n - backwards)
    counts = {"peak": peak, "peak_index": peak_index, "forwards": forwards, "n_ops": count}
    return _result(model, storage, error, counts, (runs_f, done, runs_out, runs_in), trace)


def _unfinished(layers, done, missing):
    """The error of a schedule that ends with ``missing`` backwards not run."""
    first = next(k for k in range(len(layers)) if not done[k])
    return ScheduleError(
        f"the schedule ends before every backward ran: {missing} missing, "
        f"the first is {layers[first].name!r}",
        index=None,
        layer=layers[first].name,
    )


def _result(model, storage, error, counts, runs, trace):
    """The :class:`SimulationResult` of a replay: costs from the per-layer op counts ``runs``."""
    runs_f, done, runs_out, runs_in = runs
    # Summed exactly (math.fsum) from per-layer counts, so the result does not
    # depend on the order of the ops and a schedule without recomputation has
    # exactly the baseline's compute (overhead 0.0, never -1e-16).
    layers = model.layers
    compute = math.fsum(
        [l.forward * k for l, k in zip(layers, runs_f) if k] + [l.backward for l, d in zip(layers, done) if d]
    )
    baseline = model.baseline_compute
    transfer, pageouts, pageins = _transfer(model, storage, runs_out, runs_in)
    return SimulationResult(
        valid=error is None,
        error=error,
        peak_bytes=counts["peak"],
        peak_index=counts["peak_index"],
        compute=compute,
        baseline_compute=baseline,
        overhead=((compute + transfer) / baseline - 1.0) if baseline > 0 else 0.0,
        forwards=counts["forwards"],
        n_ops=counts["n_ops"],
        timeline=trace,
        transfer=transfer,
        pageouts=pageouts,
        pageins=pageins,
    )


def _page_check(kind, i, in_a, in_p, done, storage):
    """Why a pageout or pagein of layer ``i`` breaks SPEC section 5, or None."""
    if storage is None:
        return "a paging op needs a storage (edgeplan-schedule/2), and none is given"
    if kind is _PAGEOUT:
        if not in_a[i]:
            return "its output is not in memory"
        if in_p[i]:
            return "its output is already paged out"
        return None
    if not in_p[i]:
        return "its output is not paged out"
    if in_a[i]:
        return "its output is already in memory"
    if done[i]:
        return "its backward has already run"
    return None


def _transfer(model, storage, runs_out, runs_in):
    """(transfer time in the model's unit, pageouts, pageins), summed exactly per layer."""
    pageouts = sum(runs_out)
    pageins = sum(runs_in)
    if not pageouts and not pageins:
        return 0.0, 0, 0
    scale = time_scale(model)
    out = [layer.output_bytes for layer in model.layers]
    seconds = math.fsum(
        [storage.pageout_seconds(out[i]) * k for i, k in enumerate(runs_out) if k]
        + [storage.pagein_seconds(out[i]) * k for i, k in enumerate(runs_in) if k]
    )
    return seconds * scale, pageouts, pageins


def _free_problem(model, i, in_a, in_s, hold):
    """Why free ``i`` is invalid (the first rule broken, in the order the simulator checks)."""
    if not in_a[i]:
        return "its output is not in memory"
    if hold[i]:
        return _holder_message(model, i, in_s)
    return "the sink's output is read by the loss until the sink's backward"


def _forward_problem(model, i, save, in_a, in_s, done):
    """Why forward ``i`` is invalid (the first rule broken)."""
    if in_a[i]:
        return "its output is already in memory"
    if done[i]:
        return "its backward has already run"
    if save and in_s[i]:
        return "its saved data is already in memory"
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
