"""edgeplan: activation-checkpointing schedules that make training fit a device's memory.

The library behind the ``edgeplan`` command; its front door is this package::

    from planner import plan                 # no PyTorch needed
    result = plan("examples/resnet18.json", "256MB")
    result.schedule.write("schedule.json", result.model)

    from planner import fit                  # PyTorch: profile -> plan -> wrap
    wrapped = fit(model, example, memory="256MB", loss="cross_entropy")
    wrapped(x, target=y).backward()

The names that need PyTorch (:func:`fit`, :class:`ScheduledModule`,
:func:`verify`, :func:`profile_model`) load on first use, so that importing
``planner`` never imports torch.
"""

from planner.api import PlanResult, plan
from planner.errors import (
    DeviceError,
    EdgeplanError,
    InfeasibleError,
    InternalError,
    MissingExtraError,
    ModelError,
    ModelMismatchError,
    NotApplicableError,
    OptionError,
    OutputError,
    ScheduleError,
    ScheduleFormatError,
    SizeError,
    SolverBug,
    TooLargeError,
)
from planner.model import Model, load_model, model_from_dict
from planner.schedule import Schedule, load_schedule
from planner.simulate import simulate
from planner.sizes import format_size, parse_size
from planner.solvers import solve

__version__ = "0.1.0"

# The names that need PyTorch, imported on first use (see __getattr__).
_TORCH_NAMES = ("fit", "ScheduledModule", "verify", "VerifyResult", "profile_model")

__all__ = [
    "DeviceError",
    "EdgeplanError",
    "InfeasibleError",
    "InternalError",
    "MissingExtraError",
    "Model",
    "ModelError",
    "ModelMismatchError",
    "NotApplicableError",
    "OptionError",
    "OutputError",
    "PlanResult",
    "Schedule",
    "ScheduleError",
    "ScheduleFormatError",
    "SizeError",
    "SolverBug",
    "TooLargeError",
    "format_size",
    "load_model",
    "load_schedule",
    "model_from_dict",
    "parse_size",
    "plan",
    "simulate",
    "solve",
    *_TORCH_NAMES,
]


def __getattr__(name):
    """The PyTorch names, imported when first asked for (``pip install edgeplan[torch]``)."""
    if name not in _TORCH_NAMES:
        raise AttributeError(f"module 'planner' has no attribute {name!r}")
    from planner import extras

    extras.require("torch", purpose=f"planner.{name}")
    from planner.torch.executor import ScheduledModule
    from planner.torch.fit import fit
    from planner.torch.profile import profile_model
    from planner.torch.verify import VerifyResult, verify

    found = {"fit": fit, "ScheduledModule": ScheduledModule, "verify": verify, "VerifyResult": VerifyResult,
             "profile_model": profile_model}
    globals().update(found)
    return found[name]


def __dir__():
    return sorted(set(globals()) | set(_TORCH_NAMES))
