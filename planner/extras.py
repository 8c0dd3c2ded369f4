"""Optional dependencies: which extra of setup.cfg installs each, and one check.

``torch``, ``onnx`` and ``matplotlib`` are optional (the ``torch``, ``onnx``
and ``plot`` extras); scipy is a core dependency (the ``milp`` strategy uses
its HiGHS).  :func:`missing` tells, without importing anything, whether a module is
installed; :func:`require` raises
:class:`~planner.errors.MissingExtraError` naming what to install.
"""

import sys
from importlib import metadata

from planner.errors import MissingExtraError

__all__ = ["EXTRAS", "missing", "install_hint", "require"]

# module -> the setup.cfg extra that installs it (None: a core dependency).
EXTRAS = {"torch": "torch", "onnx": "onnx", "matplotlib": "plot", "scipy": None}


def missing(module):
    """True when ``module`` is not installed (or hidden: ``sys.modules[module] = None``).

    Asks the installed distributions (of the same name as the module, as for
    every optional dependency here), so nothing is imported.
    """
    if module in sys.modules:
        return sys.modules[module] is None
    try:
        metadata.distribution(module)
    except metadata.PackageNotFoundError:
        return True
    return False


def install_hint(module):
    """What to install for ``module``: ``pip install 'edgeplan[plot]'``, ..."""
    extra = EXTRAS.get(module)
    if extra is None:
        return f"{module} is a core dependency of edgeplan: pip install {module} (or reinstall edgeplan)"
    hint = f"pip install 'edgeplan[{extra}]'"
    if module == "torch":
        hint = "pip install torch==2.13.0 (the CPU build), then " + hint
    return hint


def require(*modules, purpose):
    """Raise :class:`MissingExtraError` unless every one of ``modules`` can be imported.

    Parameters
    ----------
    *modules : str
        Top-level module names (``"matplotlib"``).
    purpose : str, keyword-only
        What needs them, for the message (``"--plot"``, ``"strategy 'milp'"``).

    Raises
    ------
    MissingExtraError
        ``"<purpose> needs <module>: <install hint>"``, for the first missing one.
    """
    for module in modules:
        if missing(module):
            raise MissingExtraError(f"{purpose} needs {module}: {install_hint(module)}", module=module)
