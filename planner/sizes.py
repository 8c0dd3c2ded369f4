"""Memory sizes: parsing ``--memory`` arguments and formatting byte counts.

A bare integer is bytes; ``kB MB GB TB`` are powers of 1000 and
``KiB MiB GiB TiB`` powers of 1024, case-insensitive, with an optional space
and decimals allowed (``1.5GiB``).  Anything else is rejected (SPEC section 4).
"""

import re
from decimal import Decimal, InvalidOperation

from planner.errors import SizeError

__all__ = ["parse_size", "format_size", "SizeError", "MAX_BYTES", "int64_safe"]

_UNITS = {
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

# ASCII only: Python's \d and \s would also accept other scripts' digits and spaces.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$", re.ASCII)

# Sizes beyond 2**62 bytes are refused: no device has them and they would
# overflow the int64 arithmetic of the numpy-based solvers.
MAX_BYTES = 2**62


def int64_safe(total, *, headroom=1):
    """Whether ``headroom`` sums of up to ``total`` bytes each stay below :data:`MAX_BYTES`.

    The one overflow guard: below it numpy's int64 holds every sum the
    solvers form, with room to spare; above it they compute with Python ints.
    """
    return total * headroom < MAX_BYTES


def parse_size(text):
    """Parse a SIZE string into a number of bytes.

    Parameters
    ----------
    text : str
        ``"256MB"``, ``"1.5 GiB"``, ``"1048576"``, ...

    Returns
    -------
    int
        The byte count, rounded down to a whole byte.

    Raises
    ------
    SizeError
        If the text is not a SIZE (unknown unit, fractional bytes, negative,
        empty) or exceeds 2**62 bytes.

    Examples
    --------
    >>> parse_size("4GB") - parse_size("4GiB") == -294967296
    True
    """
    if not isinstance(text, str):
        raise SizeError(f"a size must be a string, not {type(text).__name__}")
    match = _SIZE_RE.match(text)
    if not match:
        raise SizeError(
            f"{text!r} is not a size: use bytes (e.g. 1048576) or a number with "
            "kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    number, unit = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the regex already excludes this
        raise SizeError(f"{text!r} is not a size") from None
    if unit == "":
        if value != value.to_integral_value():
            raise SizeError(f"{text!r}: a size without a unit is a whole number of bytes")
        factor = 1
    else:
        factor = _UNITS.get(unit.lower())
        if factor is None:
            raise SizeError(
                f"{text!r}: unknown unit {unit!r}; use kB, MB, GB, TB, KiB, MiB, GiB or TiB"
            )
    result = int(value * factor)
    if result > MAX_BYTES:
        raise SizeError(f"{text!r} is larger than 2**62 bytes")
    return result


def format_size(nbytes, *, binary=False):
    """Format a byte count for people: ``format_size(1500000) == '1.50 MB'``.

    Parameters
    ----------
    nbytes : int
        The byte count (may be negative).
    binary : bool, keyword-only
        Use KiB/MiB/... instead of kB/MB/...
    """
    base = 1024 if binary else 1000
    units = ["KiB", "MiB", "GiB", "TiB"] if binary else ["kB", "MB", "GB", "TB"]
    sign = "-" if nbytes < 0 else ""
    value = abs(nbytes)
    if value < base:
        return f"{sign}{value} B"
    scaled = float(value)
    unit = ""
    for unit in units:
        scaled /= base
        if scaled < base or unit == units[-1]:
            break
    return f"{sign}{scaled:.2f} {unit}"
