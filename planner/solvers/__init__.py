"""The solver registry: strategy name -> solver, and :func:`solve`.

Every solver is a function ``fn(model, *, budget, **options) -> (ops, params)``
that returns forward/backward ops (its decisions) and the parameters it used.
:func:`solve` lowers those ops with the shared lowering, replays them in the
simulator, checks the budget and builds the :class:`~planner.schedule.Schedule`
whose ``predicted`` numbers are the simulator's.  A solver never reports its
own costs.
"""

import importlib
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass

from planner import extras
from planner.errors import EdgeplanError, InfeasibleError, NotApplicableError, OptionError
from planner.lowering import insert_frees
from planner.schedule import Schedule
from planner.simulate import simulate

__all__ = [
    "Strategy",
    "STRATEGIES",
    "Solution",
    "Outcome",
    "SolverBug",
    "solve",
    "run_all",
    "applicable",
    "strategy_names",
    "check_options",
    "missing_requirements",
]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy.

    Attributes
    ----------
    name : str
        The CLI name (``--strategy NAME``).
    module, function : str
        Where the solver function lives (imported on first use).
    summary : str
        One line for help texts and tables.
    chains_only : bool
        Refuses DAGs.
    options : tuple of str
        Keyword options it takes besides ``budget`` (``segments``, ...).
    emits_frees : bool
        Its ops already contain every free; the shared lowering is skipped,
        the simulator still checks them.  Such a solver may return a lazy,
        re-iterable sequence with a length instead of a list: the registry
        then replays it as a stream and the schedule regenerates it when
        written, so no op list is ever held.
    auto_max_layers : int or None
        Above this many layers the strategy is left out of the default set
        (``auto``, ``compare``, ``sweep``) because it would take long; it still
        runs when named.
    requires : tuple of str
        Modules it imports beyond the core ones (checked with
        :func:`planner.extras.require` before it runs: a strategy whose
        module is missing is skipped by ``auto``, ``compare`` and ``sweep``,
        and is bad usage when named).
    """

    name: str
    module: str
    function: str
    summary: str
    chains_only: bool = False
    options: tuple = ()
    emits_frees: bool = False
    auto_max_layers: int = None
    requires: tuple = ()

    def load(self):
        """The solver function."""
        return getattr(importlib.import_module(self.module), self.function)


# milp is exact and quick up to about this size (one stage per layer); beyond
# it, auto, compare and sweep leave it out unless it is named or given a
# --time-limit, so that a plain `edgeplan solve` stays fast.
MILP_AUTO_MAX_LAYERS = 100


def _entry(name, module, function, summary, **kwargs):
    return name, Strategy(name, f"planner.solvers.{module}", function, summary, **kwargs)


STRATEGIES = dict(
    [
        _entry("store-all", "store_all", "store_all", "no recomputation (plain autograd)"),
        _entry(
            "sequential",
            "sequential",
            "sequential",
            "PyTorch checkpoint_sequential (--segments N)",
            chains_only=True,
            options=("segments",),
            emits_frees=True,
        ),
        _entry("sqrt-n", "sqrt_n", "sqrt_n", "Chen et al.: about sqrt(n) segments, each recomputed once", chains_only=True),
        _entry("chen-greedy", "chen", "chen_greedy", "Chen et al.'s greedy memory planning with a searched segment budget"),
        _entry("revolve", "revolve", "revolve", "Griewank-Walther binomial checkpointing (--snapshots C)", chains_only=True, options=("snapshots",), emits_frees=True),
        _entry("dp", "dp", "dp", "optimal dynamic program for heterogeneous chains (rotor)", chains_only=True),
        _entry("reforward", "reforward", "reforward", "Feng & Huang re-forwarding: best checkpoint set, each layer recomputed at most once"),
        _entry(
            "milp",
            "milp",
            "milp",
            "exact mixed-integer program for any DAG, HiGHS (--time-limit SECONDS)",
            options=("time_limit",),
            auto_max_layers=MILP_AUTO_MAX_LAYERS,
            requires=("scipy",),
        ),
    ]
)


class SolverBug(RuntimeError):
    """A solver produced a schedule the simulator rejects: a bug in the solver."""


@dataclass(frozen=True)
class Solution:
    """A validated schedule with the simulator's verdict and how long solving took."""

    strategy: str
    params: dict
    schedule: Schedule
    result: object  # planner.simulate.SimulationResult
    ops: tuple
    solve_seconds: float


@dataclass(frozen=True)
class Outcome:
    """One strategy's answer in :func:`run_all`: a solution, or why there is none."""

    strategy: str
    solution: Solution = None
    error: EdgeplanError = None
    solve_seconds: float = 0.0

    @property
    def feasible(self):
        return self.solution is not None

    @property
    def least_bytes(self):
        """The least activation budget this strategy needs, when known."""
        if isinstance(self.error, InfeasibleError):
            return self.error.least_bytes
        return None


def strategy_names():
    """Every strategy name, ``auto`` included, in registry order."""
    return list(STRATEGIES) + ["auto"]


def applicable(model, options=None):
    """Names of the strategies that apply to ``model`` and run by default on it.

    A strategy with ``auto_max_layers`` joins only on models up to that size,
    or when ``options`` give it one of its own options (``time_limit`` for
    milp): the user asked for it.
    """
    options = options or {}
    names = []
    for s in STRATEGIES.values():
        if s.chains_only and not model.is_chain:
            continue
        asked = any(options.get(key) is not None for key in s.options)
        if s.auto_max_layers is not None and len(model) > s.auto_max_layers and not asked:
            continue
        names.append(s.name)
    return names


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


# Each option's valid values: (test(value, model), what the range is).
_OPTION_RANGES = {
    "segments": (lambda v, m: _is_int(v) and 1 <= v <= len(m), lambda m: f"an integer from 1 to {len(m)} (the number of layers)"),
    "snapshots": (lambda v, m: _is_int(v) and v >= 0, lambda m: "an integer >= 0"),
    "time_limit": (lambda v, m: _is_seconds(v), lambda m: "a positive number of seconds"),
}


def check_options(model, strategies, options):
    """Check strategy options once, before any solver runs.

    Parameters
    ----------
    model : planner.model.Model
    strategies : str, list of str or None
        One strategy name (or ``"auto"``), several, or None (the default set
        of ``auto``, ``compare`` and ``sweep``).
    options : dict
        Option name -> value; None values are options not given.

    Raises
    ------
    OptionError
        An option no strategy takes (a misspelling), one that the single
        strategy named does not take, or a value out of its range.  The
        message is the same whichever command asked.

    Notes
    -----
    With several strategies, each gets the options it takes: ``--segments``
    alongside ``--strategies dp,sequential`` goes to sequential alone.
    """
    known = {key for s in STRATEGIES.values() for key in s.options}
    single = STRATEGIES.get(strategies) if isinstance(strategies, str) else None
    for key, value in (options or {}).items():
        if value is None:
            continue
        if single is not None and key not in single.options:
            accepted = ", ".join(single.options) or "none"
            raise OptionError(f"strategy {single.name!r} does not take {key!r} (it takes: {accepted})")
        if key not in known:
            raise OptionError(f"unknown option {key!r}; strategies take: {', '.join(sorted(known))}")
        test, wanted = _OPTION_RANGES[key]
        if not test(value, model):
            raise OptionError(f"--{key.replace('_', '-')} must be {wanted(model)}, got {value!r}")


def missing_requirements(name):
    """The modules strategy ``name`` needs that are not installed (usually none)."""
    return [module for module in STRATEGIES[name].requires if extras.missing(module)]


def _is_replayable(ops):
    """True for a lazy op sequence that can be iterated again and knows its length."""
    return isinstance(ops, Sized) and isinstance(ops, Iterable) and not isinstance(ops, Iterator)


def _run(model, budget, strategy, options):
    extras.require(*strategy.requires, purpose=f"strategy {strategy.name!r}")
    fn = strategy.load()
    if strategy.chains_only and not model.is_chain:
        raise NotApplicableError(
            f"strategy {strategy.name!r} applies to chains only, and {model.name!r} is a DAG; "
            "use store-all, chen-greedy, reforward, milp or auto"
        )
    started = time.perf_counter()
    kwargs = {k: v for k, v in options.items() if v is not None and k in strategy.options}
    ops, params = fn(model, budget=budget, **kwargs)
    if not strategy.emits_frees:
        ops = tuple(insert_frees(model, ops))
    elif isinstance(ops, list) or not _is_replayable(ops):
        ops = tuple(ops)
    # A replayable sequence (e.g. revolve's lazy ops) is simulated here and
    # regenerated when the schedule is written: long schedules are never held.
    result = simulate(model, ops)
    seconds = time.perf_counter() - started
    if not result.valid:
        raise SolverBug(f"strategy {strategy.name!r} produced an invalid schedule: {result.error}")
    if budget is not None and result.peak_bytes > budget:
        raise InfeasibleError(
            f"strategy {strategy.name!r} needs {result.peak_bytes} bytes of activation memory, "
            f"more than the budget of {budget} bytes",
            least_bytes=result.peak_bytes,
        )
    schedule = Schedule(
        model_name=model.name,
        fingerprint=model.fingerprint,
        strategy=strategy.name,
        params=dict(params),
        budget_bytes=budget,
        predicted=result.predicted(),
        ops=ops,
    )
    return Solution(strategy.name, dict(params), schedule, result, ops, seconds)


def run_all(model, budget, *, strategies=None, options=None, progress=None):
    """Run several strategies and return one :class:`Outcome` each.

    Parameters
    ----------
    model : planner.model.Model
    budget : int or None
    strategies : list of str or None, keyword-only
        Default: every applicable strategy.
    options : dict, keyword-only
        Strategy options; each strategy gets the ones it takes.
    progress : callable or None, keyword-only
        Called as ``progress(name, outcome_or_None)`` before and after each.
    """
    options = options or {}
    check_options(model, strategies, options)
    names = applicable(model, options) if strategies is None else list(strategies)
    outcomes = []
    for name in names:
        strategy = STRATEGIES[name]
        if progress:
            progress(name, None)
        started = time.perf_counter()
        try:
            solution = _run(model, budget, strategy, options)
            outcome = Outcome(name, solution=solution, solve_seconds=solution.solve_seconds)
        except (InfeasibleError, NotApplicableError) as exc:
            outcome = Outcome(name, error=exc, solve_seconds=time.perf_counter() - started)
        outcomes.append(outcome)
        if progress:
            progress(name, outcome)
    return outcomes


def _best(outcomes):
    feasible = [o.solution for o in outcomes if o.feasible]
    if not feasible:
        return None
    return min(feasible, key=lambda s: (s.result.compute, len(s.ops)))


def solve(model, budget, strategy="auto", *, progress=None, **options):
    """Solve ``model`` for an activation ``budget`` with one strategy or ``auto``.

    Parameters
    ----------
    model : planner.model.Model
    budget : int or None
        Activation budget in bytes (``--memory`` minus the fixed memory); None
        means unlimited.
    strategy : str
        A name from :data:`STRATEGIES` or ``"auto"``: every applicable strategy,
        the feasible schedule with the least compute, ties to fewer ops.
    **options
        Strategy options (``segments``, ``snapshots``, ``time_limit``, ...).

    Returns
    -------
    Solution

    Raises
    ------
    InfeasibleError
        No schedule fits; ``least_bytes`` is the least budget that works.
    NotApplicableError
        The strategy does not apply to this model.
    OptionError
        Unknown strategy, an option the strategy does not take, or a value
        out of range (also a ``ValueError``).
    MissingExtraError
        The strategy needs a module that is not installed.
    SolverBug
        The simulator rejected a solver's schedule (never expected).
    """
    if strategy != "auto" and strategy not in STRATEGIES:
        raise OptionError(f"unknown strategy {strategy!r}; choose from {', '.join(strategy_names())}")
    check_options(model, strategy, options)
    if strategy == "auto":
        outcomes = run_all(model, budget, options=options, progress=progress)
        best = _best(outcomes)
        if best is not None:
            return best
        known = [o.least_bytes for o in outcomes if o.least_bytes is not None]
        least = min(known) if known else None
        raise InfeasibleError(
            f"no strategy fits {budget} bytes of activation memory"
            + (f"; the least that works is {least} bytes" if least is not None else ""),
            least_bytes=least,
        )
    return _run(model, budget, STRATEGIES[strategy], options)
