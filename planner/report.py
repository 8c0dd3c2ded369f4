"""The answers the ``edgeplan`` commands give, decided here where tests reach them.

:func:`check_memory` refuses a memory below the fixed memory (with the least
memory that works), :func:`infeasible` adds the least memory to a solver's
:class:`~planner.errors.InfeasibleError`, :func:`compare_rows` is the table of
``edgeplan compare`` with the registry's best marked, :func:`check_schedule`
is ``edgeplan simulate``'s valid / fingerprint / fits verdict, and
:func:`available` drops the strategies whose optional modules are missing.
The CLI prints these answers and maps them to exit codes.
"""

import csv
import io
from dataclasses import dataclass

from planner import extras, solvers
from planner.budget import OPTIMIZER_FACTORS, split_memory
from planner.device import device_time, load_device
from planner.errors import InfeasibleError, MissingExtraError, NotApplicableError, OptionError, TooLargeError
from planner.objective import TIME
from planner.sizes import format_size

__all__ = [
    "Refusal", "Verdict", "available", "check_memory", "infeasible", "compare_rows", "check_schedule",
    "mismatch_fields", "timeline_csv", "device_memory",
]


def _bytes(n):
    return f"{n:,} bytes ({format_size(n)})"


class Refusal(InfeasibleError):
    """A negative answer (exit 1) with the fields of its ``--json`` document.

    Attributes
    ----------
    fields : dict
        ``feasible``, the memory and the least memory that works, for ``{"error": ..., **fields}``.
    """

    def __init__(self, message, *, least_bytes=None, fields):
        super().__init__(message, least_bytes=least_bytes)
        self.fields = fields


def available(names, *, named):
    """``(kept, notes)``: ``names`` less the strategies whose optional modules are missing.

    Raises
    ------
    MissingExtraError
        If ``named`` (the user chose the strategies) and one of them misses a
        module; in the default set such a strategy is skipped with a note.
    """
    kept, notes = [], []
    for name in names:
        try:
            extras.require(*solvers.STRATEGIES[name].requires, purpose=f"strategy {name!r}")
        except MissingExtraError as exc:
            if named:
                raise
            notes.append(f"skipped {exc}")
            continue
        kept.append(name)
    return kept, notes


def check_memory(model, memory, optimizer):
    """The :class:`~planner.budget.MemorySplit` of ``memory``, or a :class:`Refusal` below the fixed memory.

    The refusal names the least memory that works: what the default
    strategies need at a zero activation budget.
    """
    split = split_memory(model, memory, optimizer)
    if split.activation_bytes >= 0:
        return split
    outcomes = solvers.run_all(model, 0)
    least = min((o.least_bytes for o in outcomes if o.least_bytes is not None), default=None)
    least_memory = split.memory_for(least) if least is not None else None
    raise Refusal(
        f"--memory {memory:,} bytes is less than the fixed memory: parameters "
        f"{model.params_bytes:,} bytes x {OPTIMIZER_FACTORS[optimizer]} ({optimizer}) = "
        f"{split.fixed_bytes:,} bytes, before any activation"
        + (f"; the least memory that works is {_bytes(least_memory)}" if least_memory else ""),
        least_bytes=least,
        fields={
            "feasible": False,
            "memory_bytes": memory,
            "fixed_bytes": split.fixed_bytes,
            "least_activation_bytes": least,
            "least_memory_bytes": least_memory,
        },
    )


def infeasible(exc, split):
    """``exc`` (no schedule fits ``split``'s activation budget) as a :class:`Refusal`.

    The refusal names the least memory that works.
    """
    least = exc.least_bytes
    text = str(exc)
    if least is not None:
        text += (
            f"\nthe least memory that works: {_bytes(split.memory_for(least))} "
            f"(activations {_bytes(least)} + fixed {_bytes(split.fixed_bytes)})"
        )
    return Refusal(text, least_bytes=least, fields={
        "feasible": False,
        "memory_bytes": split.memory_bytes,
        "budget_bytes": split.activation_bytes,
        "least_activation_bytes": least,
        "least_memory_bytes": split.memory_for(least) if least is not None else None,
    })


def compare_rows(outcomes, split, *, paging=False, objective=TIME):
    """Outcomes in table order: feasible by the objective (the step's time, or joules; then ops), then by the
    memory they need.

    ``best`` marks the registry's own choice (:func:`planner.solvers.best`,
    what ``solve --strategy auto`` returns).  With ``paging`` (a storage was
    given) rows also have ``transfer``, ``pageouts`` and ``pageins``; with the
    device's power figures (``objective``'s), ``energy_j``.
    """
    winner = solvers.best(outcomes, objective)
    feasible = sorted(
        (o for o in outcomes if o.feasible),
        key=lambda o: (objective.key(o.solution.result), o.solution.result.step_time, len(o.solution.ops)),
    )
    rest = sorted(
        (o for o in outcomes if not o.feasible),
        key=lambda o: (o.least_bytes is None, o.least_bytes or 0, o.strategy),
    )
    return [_row(o, split, best=winner is not None and o.strategy == winner.strategy, paging=paging,
                 objective=objective)
            for o in feasible + rest]


def _row(o, split, *, best, paging, objective):
    r = o.solution.result if o.feasible else None
    least = o.least_bytes
    row = {
        "strategy": o.strategy,
        "feasible": o.feasible,
        "best": best,
        "peak_bytes": r.peak_bytes if r else None,
        "compute": r.compute if r else None,
        "overhead": r.overhead if r else None,
        "forwards": r.forwards if r else None,
        "params": o.solution.params if r else None,
        "solve_seconds": round(o.solve_seconds, 6),
        "least_activation_bytes": least,
        "least_memory_bytes": split.memory_for(least) if least is not None else None,
        "error": None if r else str(o.error),
        "applicable": not isinstance(o.error, (NotApplicableError, TooLargeError)),
    }
    if paging:
        row.update(
            transfer=r.transfer if r else None,
            pageouts=r.pageouts if r else None,
            pageins=r.pageins if r else None,
        )
    if objective.power_w is not None and objective.per_second is not None:
        row["energy_j"] = objective.energy(r) if r else None
    return row


@dataclass(frozen=True)
class Verdict:
    """``edgeplan simulate``'s answer on one schedule.

    Attributes
    ----------
    schedule : planner.schedule.Schedule
    result : planner.simulate.SimulationResult
    fingerprint_matches : bool
    split : planner.budget.MemorySplit or None
        When a memory was given.
    fits : bool or None
        The schedule is valid and its peak fits ``split``'s activation budget (None without one).
    problems : tuple of str
        Empty when the schedule is valid, for this model, and fits.
    """

    schedule: object
    result: object
    fingerprint_matches: bool
    split: object
    fits: object
    problems: tuple

    @property
    def ok(self):
        return not self.problems

    def to_dict(self):
        """The ``--json`` document."""
        result = self.result
        doc = {
            "valid": result.valid,
            "peak_bytes": result.peak_bytes,
            "compute": result.compute,
            "baseline_compute": result.baseline_compute,
            "overhead": result.overhead,
            "forwards": result.forwards,
            "fingerprint_matches": self.fingerprint_matches,
        }
        if self.schedule.storage is not None:
            doc.update(transfer=result.transfer, pageouts=result.pageouts, pageins=result.pageins)
            if result.time is not None:
                doc["time"] = result.time
        if self.split is not None:
            doc["memory_bytes"] = self.split.memory_bytes
            doc["budget_bytes"] = self.split.activation_bytes
            doc["fits"] = self.fits
        if not result.valid:
            doc["error"] = str(result.error)
        if self.problems:
            doc["problems"] = list(self.problems)
        return doc


def check_schedule(model, schedule, *, memory=None, optimizer="sgd", timeline=False):
    """Replay ``schedule`` on ``model``: valid, made for this model, and within ``memory``?

    With ``timeline``, ``result.timeline`` holds the memory at each op
    (:func:`timeline_csv` writes it).

    Returns
    -------
    Verdict
    """
    from planner.simulate import simulate

    result = simulate(model, schedule.ops, storage=schedule.storage, timeline=timeline)
    problems = []
    if not result.valid:
        problems.append(str(result.error))
    matches = schedule.fingerprint == model.fingerprint
    if not matches:
        problems.append(
            f"the schedule was made for another model (fingerprint {schedule.fingerprint}, "
            f"this model is {model.fingerprint})"
        )
    fits = split = None
    if memory is not None:
        split = split_memory(model, memory, optimizer)
        fits = result.valid and result.peak_bytes <= split.activation_bytes
        if result.valid and not fits:
            problems.append(
                f"peak {result.peak_bytes:,} bytes does not fit the activation budget of "
                f"{split.activation_bytes:,} bytes (memory {memory:,} minus fixed {split.fixed_bytes:,})"
            )
    return Verdict(schedule=schedule, result=result, fingerprint_matches=matches, split=split, fits=fits,
                   problems=tuple(problems))


def mismatch_fields(exc):
    """The ``--json`` fields of a schedule made for another model (``ModelMismatchError``)."""
    return {"valid": False, "fingerprint_matches": False, "problems": [str(exc)]}


def timeline_csv(model, ops, timeline, *, measured=None, measured_seconds=None):
    """The memory at each op as CSV text: ``index,op,layer,bytes``, one row per op replayed.

    ``bytes`` is what the simulator holds during the op, its workspace
    included (SPEC section 3), so the largest row is the peak.  An invalid
    schedule's rows stop at the op that broke a rule.  With ``measured`` (the
    peak a real run measured during each op, ``VerifyResult.op_peaks``), a
    column ``measured_bytes`` follows; with ``measured_seconds``
    (``VerifyResult.op_seconds``) a column ``measured_ms``, the op's wall
    time.  They are empty where nothing was measured.  A measured window
    starts at the level the op before it left, so a ``free`` row measures
    what was held just before the free.
    """
    extra = [(name, values) for name, values in (("measured_bytes", measured), ("measured_ms", measured_seconds))
             if values is not None]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "op", "layer", "bytes"] + [name for name, _ in extra])
    names = [layer.name for layer in model.layers]
    for index, (op, held) in enumerate(zip(ops, timeline)):
        row = [index, op.kind.value, names[op.layer], held]
        for name, values in extra:
            value = values[index] if index < len(values) else ""
            row.append(f"{value * 1000:.4f}" if name == "measured_ms" and value != "" else value)
        writer.writerow(row)
    return text.getvalue()


def device_memory(model, memory, device_name, *, need_memory=True):
    """``(model, memory, storage, device, time_note)`` from ``--memory`` and ``--device``.

    ``--memory`` wins over the device's memory.  ``device`` is None without
    ``--device``; with a device that gives a compute speed the model comes back
    in the device's seconds (:func:`planner.device.device_time`), and
    ``time_note`` says whose times are planned.

    Raises
    ------
    OptionError
        Neither was given and ``need_memory``.
    DeviceError, ModelError
        A bad device; a storage with a model whose time unit is not a time.
    """
    device = storage = note = None
    if device_name is not None:
        device = load_device(device_name)
        storage = device.storage
        memory = device.memory_bytes if memory is None else memory
        model, note = device_time(model, device)
    if memory is None and need_memory:
        raise OptionError("give --memory SIZE or --device NAME|FILE")
    solvers.check_storage(model, storage)
    return model, memory, storage, device, note
