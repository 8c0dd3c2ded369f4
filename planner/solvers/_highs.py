"""What ``milp`` and ``milp-paging`` share about HiGHS: the time and node limits, one call with a
start, and the search for a decoded schedule that really fits the budget.

Not a strategy (the registry lists none here): the two programs differ, the
way they are handed to ``scipy.optimize.milp`` and their answers checked does not.
"""

import enum
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass

from planner.errors import OptionError

__all__ = ["Status", "Fit", "check_time_limit", "dual_gap", "fit_budget", "import_highs", "run_highs", "solve_capped", "timed_solve"]

#: Relative MIP gap at which HiGHS stops (the least-peak program closes it exactly).
MIP_REL_GAP = 1e-4
#: Presolve only below this many variables: above, it costs more than it saves.
PRESOLVE_MAX_VARS = 10_000


class Status(enum.IntEnum):
    """``scipy.optimize.milp``'s ``status`` codes, as its documentation lists them."""

    OPTIMAL = 0
    LIMIT = 1  # iteration or time limit reached
    INFEASIBLE = 2
    UNBOUNDED = 3
    OTHER = 4  # also HiGHS' node limit (its "solution limit", status 16), with the best solution found


@dataclass(frozen=True)
class Fit:
    """What :func:`fit_budget` found.

    ``status`` is HiGHS' last status (None when the time or the cap ran out
    first); ``ops`` and ``result`` the first decoded schedule that fits and its
    simulation (None when there is none); ``start`` the name of the warm
    start that was HiGHS' first incumbent (None when none was encoded);
    ``gap`` HiGHS' relative gap between that schedule's objective and its
    best (dual) bound on the program's objective, ``(objective - bound) /
    objective`` (at most 1e-4 when solved to optimality; None when HiGHS gave
    none).
    """

    status: object = None
    ops: object = None
    result: object = None
    start: str = None
    gap: float = None


def check_time_limit(time_limit, default):
    """``time_limit`` (or ``default`` when None) as a float of seconds.

    Raises
    ------
    OptionError
        Not a positive finite number.
    """
    limit = default if time_limit is None else time_limit
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise OptionError(f"--time-limit must be a number of seconds, got {time_limit!r}")
    if not (math.isfinite(limit) and limit > 0):
        raise OptionError(f"--time-limit must be a positive number of seconds, got {time_limit!r}")
    return float(limit)


def import_highs(missing):
    """Import ``scipy.optimize`` (HiGHS), or raise ImportError(``missing``): the extra to install."""
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(missing) from None


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


def solve_capped(form, cost, peak_col, *, cap, time_limit, start=None, node_limit=None, prefix):
    """HiGHS on ``form``: the least ``cost`` with the peak column fixed at ``cap`` units,
    or, with ``cap=None``, the least peak (proven to the unit: the peak is an integer).

    ``form`` has ``lb``, ``ub`` and the rows :func:`run_highs` reads; ``start``
    (variable values) is the first incumbent, its peak set to ``cap``.
    ``node_limit`` (None: none) bounds HiGHS' branch-and-bound nodes (the root
    is node 1): HiGHS then stops on its own work, not on the clock, with the
    best solution it found (``Status.OTHER`` unless proven), the same answer
    on a quiet or a busy machine; ``time_limit`` stays a cap.
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
    if node_limit is not None:
        options["node_limit"] = node_limit
    if start is not None and cap is not None:
        start = start.copy()
        start[peak_col] = cap
    return run_highs(form, cost, lb, ub, options, start, prefix=prefix)


def timed_solve(form, deadline, *, margin, cap, start=None, node_limit=None):
    """``form.solve`` at ``cap`` with the time left before ``deadline`` (None when none is left).

    ``margin`` seconds are kept back: HiGHS overruns its limit a little (it
    checks the clock between steps).  ``node_limit`` as :func:`solve_capped`.
    """
    left = deadline - time.perf_counter()
    if left <= 0.05:
        return None
    return form.solve(cap=cap, time_limit=0.95 * left - margin, start=start, node_limit=node_limit)


def fit_budget(form, *, budget, starts, deadline, margin, measure, node_limit=None):
    """HiGHS on ``form`` at ``budget`` bytes until a decoded schedule really fits.

    Parameters
    ----------
    form : the program
        With ``unit`` (bytes per memory unit), ``encode(ops, cap)`` (variable
        values, or None outside the search space) and ``solve`` (as
        :func:`solve_capped`).
    budget : int
        Bytes; the program runs at ``budget // unit`` units.
    starts : list of (cost, ops, name)
        Warm starts that fit, best first; the first that encodes is HiGHS'
        starting incumbent.
    deadline, margin : float
        As :func:`timed_solve`.
    node_limit : int or None
        As :func:`solve_capped`, for each HiGHS run.
    measure : callable
        ``measure(x)``: ``(ops, result)``, the schedule of a solution and its
        simulation (valid, else a RuntimeError: a formulation bug).

    Returns
    -------
    Fit

    Notes
    -----
    HiGHS' feasibility tolerance can let a memory row pass by a few units:
    when the simulated peak exceeds the budget, the cap is tightened by the
    excess and HiGHS runs again (without the start).
    """
    cap = budget // form.unit
    start, name = None, None
    for _, ops, offered in starts:
        x = form.encode(ops, cap)
        if x is not None:
            start, name = x, offered
            break
    while True:
        res = timed_solve(form, deadline, margin=margin, cap=cap, start=start, node_limit=node_limit)
        if res is None:
            return Fit(start=name)
        if res.x is None:
            return Fit(status=res.status, start=name)
        ops, result = measure(res.x)
        if result.peak_bytes <= budget:
            return Fit(res.status, ops, result, name, dual_gap(res))
        cap -= -(-(result.peak_bytes - budget) // form.unit) + 1
        start = None
        if cap < 0:  # pragma: no cover - tolerances are far smaller
            return Fit(start=name)


def dual_gap(res):
    """HiGHS' relative gap ``(objective - dual bound) / objective`` of a solve with a solution,
    rounded to 6 decimals; None when HiGHS gives no finite one (scipy's ``mip_gap``)."""
    gap = getattr(res, "mip_gap", None)
    if gap is None or not math.isfinite(gap):
        return None
    return round(max(float(gap), 0.0), 6)


def _write_start(x, objective, prefix):
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".sol")
    with os.fdopen(fd, "w") as f:
        f.write("Model status\nFeasible\n\n# Primal solution values\nFeasible\n")
        f.write(f"Objective {objective!r}\n# Columns {len(x)}\n")
        f.write("".join(f"c{j} {value!r}\n" for j, value in enumerate(x.tolist())))
    return path
