"""What a plan minimises within the memory budget: the step's time or its energy, and a time budget.

An :class:`Objective` is built once from the model and the device
(:func:`objective_for`, which checks that the figures it needs exist) and
handed to the registry: it ranks schedules (:meth:`Objective.key`), refuses a
schedule above the time budget (:meth:`Objective.check`), gives the paging
strategies their keyword arguments (:meth:`Objective.solver_kwargs`) and a
schedule its predicted joules (:meth:`Objective.energy`, docs/format.md,
"Energy in a schedule").
"""

from dataclasses import dataclass

from planner.device import TIME_UNITS
from planner.errors import InfeasibleError, OptionError

__all__ = ["OBJECTIVES", "Objective", "TIME", "objective_for", "check_time_budget"]

#: The objectives ``--objective`` takes.
OBJECTIVES = ("time", "energy")


@dataclass(frozen=True)
class Objective:
    """What to minimise, with the figures to compute it.

    Attributes
    ----------
    kind : {"time", "energy"}
    power_w : float or None
        Watts while computing (the device's ``compute.power_w``).
    transfer_power_w : float or None
        Watts while a transfer runs (its storage's ``transfer_power_w``).
    per_second : float or None
        How many of the model's time unit make a second; None when the
        model's times are not a time (FLOPs): then neither joules nor a
        time budget can be computed.
    time_budget_s : float or None
        The most seconds a step may take (``--time-budget``).
    """

    kind: str = "time"
    power_w: float = None
    transfer_power_w: float = None
    per_second: float = None
    time_budget_s: float = None

    def seconds(self, result):
        """The step's time of a :class:`~planner.simulate.SimulationResult` in seconds (None without a unit)."""
        return None if self.per_second is None else result.step_time / self.per_second

    def energy(self, result):
        """The step's joules (docs/format.md), or None without the figures."""
        if self.power_w is None or self.per_second is None:
            return None
        joules = result.compute / self.per_second * self.power_w
        if result.transfer:
            if self.transfer_power_w is None:
                return None
            joules += result.transfer / self.per_second * self.transfer_power_w
        return joules

    def key(self, result):
        """What ranks schedules: joules with the objective energy, else the step's time."""
        return self.energy(result) if self.kind == "energy" else result.step_time

    def solver_kwargs(self):
        """The keywords of a strategy that searches under the objective (``power_w``, ``time_budget``)."""
        kwargs = {}
        if self.kind == "energy":
            kwargs["power_w"] = self.power_w
        if self.time_budget_s is not None:
            kwargs["time_budget"] = self.time_budget_s
        return kwargs

    def check(self, strategy, result):
        """Raise :class:`InfeasibleError` when ``result``'s step takes longer than the time budget."""
        if self.time_budget_s is None:
            return
        seconds = self.seconds(result)
        if seconds > self.time_budget_s * (1 + 1e-9):
            raise InfeasibleError(
                f"strategy {strategy!r} takes {seconds:.6g} s a step, more than the time budget of "
                f"{self.time_budget_s:g} s"
            )


#: The default: the least step time, no time budget.
TIME = Objective()


def check_time_budget(seconds, name="time_budget"):
    """Raise :class:`OptionError` unless ``seconds`` is a finite number > 0 (``name`` says which argument)."""
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 < seconds < float("inf")):
        raise OptionError(f"{name} must be a positive number of seconds, got {seconds!r}")


def objective_for(model, device=None, kind="time", *, time_budget=None):
    """The :class:`Objective` of ``model`` (in the device's time already) on ``device``.

    Parameters
    ----------
    model : planner.model.Model
        As planned: in the device's seconds when the device gives a speed.
    device : planner.device.Device or None
    kind : {"time", "energy"}
    time_budget : float or None, keyword-only
        Seconds.

    Raises
    ------
    OptionError
        An unknown objective, a time budget that is not a number > 0, energy
        without the power figures, or either without a model timed in seconds.
    """
    if kind not in OBJECTIVES:
        raise OptionError(f"unknown objective {kind!r}; choose from {', '.join(OBJECTIVES)}")
    if time_budget is not None:
        check_time_budget(time_budget, "--time-budget")
    compute = None if device is None else device.compute
    storage = None if device is None else device.storage
    per_second = TIME_UNITS.get(model.time_unit)
    if kind == "energy":
        if device is None:
            raise OptionError("--objective energy needs a device with power figures: give --device NAME|FILE "
                              "(edgeplan devices lists the presets)")
        if compute is None or compute.power_w is None:
            raise OptionError(f"--objective energy needs the device's compute.power_w, and {device.name!r} "
                              "has none")
        if storage is not None and storage.transfer_power_w is None:
            raise OptionError(f"--objective energy needs the storage's transfer_power_w, and {device.name!r} "
                              "has none")
    if per_second is None and (kind == "energy" or time_budget is not None):
        what = "--objective energy" if kind == "energy" else "--time-budget"
        raise OptionError(
            f"{what} needs the model's times in seconds, and {model.name!r} is timed in "
            f"{model.time_unit or 'no unit'} (a device with compute.flop_per_s converts FLOPs)"
        )
    return Objective(
        kind=kind,
        power_w=None if compute is None else compute.power_w,
        transfer_power_w=None if storage is None else storage.transfer_power_w,
        per_second=per_second,
        time_budget_s=None if time_budget is None else float(time_budget),
    )
