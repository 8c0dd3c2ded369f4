"""The exception tree shared by the whole library (modelled on networkx's ``exception.py``).

::

    EdgeplanError                 every error edgeplan raises on purpose
    +-- SizeError                 a SIZE string that is not one      (CLI exit 2)
    +-- ModelError                bad model file or object          (CLI exit 2)
    +-- ScheduleFormatError       malformed schedule file           (CLI exit 2)
    +-- OptionError               a strategy option unknown or out of range (exit 2)
    +-- NotApplicableError        the strategy does not fit the model's shape (exit 2)
    |   +-- MissingExtraError     an optional dependency is not installed (exit 2)
    +-- DeviceError               bad device file or device name     (CLI exit 2)
    +-- OutputError               an output file cannot be written   (CLI exit 2)
    +-- TooLargeError             the problem exceeds a strategy's size limits (exit 2)
    +-- ScheduleError             a schedule breaks the replay rules (an answer: exit 1)
    |   +-- ModelMismatchError    the schedule was made for another model (exit 1)
    +-- InfeasibleError           no schedule fits the budget      (an answer: exit 1)
    +-- InternalError             a bug in edgeplan                 (CLI exit 3)
        +-- SolverBug             a solver's schedule failed the simulator

Each class says its CLI exit code in ``exit_code`` (2 unless a class says
otherwise), so that the command line maps an error to its code in one place.
Catching ``EdgeplanError`` catches all of them; an exception outside the tree
(``KeyError``, ...) is a bug as well and also exits 3.
"""

__all__ = [
    "EdgeplanError",
    "SizeError",
    "ModelError",
    "ScheduleFormatError",
    "ScheduleError",
    "InfeasibleError",
    "NotApplicableError",
    "TooLargeError",
    "InternalError",
    "SolverBug",
    "OptionError",
    "MissingExtraError",
    "ModelMismatchError",
    "DeviceError",
    "OutputError",
]


# The exit codes of the command line (0 is success): a negative answer, bad
# usage or input, a bug in edgeplan.  Not in __all__: every name there is a class of the tree.
EXIT_NO, EXIT_BAD, EXIT_INTERNAL = 1, 2, 3


class EdgeplanError(Exception):
    """Base class of every error edgeplan raises on purpose.

    Attributes
    ----------
    exit_code : int
        The command line's exit code for it: :data:`EXIT_BAD` (bad usage or
        input) unless a subclass says otherwise.
    """

    exit_code = EXIT_BAD


class SizeError(EdgeplanError, ValueError):
    """A SIZE string that is not of the documented form (``--memory 12XB``).

    It is a ``ValueError`` too, for callers that catch those.
    """


class ModelError(EdgeplanError):
    """A model file (or model object) is malformed.

    The message names the file, the layer and the field where it can.
    """


class ScheduleFormatError(EdgeplanError):
    """A schedule file is malformed (bad JSON, unknown op, unknown layer, ...)."""


class ScheduleError(EdgeplanError):
    """A schedule breaks a rule of SPEC section 3.

    Attributes
    ----------
    index : int or None
        Index of the first offending op (``None`` when the schedule is
        incomplete as a whole, e.g. a backward that never ran).
    layer : str or None
        The layer the offending op names.
    """

    exit_code = EXIT_NO

    def __init__(self, message, *, index=None, layer=None):
        super().__init__(message)
        self.index = index
        self.layer = layer


class InfeasibleError(EdgeplanError):
    """No schedule of the strategy fits the budget.

    Attributes
    ----------
    least_bytes : int or None
        The least activation budget with which the strategy finds a schedule,
        when it is known.
    """

    exit_code = EXIT_NO

    def __init__(self, message, *, least_bytes=None):
        super().__init__(message)
        self.least_bytes = least_bytes


class NotApplicableError(EdgeplanError):
    """The strategy does not apply to this model (e.g. a chain-only solver on a DAG)."""


class TooLargeError(EdgeplanError):
    """The model is too large for a strategy's time or memory limits.

    The strategy applies to the model's shape, but solving would take more
    memory or time than a planner should; another strategy may handle it.
    """


class InternalError(EdgeplanError):
    """A bug in edgeplan, not in the user's input (the CLI exits 3)."""

    exit_code = EXIT_INTERNAL


class SolverBug(InternalError):
    """A solver produced a schedule the simulator rejects: a bug in the solver."""


class OptionError(EdgeplanError, ValueError):
    """A strategy option is unknown or out of range (``--segments 50`` on 10 layers).

    The registry raises it before any solver runs, with the same message in
    every command.  It is a ``ValueError`` too, for callers that catch those.
    """


class MissingExtraError(NotApplicableError):
    """An optional dependency is not installed; the message names the extra.

    Named explicitly (``--strategy milp``, ``--plot``, ``profile``) it is bad
    usage (exit 2); in ``auto``, ``compare`` and ``sweep`` the strategy that
    needs it is skipped like one that does not apply.

    Attributes
    ----------
    module : str
        The missing module (``torch``, ``onnx``, ``matplotlib``, ``scipy``).
    """

    def __init__(self, message, *, module):
        super().__init__(message)
        self.module = module


class ModelMismatchError(ScheduleError):
    """A schedule was made for another model (its layers are not this model's).

    An answer, not bad input: the schedule does not apply to this model (exit 1).
    """


class DeviceError(EdgeplanError):
    """A device file (``edgeplan-device/1``) or device name is bad (the CLI exits 2)."""


class OutputError(EdgeplanError):
    """An output file cannot be written (a missing directory, a directory, no permission, a full disk)."""
