"""The exception tree shared by the whole library.

``EdgeplanError`` is the root.  ``ModelError`` and ``ScheduleFormatError`` mean
bad input (the CLI exits 2), as do ``OptionError`` (a strategy option it does
not take or out of range) and ``MissingExtraError`` (an optional dependency is
not installed), ``ScheduleError`` means a schedule that breaks the
rules of SPEC section 3 and ``InfeasibleError`` means no schedule of a strategy
fits the budget (both are answers: the CLI exits 1).
"""

__all__ = [
    "EdgeplanError",
    "ModelError",
    "ScheduleFormatError",
    "ScheduleError",
    "InfeasibleError",
    "NotApplicableError",
    "OptionError",
    "MissingExtraError",
    "ModelMismatchError",
]


class EdgeplanError(Exception):
    """Base class of every error edgeplan raises on purpose."""


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

    def __init__(self, message, *, least_bytes=None):
        super().__init__(message)
        self.least_bytes = least_bytes


class NotApplicableError(EdgeplanError):
    """The strategy does not apply to this model (e.g. a chain-only solver on a DAG)."""


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
