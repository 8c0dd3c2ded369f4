"""One call from a model and a memory to a schedule: :func:`plan` (no PyTorch needed).

:func:`plan` is what ``edgeplan solve`` runs: it checks its input once (the
model, the memory, the device, the options), splits the memory into fixed
memory and the activation budget, solves, and returns a :class:`PlanResult`,
in the shape of scipy's ``OptimizeResult``: ``success``, ``message``, the
schedule and the simulator's verdict on it, or, when nothing fits, the least
memory that works.  Bad input raises (an :class:`~planner.errors.EdgeplanError`
saying its exit code); a memory too small is an answer, not an error.
"""

import os
from dataclasses import dataclass

from planner import report, solvers
from planner.budget import split_memory
from planner.errors import InfeasibleError, ModelError, SizeError
from planner.model import Model, load_model, model_from_dict
from planner.objective import objective_for
from planner.sizes import MAX_BYTES, parse_size

__all__ = ["PlanResult", "plan", "as_model", "as_bytes"]


@dataclass(frozen=True)
class PlanResult:
    """What :func:`plan` found.

    Attributes
    ----------
    success : bool
        A schedule fits the memory.
    status : int
        0 when it does, 1 when nothing fits (scipy's convention: 0 is success).
    message : str
        One line (or two) for people: the strategy and its peak, or why nothing fits.
    model : planner.model.Model
    split : planner.budget.MemorySplit
        The memory, the fixed memory (parameters x 2 for SGD, x 4 for Adam)
        and the activation budget (``split.activation_bytes``).
    strategy : str or None
        The strategy whose schedule was kept (``auto``'s choice).
    params : dict
        Its parameters.
    schedule : planner.schedule.Schedule or None
    simulation : planner.simulate.SimulationResult or None
        The simulator's replay of the schedule: ``peak_bytes``, ``overhead``, ...
    solution : planner.solvers.Solution or None
        The registry's answer, with ``ops`` and ``solve_seconds``.
    least_activation_bytes, least_memory_bytes : int or None
        When nothing fits: the least activation budget, and the least memory
        (activations + fixed), with which a schedule exists, when known.
    device : planner.device.Device or None
        The device named by ``device=``.
    storage : planner.device.Storage or None
        Its storage (the paging strategies join with it).
    time_note : str or None
        With a device: whose times were planned (the device's seconds when it
        gives a compute speed the model's time unit converts with, see
        :func:`planner.device.device_time`); ``model`` is then in them.
    notes : tuple of str
        Strategies left out because their optional module is missing.
    objective : planner.objective.Objective or None
        What was minimised (``time`` or ``energy``), the time budget, and the
        power figures of :attr:`energy_j`.
    error : planner.errors.InfeasibleError or None
        The refusal, when nothing fits (``raise result.error``: the CLI exits 1
        with its ``fields`` under ``--json``).
    """

    success: bool
    message: str
    model: Model
    split: object
    strategy: str = None
    params: dict = None
    schedule: object = None
    simulation: object = None
    solution: object = None
    least_activation_bytes: int = None
    least_memory_bytes: int = None
    device: object = None
    storage: object = None
    time_note: str = None
    notes: tuple = ()
    error: InfeasibleError = None
    objective: object = None

    @property
    def status(self):
        return 0 if self.success else 1

    @property
    def peak_bytes(self):
        """The schedule's predicted activation peak (None when nothing fits)."""
        return None if self.simulation is None else self.simulation.peak_bytes

    @property
    def energy_j(self):
        """The schedule's predicted joules (None when nothing fits or the device has no power figures)."""
        return None if self.schedule is None else self.schedule.predicted.get("energy_j")


def as_model(model):
    """A :class:`~planner.model.Model` from a Model, a model file path or a model document.

    Raises
    ------
    ModelError
        Anything else, or a file or document that is not a valid model.
    """
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(os.fspath(model))
    if isinstance(model, dict):
        return model_from_dict(model)
    raise ModelError(f"model must be a Model, a model file path or a model document (dict), not {type(model).__name__}")


def as_bytes(memory, *, what="memory"):
    """Bytes from a SIZE string (``"256MB"``) or a whole number of bytes.

    Raises
    ------
    SizeError
        Not a SIZE, not a whole number, negative, or above 2**62 bytes.
    """
    if isinstance(memory, str):
        return parse_size(memory)
    if isinstance(memory, bool) or not isinstance(memory, int):
        raise SizeError(f"{what} must be a SIZE string (e.g. '256MB') or a number of bytes, not {memory!r}")
    if not 0 <= memory <= MAX_BYTES:
        raise SizeError(f"{what} must be from 0 to 2**62 bytes, got {memory}")
    return memory


def plan(model, memory=None, *, strategy="auto", optimizer="sgd", device=None, progress=None, objective="time",
         time_budget=None, **options):
    """Find the best schedule for ``model`` that fits ``memory``.

    Parameters
    ----------
    model : planner.model.Model, str, os.PathLike or dict
        The model, its model file (edgeplan-model/1), or its document.
    memory : str or int or None
        Device memory for the whole training step: a SIZE (``"256MB"``,
        ``"1.5GiB"``) or bytes.  None takes the ``device``'s.
    strategy : str, keyword-only
        A registered strategy, or ``auto`` (every applicable one; the least
        compute wins).
    optimizer : {"sgd", "adam"}, keyword-only
        Fixed memory: parameters x 2 (SGD) or x 4 (Adam).
    device : str or os.PathLike or None, keyword-only
        A built-in device name or an edgeplan-device/1 file: its memory
        (``memory`` overrides it) and its storage, which adds the paging
        strategies.
    progress : callable or None, keyword-only
        As for :func:`planner.solvers.run_all`.
    objective : {"time", "energy"}, keyword-only
        What the paging strategies minimise and ``auto`` ranks by: the
        step's time, or its joules (needs a ``device`` with power figures).
    time_budget : float or None, keyword-only
        The most seconds (the device's) a step may take; a schedule above it
        is refused like one above the memory.
    **options
        Strategy options (``segments``, ``snapshots``, ``time_limit``), each
        checked against the registry's :data:`~planner.solvers.OPTIONS`.

    Returns
    -------
    PlanResult
        ``success`` False (with the least memory that works) when nothing fits.

    Raises
    ------
    ModelError, SizeError, DeviceError, OptionError, NotApplicableError
        Bad input: a bad model, memory, device, strategy or option; a named
        strategy that does not apply or misses its optional module.

    Examples
    --------
    >>> r = plan("examples/resnet18.json", "256MB")  # doctest: +SKIP
    >>> r.success, r.strategy, r.schedule.write("schedule.json", r.model)  # doctest: +SKIP
    """
    model = as_model(model)
    if memory is not None:
        memory = as_bytes(memory)
    model, memory, storage, dev, time_note = report.device_memory(model, memory, device)
    solvers.check_strategy(strategy)
    solvers.check_options(model, strategy, options)
    goal = objective_for(model, dev, objective, time_budget=time_budget)
    named = strategy != "auto"
    candidates = [strategy] if named else solvers.applicable(model, options, storage=storage, include_missing=True)
    _, notes = report.available(candidates, named=named)
    found = dict(model=model, device=dev, storage=storage, time_note=time_note, notes=tuple(notes), objective=goal)
    split = split_memory(model, memory, optimizer)
    try:
        report.check_memory(model, memory, optimizer)
        solution = solvers.solve(model, split.activation_bytes, strategy, storage=storage, progress=progress,
                                 objective=goal, **options)
    except report.Refusal as exc:
        return _refused(exc, split, found)
    except InfeasibleError as exc:
        return _refused(report.infeasible(exc, split), split, found)
    return PlanResult(
        success=True,
        message=f"strategy {solution.strategy}: peak {solution.result.peak_bytes:,} bytes of activations, "
        f"overhead {solution.result.overhead:.1%}"
        + ("" if solution.schedule.predicted.get("energy_j") is None
           else f", {solution.schedule.predicted['energy_j']:.4g} J a step"),
        split=split, strategy=solution.strategy, params=solution.params, schedule=solution.schedule,
        simulation=solution.result, solution=solution, **found,
    )


def _refused(refusal, split, found):
    least = refusal.least_bytes
    return PlanResult(
        success=False, message=str(refusal), split=split, least_activation_bytes=least,
        least_memory_bytes=None if least is None else split.memory_for(least), error=refusal, **found,
    )
