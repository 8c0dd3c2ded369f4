"""The solver registry: strategy name -> solver, and :func:`solve`.

Every solver is a function ``fn(model, *, budget, **options) -> (ops, params)``
that returns forward/backward ops (its decisions) and the parameters it used;
a paging strategy (``needs_storage``) is also given ``storage=`` (a
:class:`~planner.device.Storage`) and may return ``pageout``/``pagein`` ops.
:func:`solve` lowers those ops with the shared lowering, replays them in the
simulator, checks the budget and builds the :class:`~planner.schedule.Schedule`
whose ``predicted`` numbers are the simulator's.  A solver never reports its
own costs.
"""

import dataclasses
import importlib
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass

from planner import extras
from planner.device import time_scale
from planner.holding import held_view
from planner.errors import (
    EdgeplanError,
    InfeasibleError,
    NotApplicableError,
    OptionError,
    SolverBug,
    TooLargeError,
)
from planner.lowering import insert_frees
from planner.objective import TIME
from planner.schedule import Schedule
from planner.simulate import simulate

__all__ = [
    "Strategy",
    "STRATEGIES",
    "Option",
    "OPTIONS",
    "Solution",
    "Outcome",
    "SolverBug",
    "solve",
    "run_all",
    "applicable",
    "strategy_names",
    "AUTO_TIME_LIMIT",
    "SWEEP_TIME_LIMIT",
    "MILP_AUTO_MAX_LAYERS",
    "check_options",
    "check_strategy",
    "missing_requirements",
    "check_storage",
    "solving_model",
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
        Keyword options it takes besides ``budget`` (``segments``, ...),
        each declared once in :data:`OPTIONS`.
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
    auto_dags_only : bool
        The default set runs it on DAGs only (on chains another strategy is
        exact and it would only cost time); it still runs when named or given
        one of its options.
    warm_starts : bool
        It takes ``warm_starts`` (the ``(name, ops)`` of the schedules the
        other strategies found) and ``others_least_bytes``, and is run after
        them.
    shares_work : bool
        It takes ``shared``, a dict in which it keeps work across calls on the
        same model (``sweep``'s memory sizes), with the same answers.
    requires : tuple of str
        Modules it imports beyond the core ones (checked with
        :func:`planner.extras.require` before it runs: a strategy whose
        module is missing is skipped by ``auto``, ``compare`` and ``sweep``,
        and is bad usage when named).
    needs_storage : bool
        A paging strategy (SPEC section 5): it runs only with a storage, is
        called with ``storage=``, and joins the default set only when one is
        given.
    searches_objective : bool
        It minimises the objective it is given: with the objective energy it
        is called with ``power_w=`` (watts while computing; the storage has
        the transfer power), with a time budget with ``time_budget=``
        (seconds), see :meth:`planner.objective.Objective.solver_kwargs`.
    """

    name: str
    module: str
    function: str
    summary: str
    chains_only: bool = False
    options: tuple = ()
    emits_frees: bool = False
    auto_max_layers: int = None
    auto_dags_only: bool = False
    warm_starts: bool = False
    shares_work: bool = False
    requires: tuple = ()
    needs_storage: bool = False
    searches_objective: bool = False

    def load(self):
        """The solver function."""
        return getattr(importlib.import_module(self.module), self.function)


# The default set (auto, compare, sweep) runs milp only where it can beat the
# others: on DAGs (on chains dp is optimal over persistent schedules, and milp
# did not beat it by 1% on any benchmarked chain) of up to this many layers,
# for AUTO_TIME_LIMIT seconds (sweep: SWEEP_TIME_LIMIT per memory size),
# warm-started with the schedules the others found.  --strategy milp, or a
# --time-limit, runs the exact search on any model, for as long as asked.
MILP_AUTO_MAX_LAYERS = 100
AUTO_TIME_LIMIT = 0.5
SWEEP_TIME_LIMIT = 0.25


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
        _entry(
            "dp", "dp", "dp", "optimal dynamic program for heterogeneous chains (rotor)",
            chains_only=True, shares_work=True,
        ),
        _entry(
            "hierarchical", "blocks", "hierarchical",
            "blocks between cut points, each with a menu of exact options, chosen by a DP over the blocks (Rockmate)",
            shares_work=True,
        ),
        _entry("reforward", "reforward", "reforward", "Feng & Huang re-forwarding: best checkpoint set, each layer recomputed at most once"),
        _entry(
            "milp",
            "milp",
            "milp",
            "exact mixed-integer program for any DAG, HiGHS (--time-limit SECONDS)",
            options=("time_limit",),
            auto_max_layers=MILP_AUTO_MAX_LAYERS,
            auto_dags_only=True,
            warm_starts=True,
            requires=("scipy",),
        ),
        # Paging strategies (SPEC section 5): only with a storage (--device).
        _entry("page-all", "page_all", "page_all", "POET's paging-only baseline: page out what can be freed, page it in before its next read, no recomputation", emits_frees=True, needs_storage=True),
        _entry("dp-paging", "dp_paging", "dp_paging", "dp with paging: a checkpoint may be paged out instead of kept (chains)", chains_only=True, emits_frees=True, needs_storage=True, auto_max_layers=150,
               searches_objective=True),
        _entry(
            "page-records",
            "page_records",
            "dp_page_records",
            "dp-paging planned with more memory, then backward records (saved data) paged out to fit (chains)",
            chains_only=True,
            emits_frees=True,
            needs_storage=True,
            auto_max_layers=60,
            searches_objective=True,
        ),
        _entry(
            "milp-paging",
            "milp_paging",
            "milp_paging",
            "exact mixed-integer program with recomputation and paging for any DAG, HiGHS (--time-limit SECONDS)",
            options=("time_limit",),
            emits_frees=True,
            auto_max_layers=MILP_AUTO_MAX_LAYERS,
            warm_starts=True,
            needs_storage=True,
            searches_objective=True,
        ),
    ]
)


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


def check_strategy(strategy):
    """Raise :class:`OptionError` unless ``strategy`` is registered or ``auto``."""
    if strategy != "auto" and strategy not in STRATEGIES:
        raise OptionError(f"unknown strategy {strategy!r}; choose from {', '.join(strategy_names())}")


def applicable(model, options=None, *, storage=None, include_missing=False):
    """Names of the strategies that apply to ``model`` and run by default on it.

    The default set of ``auto``, ``compare`` and ``sweep``.  A strategy with
    ``auto_max_layers`` joins only on models up to that size, and one with
    ``auto_dags_only`` only on DAGs, unless ``options`` give it one of its own
    options (``time_limit`` for milp): the user asked for it.  A strategy
    whose optional module is missing (:func:`missing_requirements`) is left out.
    Paging strategies join only with a ``storage``.
    """
    options = options or {}
    model = solving_model(model)
    names = []
    for s in STRATEGIES.values():
        if s.chains_only and not model.is_chain:
            continue
        if s.needs_storage and storage is None:
            continue
        asked = any(options.get(key) is not None for key in s.options)
        if not asked and s.auto_max_layers is not None and len(model) > s.auto_max_layers:
            continue
        if not asked and s.auto_dags_only and model.is_chain:
            continue
        if not include_missing and any(extras.missing(module) for module in s.requires):
            continue  # its optional module is not installed (the CLI says so)
        names.append(s.name)
    return names


def solving_model(model, view=None):
    """The model strategies solve: ``model``, or its reduced model when small shared tensors are held.

    See :mod:`planner.holding`: a strategy is applicable (chains only, ...) to
    what it solves.
    """
    view = held_view(model) if view is None else view
    return model if view is None else view.model


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Option:
    """A strategy option, declared once: its range, its message and its help.

    The registry checks values against it (:func:`check_options`) and the
    command line makes its flag from it (``--segments``, ...).

    Attributes
    ----------
    name : str
        The keyword (``time_limit``); the flag is ``--time-limit``.
    kind : type
        ``int`` (a whole number) or ``float`` (seconds, > 0).
    low : int or float
        The least value; with ``low_open`` values must be above it.
    low_open : bool
    per_layer : bool
        At most the number of layers.
    metavar, help : str
        For the flag's help text.
    """

    name: str
    kind: type
    low: float
    help: str
    low_open: bool = False
    per_layer: bool = False
    metavar: str = None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    def valid(self, value, model):
        """Whether ``value`` is in range for ``model``."""
        if self.kind is int:
            if not _is_int(value):
                return False
        elif not (isinstance(value, (int, float)) and not isinstance(value, bool) and value < float("inf")):
            return False
        if value < self.low or (self.low_open and value == self.low):
            return False
        return not (self.per_layer and value > len(model))

    def wanted(self, model):
        """The range in words, for the error message."""
        if self.kind is not int:
            return "a positive number of seconds"
        if self.per_layer:
            return f"an integer from {self.low} to {len(model)} (the number of layers)"
        return f"an integer >= {self.low}"


OPTIONS = {
    option.name: option
    for option in (
        Option("segments", int, 1, "sequential: number of segments.", per_layer=True),
        Option("snapshots", int, 0, "revolve: layer outputs held as checkpoints at once (the model input is free)."),
        Option(
            "time_limit", float, 0, "milp: give up proving optimality after this many seconds and keep the best "
            "schedule found (default 60 with --strategy milp; auto, compare and sweep run milp on DAGs only, "
            "briefly: 0.5 s, in sweep 0.25 s per size, unless this is given).",
            low_open=True, metavar="SECONDS",
        ),
    )
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
    known = set(OPTIONS)
    single = STRATEGIES.get(strategies) if isinstance(strategies, str) else None
    for key, value in (options or {}).items():
        if value is None:
            continue
        if single is not None and key not in single.options:
            accepted = ", ".join(single.options) or "none"
            raise OptionError(f"strategy {single.name!r} does not take {key!r} (it takes: {accepted})")
        if key not in known:
            raise OptionError(f"unknown option {key!r}; strategies take: {', '.join(sorted(known))}")
        option = OPTIONS[key]
        if not option.valid(value, model):
            raise OptionError(f"{option.flag} must be {option.wanted(model)}, got {value!r}")


def missing_requirements(name):
    """The modules strategy ``name`` needs that are not installed (usually none)."""
    return [module for module in STRATEGIES[name].requires if extras.missing(module)]


def _is_replayable(ops):
    """True for a lazy op sequence that can be iterated again and knows its length."""
    return isinstance(ops, Sized) and isinstance(ops, Iterable) and not isinstance(ops, Iterator)


def check_storage(model, storage):
    """Raise :class:`~planner.errors.ModelError` if ``storage`` is given and ``model`` cannot page.

    Paging needs a model whose ``time_unit`` is a time (SPEC section 5).
    """
    if storage is not None:
        time_scale(model)


def _run(model, budget, strategy, options, extra=None, storage=None, view=False, objective=TIME):
    """Solve with one strategy, lower, replay, check the budget and the time budget.

    ``extra`` are keyword arguments the registry adds (warm starts, the
    default set's time limit); they are not options of the user's.  ``view``
    is :func:`planner.holding.held_view`'s answer for ``model`` (computed here
    when not given): the strategy then solves the reduced model and its ops
    are lifted back before the lowering and the replay, on ``model``.
    """
    if view is False:
        view = held_view(model)
    target = model if view is None else view.model
    extras.require(*strategy.requires, purpose=f"strategy {strategy.name!r}")
    if strategy.needs_storage and storage is None:
        raise NotApplicableError(
            f"strategy {strategy.name!r} pages layer outputs to a storage, and none is given "
            "(use --device)"
        )
    fn = strategy.load()
    if strategy.chains_only and not target.is_chain:
        raise NotApplicableError(
            f"strategy {strategy.name!r} applies to chains only, and {model.name!r} is a DAG; "
            "use store-all, chen-greedy, reforward, milp or auto"
        )
    started = time.perf_counter()
    kwargs = {k: v for k, v in options.items() if v is not None and k in strategy.options}
    kwargs = {**(extra or {}), **kwargs}
    if strategy.needs_storage:
        kwargs["storage"] = storage
    if strategy.searches_objective:
        kwargs.update(objective.solver_kwargs())
    if view is not None and "warm_starts" in kwargs:
        kwargs["warm_starts"] = [(name, view.reduce(ops)) for name, ops in kwargs["warm_starts"]]
    ops, params = fn(target, budget=budget, **kwargs)
    if view is not None:
        ops = view.lift(ops)
        params = dict(params, held=view.held_names)
    if not strategy.emits_frees:
        ops = tuple(insert_frees(model, ops))
    elif isinstance(ops, list) or not _is_replayable(ops):
        ops = tuple(ops)
    # A replayable sequence (e.g. revolve's lazy ops) is simulated here and
    # regenerated when the schedule is written: long schedules are never held.
    result = simulate(model, ops, storage=storage)
    seconds = time.perf_counter() - started
    if not result.valid:
        raise SolverBug(f"strategy {strategy.name!r} produced an invalid schedule: {result.error}")
    if budget is not None and result.peak_bytes > budget:
        raise InfeasibleError(
            f"strategy {strategy.name!r} needs {result.peak_bytes} bytes of activation memory, "
            f"more than the budget of {budget} bytes",
            least_bytes=result.peak_bytes,
        )
    objective.check(strategy.name, result)
    predicted, energy = result.predicted(), objective.energy(result)
    if energy is not None:
        predicted["energy_j"] = energy
    schedule = Schedule(
        model_name=model.name,
        fingerprint=model.fingerprint,
        strategy=strategy.name,
        params=dict(params),
        budget_bytes=budget,
        predicted=predicted,
        ops=ops,
        storage=storage if result.pages else None,
        power_w=None if energy is None else objective.power_w,
    )
    return Solution(strategy.name, dict(params), schedule, result, ops, seconds)


def _warm_inputs(outcomes):
    """What a ``warm_starts`` strategy gets from the outcomes before it."""
    starts = sorted(
        (o.solution for o in outcomes if o.feasible),
        key=lambda sol: (sol.result.compute, len(sol.ops)),
    )
    least = [o.least_bytes for o in outcomes if o.least_bytes is not None]
    return {
        "warm_starts": [(sol.strategy, sol.ops) for sol in starts],
        "others_least_bytes": min(least) if least else None,
    }


def _run_one(model, budget, name, options, extra, progress, storage=None, view=False, objective=TIME):
    strategy = STRATEGIES[name]
    if progress:
        progress(name, None)
    started = time.perf_counter()
    try:
        solution = _run(model, budget, strategy, options, extra, storage, view, objective)
        outcome = Outcome(name, solution=solution, solve_seconds=solution.solve_seconds)
    except (InfeasibleError, NotApplicableError, TooLargeError) as exc:
        outcome = Outcome(name, error=exc, solve_seconds=time.perf_counter() - started)
    if progress:
        progress(name, outcome)
    return outcome


def run_all(
    model, budget, *, strategies=None, options=None, progress=None, time_limit=AUTO_TIME_LIMIT, shared=None,
    storage=None, objective=TIME,
):
    """Run several strategies and return one :class:`Outcome` each.

    Strategies that take warm starts (milp) run after the others and get
    their schedules; the outcomes keep the order of ``strategies``.

    Parameters
    ----------
    model : planner.model.Model
    budget : int or None
    strategies : list of str or None, keyword-only
        Default: the default set, :func:`applicable`; its time-limited
        strategies (milp) then get ``time_limit`` unless ``options`` give one.
        Strategies named here get their own defaults (milp: 60 s).
    options : dict, keyword-only
        Strategy options; each strategy gets the ones it takes.
    progress : callable or None, keyword-only
        Called as ``progress(name, outcome_or_None)`` before and after each.
    time_limit : float, keyword-only
        Seconds for each time-limited strategy of the default set
        (:data:`AUTO_TIME_LIMIT`; ``sweep`` passes :data:`SWEEP_TIME_LIMIT`
        per memory size).
    shared : dict or None, keyword-only
        Kept by the caller across calls on the same model (``sweep``): the
        strategies that share work (dp's tables) keep it there, each in its
        own entry; ``shared["budgets"]``, if set, announces the budgets the
        caller will ask for.
    storage : planner.device.Storage or None, keyword-only
        Given to paging strategies, which join the default set with it.
    objective : planner.objective.Objective, keyword-only
        What the strategies that search it minimise, the time budget every
        schedule must meet, and the power figures of the schedules' joules.
    """
    options = options or {}
    check_options(model, strategies, options)
    check_storage(model, storage)
    default = strategies is None
    view = held_view(model)
    names = applicable(model, options, storage=storage) if default else list(strategies)
    done = {}
    later = [name for name in names if STRATEGIES[name].warm_starts]
    for name in [n for n in names if n not in later] + later:
        strategy = STRATEGIES[name]
        extra = {}
        if strategy.warm_starts:
            extra = _warm_inputs(done.values())
        if default and "time_limit" in strategy.options:
            extra["time_limit"] = time_limit  # the default set's short budget; --time-limit wins
        if strategy.shares_work and shared is not None:
            extra["shared"] = mine = shared.setdefault(name, {})
            mine["budgets"] = shared.get("budgets", ())
        done[name] = _run_one(model, budget, name, options, extra, progress, storage, view, objective)
    return [done[name] for name in names]


def _best(outcomes, objective=TIME):
    """The feasible solution with the least step time (compute and transfers; ties: fewer ops), or None.

    With the objective energy, the least joules (ties: the least step time, then fewer ops).

    When an exact search among ``outcomes`` stopped before proving its answer
    (``proven_optimal: false``) and the winner does not say, the winner's
    params get ``"proven_optimal": false`` too: a better schedule may exist.
    """
    feasible = [o.solution for o in outcomes if o.feasible]
    if not feasible:
        return None
    best = min(feasible, key=lambda s: (objective.key(s.result), s.result.step_time, len(s.ops)))
    unproven = any(s.params.get("proven_optimal") is False for s in feasible)
    if unproven and "proven_optimal" not in best.params:
        params = dict(best.params, proven_optimal=False)
        schedule = dataclasses.replace(best.schedule, params=params)
        best = dataclasses.replace(best, params=params, schedule=schedule)
    return best


def solve(model, budget, strategy="auto", *, progress=None, storage=None, objective=TIME, **options):
    """Solve ``model`` for an activation ``budget`` with one strategy or ``auto``.

    Parameters
    ----------
    model : planner.model.Model
    budget : int or None
        Activation budget in bytes (``--memory`` minus the fixed memory); None
        means unlimited.
    strategy : str
        A name from :data:`STRATEGIES` or ``"auto"``: the default set
        (:func:`run_all`), the feasible schedule with the least compute, ties
        to fewer ops.  A strategy that takes warm starts (milp) gets the
        schedules of the other applicable strategies, solved first.
    storage : planner.device.Storage or None, keyword-only
        The second storage paging strategies page to (``--device``); ``auto``
        then includes them.
    objective : planner.objective.Objective, keyword-only
        What ``auto`` ranks by and the paging strategies minimise (default:
        the step's time), and an optional time budget (a schedule above it
        is infeasible).
    **options
        Strategy options (``segments``, ``snapshots``, ``time_limit``, ...).

    Returns
    -------
    Solution
        Its ``solve_seconds`` is the whole call (every strategy ``auto`` ran,
        the warm starts of milp).

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
    ModelError
        A ``storage`` is given and the model's ``time_unit`` is not a time.
    SolverBug
        The simulator rejected a solver's schedule (never expected).
    """
    started = time.perf_counter()
    check_strategy(strategy)
    check_options(model, strategy, options)
    check_storage(model, storage)
    if strategy == "auto":
        outcomes = run_all(model, budget, options=options, progress=progress, storage=storage, objective=objective)
        best = _best(outcomes, objective)
        if best is not None:
            return dataclasses.replace(best, solve_seconds=time.perf_counter() - started)
        known = [o.least_bytes for o in outcomes if o.least_bytes is not None]
        least = min(known) if known else None
        raise InfeasibleError(
            f"no strategy fits {budget} bytes of activation memory"
            + ("" if objective.time_budget_s is None else f" within the time budget of {objective.time_budget_s:g} s")
            + (f"; the least that works is {least} bytes" if least is not None else ""),
            least_bytes=least,
        )
    chosen = STRATEGIES[strategy]
    extra = None
    if chosen.warm_starts:
        others = [
            name for name in applicable(model, storage=storage)
            if name != strategy and not STRATEGIES[name].warm_starts
        ]
        extra = _warm_inputs(run_all(model, budget, strategies=others, storage=storage, objective=objective))
    solution = _run(model, budget, chosen, options, extra, storage, objective=objective)
    return dataclasses.replace(solution, solve_seconds=time.perf_counter() - started)


def best(outcomes, objective=TIME):
    """The registry's choice among ``outcomes`` (what ``solve --strategy auto`` returns), or None.

    The public name of :func:`_best`, for ``edgeplan compare``'s best row.
    """
    return _best(outcomes, objective)
