"""What ``milp`` and ``milp-paging`` share about HiGHS: the time limit and one call with a start.

Not a strategy (the registry lists none here): the two programs differ, the
way they are handed to ``scipy.optimize.milp`` does not.
"""

import math
import os
import tempfile
import warnings

__all__ = ["check_time_limit", "run_highs", "solve_capped"]

#: Relative MIP gap at which HiGHS stops (the least-peak program closes it exactly).
MIP_REL_GAP = 1e-4
#: Presolve only below this many variables: above, it costs more than it saves.
PRESOLVE_MAX_VARS = 10_000


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


def solve_capped(form, cost, peak_col, *, cap, time_limit, start=None, prefix):
    """HiGHS on ``form``: the least ``cost`` with the peak column fixed at ``cap`` units,
    or, with ``cap=None``, the least peak (proven to the unit: the peak is an integer).

    ``form`` has ``lb``, ``ub`` and the rows :func:`run_highs` reads; ``start``
    (variable values) is the first incumbent, its peak set to ``cap``.
    """
    import numpy as np

    lb, ub, gap = form.lb.copy(), form.ub.copy(), MIP_REL_GAP
    if cap is None:
        cost = np.zeros(len(form.lb))
        cost[peak_col] = 1.0
        gap = 0.0
    else:
        lb[peak_col] = ub[peak_col] = cap
    options = {
        "time_limit": max(time_limit, 0.01),
        "mip_rel_gap": gap,
        "presolve": len(form.lb) <= PRESOLVE_MAX_VARS,
    }
    if start is not None and cap is not None:
        start = start.copy()
        start[peak_col] = cap
    return run_highs(form, cost, lb, ub, options, start, prefix=prefix)


def _write_start(x, objective, prefix):
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".sol")
    with os.fdopen(fd, "w") as f:
        f.write("Model status\nFeasible\n\n# Primal solution values\nFeasible\n")
        f.write(f"Objective {objective!r}\n# Columns {len(x)}\n")
        f.write("".join(f"c{j} {value!r}\n" for j, value in enumerate(x.tolist())))
    return path
