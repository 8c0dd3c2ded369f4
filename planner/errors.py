"""The exception tree shared by the whole library.

``EdgeplanError`` is the root.  ``ModelError`` and ``ScheduleFormatError`` mean
bad input (the CLI exits 2), ``ScheduleError`` means a schedule that breaks the
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
    "DeviceError",
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


class DeviceError(EdgeplanError):
    """A device file (``edgeplan-device/1``) or device name is bad (the CLI exits 2)."""
