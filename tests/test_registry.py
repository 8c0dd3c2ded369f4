"""The registry's default policy (planner.solvers): which strategies auto runs where, milp's
warm starts and time limits, proven_optimal, and the time solve reports."""

import ast
import pathlib

import pytest

from planner import solvers
from planner.errors import InfeasibleError
from planner.schedule import OpKind
from planner.solvers import milp as milp_module
from planner.solvers.milp import DEFAULT_TIME_LIMIT
from planner.synthetic import random_chain, random_dag
from tests.reference import replay_solution

pytest.importorskip("scipy", reason="the milp strategy needs scipy")


def _store_all_peak(model):
    return solvers.solve(model, None, "store-all").result.peak_bytes


@pytest.fixture
def milp_calls(monkeypatch):
    """Record the keyword arguments of every milp call the registry makes."""
    calls = []
    real = milp_module.milp

    def spy(model, **kwargs):
        calls.append(kwargs)
        return real(model, **kwargs)

    monkeypatch.setattr(milp_module, "milp", spy)
    return calls


def _reforward_least(model):
    """The least budget at which reforward finds a schedule."""
    with pytest.raises(InfeasibleError) as info:
        solvers.solve(model, 0, "reforward")
    return info.value.least_bytes


def _ran(model, budget, strategy="auto", **options):
    """Names of the strategies a solve ran, in order, and its solution (or None)."""
    names = []

    def hook(name, outcome):
        if outcome is None:
            names.append(name)

    try:
        solution = solvers.solve(model, budget, strategy, progress=hook, **options)
    except InfeasibleError:
        solution = None
    return names, solution


# ---- which strategies the default set runs ---------------------------------------------------


def test_auto_leaves_milp_out_of_chains_and_runs_it_on_small_dags():
    chain, dag = random_chain(12, 1), random_dag(12, 1)
    assert "milp" not in solvers.applicable(chain)
    assert "dp" in solvers.applicable(chain)
    assert "milp" in solvers.applicable(dag)
    names, _ = _ran(chain, int(_store_all_peak(chain) * 0.7))
    assert "milp" not in names and "dp" in names
    names, _ = _ran(dag, int(_store_all_peak(dag) * 0.7))
    assert names[-1] == "milp"  # after the others, whose schedules it starts from


def test_a_time_limit_puts_milp_back_everywhere(milp_calls):
    chain = random_chain(10, 2)
    assert "milp" in solvers.applicable(chain, {"time_limit": 3})
    names, _ = _ran(chain, int(_store_all_peak(chain) * 0.7), time_limit=3)
    assert "milp" in names
    assert milp_calls[-1]["time_limit"] == 3
    big = random_dag(solvers.MILP_AUTO_MAX_LAYERS + 1, 0)
    assert "milp" not in solvers.applicable(big)
    assert "milp" in solvers.applicable(big, {"time_limit": 3})


def test_default_set_gives_milp_the_short_limit_and_named_milp_the_long_one(milp_calls):
    dag = random_dag(10, 4)
    budget = int(_store_all_peak(dag) * 0.7)
    solvers.run_all(dag, budget)
    assert milp_calls[-1]["time_limit"] == solvers.AUTO_TIME_LIMIT
    solvers.run_all(dag, budget, time_limit=solvers.SWEEP_TIME_LIMIT)
    assert milp_calls[-1]["time_limit"] == solvers.SWEEP_TIME_LIMIT
    solvers.run_all(dag, budget, strategies=["milp"])  # named: the exact search
    assert "time_limit" not in milp_calls[-1]
    solution = solvers.solve(dag, budget, "milp")
    assert solution.params["time_limit"] == DEFAULT_TIME_LIMIT
    assert solvers.SWEEP_TIME_LIMIT <= solvers.AUTO_TIME_LIMIT < DEFAULT_TIME_LIMIT


# ---- warm starts: handed in, used, never beaten -----------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_milp_gets_the_others_schedules_and_is_never_worse(milp_calls, seed):
    dag = random_dag(14, seed)
    budget = int(_store_all_peak(dag) * 0.65)
    outcomes = {o.strategy: o for o in solvers.run_all(dag, budget)}
    others = {name: o for name, o in outcomes.items() if name != "milp"}
    handed = milp_calls[-1]["warm_starts"]
    feasible = {name for name, o in others.items() if o.feasible}
    assert {name for name, _ in handed} == feasible
    for name, ops in handed:  # exactly the schedules the others returned
        assert tuple(ops) == others[name].solution.ops
    computes = [o.solution.result.compute for o in others.values() if o.feasible]
    least = [o.least_bytes for o in others.values() if o.least_bytes is not None]
    assert milp_calls[-1]["others_least_bytes"] == (min(least) if least else None)
    milp = outcomes["milp"]
    if computes:
        assert milp.feasible
        assert milp.solution.result.compute <= min(computes) + 1e-9
        assert milp.solution.result.peak_bytes <= budget
        assert replay_solution(dag, milp.solution)["valid"]


def test_named_milp_computes_its_warm_starts_in_the_registry(milp_calls):
    dag = random_dag(12, 5)
    budget = _reforward_least(dag)
    solution = solvers.solve(dag, budget, "milp", time_limit=10)
    handed = {name for name, _ in milp_calls[-1]["warm_starts"]}
    assert handed and "milp" not in handed
    assert handed <= set(solvers.applicable(dag))
    assert solution.params["start"] in handed | {None}


def test_a_warm_start_is_returned_unproven_when_time_runs_out():
    dag = random_dag(30, 6)
    budget = _reforward_least(dag)
    start = solvers.solve(dag, budget, "reforward")
    ops, params = milp_module.milp(dag, budget=budget, time_limit=0.01, warm_starts=[("mine", start.ops)])
    assert params["proven_optimal"] is False
    assert params["start"] == "mine"
    assert ops == [op for op in start.ops if op.kind is not OpKind.FREE]


def test_warm_starts_that_do_not_fit_are_ignored():
    dag = random_dag(8, 7)
    peak = _store_all_peak(dag)
    plain = solvers.solve(dag, None, "store-all")
    budget = int(peak * 0.8)
    ops, params = milp_module.milp(dag, budget=budget, time_limit=20, warm_starts=[("too-big", plain.ops)])
    assert params["start"] != "too-big"
    solution = solvers.solve(dag, budget, "milp", time_limit=20)
    assert solution.result.peak_bytes <= budget


def test_the_milp_module_does_not_import_the_registry():
    source = open(milp_module.__file__, encoding="utf-8").read()
    assert "from planner import solvers" not in source
    assert "import planner.solvers" not in source


def _imports_the_registry(path):
    """The lines of ``path`` that import planner.solvers itself (the registry), lazily or not."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [node.lineno for alias in node.names if alias.name == "planner.solvers"]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "planner.solvers" or (node.level == 1 and not node.module):
                found.append(node.lineno)
            elif node.module == "planner" and any(alias.name == "solvers" for alias in node.names):
                found.append(node.lineno)
    return found


def test_no_solver_imports_the_registry():
    modules = sorted(pathlib.Path(milp_module.__file__).parent.glob("*.py"))
    solvers_only = [path for path in modules if path.name != "__init__.py"]
    assert {path.stem for path in solvers_only} >= {"milp", "milp_paging", "dp", "chen"}
    found = {path.name: _imports_the_registry(path) for path in solvers_only}
    assert {name: lines for name, lines in found.items() if lines} == {}


def test_the_registry_check_catches_a_lazy_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from planner import solvers\n    import planner.solvers\n")
    assert _imports_the_registry(probe) == [2, 3]


# ---- proven_optimal and the time solve reports ----------------------------------------------


def test_auto_says_when_its_exact_search_stopped_early():
    dag = random_dag(30, 6)
    budget = _reforward_least(dag)
    outcomes = {o.strategy: o for o in solvers.run_all(dag, budget, options={"time_limit": 0.01})}
    assert outcomes["milp"].solution.params["proven_optimal"] is False
    best = solvers.solve(dag, budget, time_limit=0.01)
    assert best.params["proven_optimal"] is False
    assert best.schedule.params["proven_optimal"] is False
    assert best.schedule.header()["params"]["proven_optimal"] is False


def test_auto_adds_nothing_when_no_exact_search_ran():
    chain = random_chain(12, 3)
    best = solvers.solve(chain, int(_store_all_peak(chain) * 0.7))
    assert "proven_optimal" not in best.params


def test_solve_reports_the_time_of_the_whole_call():
    dag = random_dag(14, 9)
    budget = int(_store_all_peak(dag) * 0.85)  # above the least peak (80%), below store-all
    seen = []

    def hook(name, outcome):
        if outcome is not None:
            seen.append(outcome)

    best = solvers.solve(dag, budget, progress=hook)
    assert len(seen) == len(solvers.applicable(dag))
    assert best.solve_seconds >= sum(o.solve_seconds for o in seen)


# ---- applicability: decided by the registry, marked on the solvers ------------------------------


@pytest.mark.parametrize("name", list(solvers.STRATEGIES))
def test_chains_only_is_declared_once_and_the_solver_carries_the_same_mark(name):
    strategy = solvers.STRATEGIES[name]
    assert getattr(strategy.load(), "chains_only", False) is strategy.chains_only


def test_a_direct_call_of_a_chains_only_solver_refuses_a_dag_before_it_runs():
    from planner.errors import NotApplicableError
    from planner.model import chains_only

    calls = []

    @chains_only("probe")
    def probe(model, *, budget=None):
        calls.append(model)
        return [], {}

    with pytest.raises(NotApplicableError, match="probe applies to chains only"):
        probe(random_dag(8, 7), budget=None)
    assert calls == []
    chain = random_chain(4, 2)
    assert probe(chain) == ([], {}) and calls == [chain]
    assert probe.__name__ == "probe" and probe.chains_only is True
