"""Writing output files atomically: whole or not at all."""

import os
import tempfile
from contextlib import contextmanager

from planner.errors import OutputError

__all__ = ["atomic_output"]


@contextmanager
def atomic_output(path, *, binary=False):
    """Open a temporary file beside ``path`` and move it into place on success.

    On any exception the temporary file is removed and ``path`` is left as it
    was, so a failed command never leaves a half-written file.  The file gets
    the usual permissions (``0666`` less the umask), not mkstemp's ``0600``.

    Parameters
    ----------
    path : str or os.PathLike
    binary : bool, keyword-only
        Open in binary mode (images) instead of UTF-8 text.

    Yields
    ------
    file object

    Raises
    ------
    OutputError
        ``path`` cannot be written (``PATH: cannot write: REASON``), also
        when the body's writes fail with an ``OSError`` (a full disk).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgeplan-", suffix=suffix, dir=directory)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        if binary:
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding="utf-8")
        with f:
            yield f
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # writing, flushing or moving into place
            raise _cannot_write(path, exc) from None
        raise


def _cannot_write(path, exc):
    return OutputError(f"{path}: cannot write: {exc.strerror or exc}")
