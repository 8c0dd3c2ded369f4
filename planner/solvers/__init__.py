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

import importlib
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass

from planner.device import time_scale
from planner.errors import EdgeplanError, InfeasibleError, NotApplicableError
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
    "check_storage",
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
    needs_storage : bool
        A paging strategy (SPEC section 5): it runs only with a storage, is
        called with ``storage=``, and joins the default set only when one is
        given.
    """

    name: str
    module: str
    function: str
    summary: str
    chains_only: bool = False
    options: tuple = ()
    emits_frees: bool = False
    auto_max_layers: int = None
    needs_storage: bool = False

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
        ),
        # Paging strategies (SPEC section 5): only with a storage (--device).
        _entry("page-all", "page_all", "page_all", "POET's paging-only baseline: page out what can be freed, page it in before its next read, no recomputation", needs_storage=True),
        _entry("dp-paging", "dp_paging", "dp_paging", "dp with paging: a checkpoint may be paged out instead of kept (chains)", chains_only=True, emits_frees=True, needs_storage=True),
        _entry(
            "milp-paging",
            "milp_paging",
            "milp_paging",
            "exact mixed-integer program with recomputation and paging for any DAG, HiGHS (--time-limit SECONDS)",
            options=("time_limit",),
            emits_frees=True,
            auto_max_layers=MILP_AUTO_MAX_LAYERS,
            needs_storage=True,
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


def applicable(model, options=None, *, storage=None):
    """Names of the strategies that apply to ``model`` and run by default on it.

    A strategy with ``auto_max_layers`` joins only on models up to that size,
    or when ``options`` give it one of its own options (``time_limit`` for
    milp): the user asked for it.  Paging strategies join only with a
    ``storage``.
    """
    options = options or {}
    names = []
    for s in STRATEGIES.values():
        if s.chains_only and not model.is_chain:
            continue
        if s.needs_storage and storage is None:
            continue
        asked = any(options.get(key) is not None for key in s.options)
        if s.auto_max_layers is not None and len(model) > s.auto_max_layers and not asked:
            continue
        names.append(s.name)
    return names


def _validate_options(strategy, options):
    for key, value in options.items():
        if value is not None and key not in strategy.options:
            accepted = ", ".join(strategy.options) or "none"
            raise ValueError(f"strategy {strategy.name!r} does not take {key!r} (it takes: {accepted})")


def _is_replayable(ops):
    """True for a lazy op sequence that can be iterated again and knows its length."""
    return isinstance(ops, Sized) and isinstance(ops, Iterable) and not isinstance(ops, Iterator)


def check_storage(model, storage):
    """Raise :class:`~planner.errors.ModelError` if ``storage`` is given and ``model`` cannot page.

    Paging needs a model whose ``time_unit`` is a time (SPEC section 5).
    """
    if storage is not None:
        time_scale(model)


def _run(model, budget, strategy, options, storage=None):
    if strategy.needs_storage and storage is None:
        raise NotApplicableError(
            f"strategy {strategy.name!r} pages layer outputs to a storage, and none is given "
            "(use --device)"
        )
    fn = strategy.load()
    if strategy.chains_only and not model.is_chain:
        raise NotApplicableError(
            f"strategy {strategy.name!r} applies to chains only, and {model.name!r} is a DAG; "
            "use store-all, chen-greedy, reforward, milp or auto"
        )
    started = time.perf_counter()
    kwargs = {k: v for k, v in options.items() if v is not None and k in strategy.options}
    if strategy.needs_storage:
        kwargs["storage"] = storage
    ops, params = fn(model, budget=budget, **kwargs)
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
    schedule = Schedule(
        model_name=model.name,
        fingerprint=model.fingerprint,
        strategy=strategy.name,
        params=dict(params),
        budget_bytes=budget,
        predicted=result.predicted(),
        ops=ops,
        storage=storage if result.pages else None,
    )
    return Solution(strategy.name, dict(params), schedule, result, ops, seconds)


def run_all(model, budget, *, strategies=None, options=None, progress=None, storage=None):
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
    storage : planner.device.Storage or None, keyword-only
        Given to paging strategies, which join the default set with it.
    """
    options = options or {}
    check_storage(model, storage)
    names = applicable(model, options, storage=storage) if strategies is None else list(strategies)
    outcomes = []
    for name in names:
        strategy = STRATEGIES[name]
        if progress:
            progress(name, None)
        started = time.perf_counter()
        try:
            solution = _run(model, budget, strategy, options, storage)
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
    return min(feasible, key=lambda s: (s.result.compute + s.result.transfer, len(s.ops)))


def solve(model, budget, strategy="auto", *, progress=None, storage=None, **options):
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
    storage : planner.device.Storage or None, keyword-only
        The second storage paging strategies page to (``--device``); ``auto``
        then includes them.
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
        The strategy does not apply to this model (a paging strategy without
        a ``storage``, a chain-only one on a DAG).
    ModelError
        A ``storage`` is given and the model's ``time_unit`` is not a time.
    ValueError
        Unknown strategy or an option the strategy does not take.
    SolverBug
        The simulator rejected a solver's schedule (never expected).
    """
    check_storage(model, storage)
    if strategy == "auto":
        outcomes = run_all(model, budget, options=options, progress=progress, storage=storage)
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
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(strategy_names())}")
    chosen = STRATEGIES[strategy]
    _validate_options(chosen, options)
    return _run(model, budget, chosen, options, storage)
