"""What ``milp`` and ``milp-paging`` share about HiGHS: the time limit and one call with a start.

Not a strategy (the registry lists none here): the two programs differ, the
way they are handed to ``scipy.optimize.milp`` does not.
"""

import math
import os
import tempfile
import warnings

__all__ = ["check_time_limit", "run_highs"]


def check_time_limit(time_limit, default):
    """``time_limit`` (or ``default`` when None) as a float of seconds.

    Raises
    ------
    ValueError
        Not a positive finite number.
    """
    limit = default if time_limit is None else time_limit
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise ValueError(f"--time-limit must be a number of seconds, got {time_limit!r}")
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"--time-limit must be a positive number of seconds, got {time_limit!r}")
    return float(limit)


def run_highs(form, cost, lb, ub, options, start=None, *, prefix):
    """``scipy.optimize.milp`` on ``form``'s rows (``A``, ``lo``, ``up``, ``integrality``).

    ``start``, when given, is HiGHS' starting incumbent, passed through a
    solution file (named ``prefix...sol``, removed afterwards).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp as highs

    options = dict(options)
    path = None
    try:
        if start is not None:
            path = _write_start(start, float(cost @ start), prefix)
            options["read_solution_file"] = path
        with warnings.catch_warnings():
            # scipy warns that it passes read_solution_file to HiGHS verbatim
            warnings.simplefilter("ignore", RuntimeWarning)
            return highs(
                cost,
                integrality=form.integrality,
                bounds=Bounds(lb, ub),
                constraints=LinearConstraint(form.A, form.lo, form.up),
                options=options,
            )
    finally:
        if path is not None:
            os.unlink(path)


def _write_start(x, objective, prefix):
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".sol")
    with os.fdopen(fd, "w") as f:
        f.write("Model status\nFeasible\n\n# Primal solution values\nFeasible\n")
        f.write(f"Objective {objective!r}\n# Columns {len(x)}\n")
        f.write("".join(f"c{j} {value!r}\n" for j, value in enumerate(x.tolist())))
    return path
