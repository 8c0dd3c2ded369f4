"""``edgeplan compare``: the table, --json, --strategies, exit codes; and the simulate CI gate."""

import json

import pytest

from planner import solvers
from planner.budget import split_memory
from planner.model import load_model
from planner.synthetic import random_dag
from tests.conftest import EXAMPLES, RESNET18, run
from tests.reference import replay_solution

# milp, when registered, gets a short time limit so the test stays fast.
FAST = ("--time-limit", "5")


# VGG-16 with batch norm as a 52-layer chain, profiled on a CPU by `edgeplan profile`
# (examples/vgg16_bn.py); 30 MB leaves activations about 60% of what store-all needs.
CHAIN52 = EXAMPLES / "vgg16_bn.json"
MEMORY52 = "30MB"
MEMORY52_BYTES = 30_000_000


@pytest.fixture(scope="module")
def chain52():
    """A real 52-layer chain and its model file."""
    return load_model(CHAIN52), CHAIN52


@pytest.fixture(scope="module")
def chain52_json(chain52):
    _, path = chain52
    r = run("compare", path, "--memory", MEMORY52, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_compare_table_names_every_applicable_strategy(chain52):
    model, path = chain52
    r = run("compare", path, "--memory", MEMORY52)
    assert r.exit_code == 0, r.output
    text = r.stdout
    budget = split_memory(model, MEMORY52_BYTES)
    # the header: model, resolved budget, fixed memory, store-all peak
    assert "vgg16_bn" in text and "52 layers, chain" in text
    assert "30,000,000 bytes" in text
    assert f"fixed {budget.fixed_bytes:,} bytes" in text and "params x2, sgd" in text
    store_all = solvers.solve(model, None, "store-all").result.peak_bytes
    assert f"store-all (no recomputation) peak {store_all:,} bytes" in text
    lines = text.splitlines()
    names = solvers.applicable(model)
    assert len(names) >= 2
    for name in names:
        rows = [line for line in lines if line.split()[:2] in (["*", name], [name, "yes"], [name, "no"])]
        assert len(rows) == 1, (name, text)
    # the columns, and not squeezed: every row shows its peak in bytes in full
    header = next(line for line in lines if "strategy" in line and "overhead" in line)
    for col in ("fits", "peak", "peak bytes", "forwards", "solve time"):
        assert col in header
    assert "…" not in text
    best = [line for line in lines if line.startswith(" * ")]
    assert len(best) == 1 and " yes " in best[0]
    assert "* best:" in text


def test_compare_json_rows(chain52, chain52_json):
    model, _ = chain52
    rows = chain52_json
    budget = split_memory(model, MEMORY52_BYTES)
    assert {row["strategy"] for row in rows} == set(solvers.applicable(model))
    for row in rows:
        assert {"strategy", "feasible", "peak_bytes", "compute", "overhead", "solve_seconds"} <= set(row)
        assert row["solve_seconds"] >= 0
    feasible = [row for row in rows if row["feasible"]]
    assert feasible, "some strategy must fit 4.5 MB"
    # feasible first, by compute; exactly one best, the first
    assert rows[: len(feasible)] == feasible
    assert [row["compute"] for row in feasible] == sorted(row["compute"] for row in feasible)
    assert [row["best"] for row in rows] == [True] + [False] * (len(rows) - 1)
    for row in feasible:
        assert row["peak_bytes"] <= budget.activation_bytes
        assert row["overhead"] == pytest.approx(row["compute"] / model.baseline_compute - 1)
    for row in rows[len(feasible):]:
        assert row["peak_bytes"] is None and row["overhead"] is None
        if row["least_memory_bytes"] is not None:
            assert row["least_memory_bytes"] > budget.memory_bytes
            assert row["least_memory_bytes"] == row["least_activation_bytes"] + budget.fixed_bytes


def test_compare_rows_agree_with_simulator_and_reference(chain52, chain52_json):
    model, _ = chain52
    budget = split_memory(model, MEMORY52_BYTES)
    for row in chain52_json:
        if not row["feasible"] or row["strategy"] == "milp":
            continue  # milp under a time limit need not repeat itself exactly
        solution = solvers.solve(model, budget.activation_bytes, row["strategy"])
        assert solution.result.peak_bytes == row["peak_bytes"]
        assert solution.result.compute == pytest.approx(row["compute"])
        ref = replay_solution(model, solution)
        assert ref["valid"] and ref["peak_bytes"] == row["peak_bytes"]


def test_compare_strategies_selects_rows():
    r = run("compare", RESNET18, "--memory", "256MB", "--json", "--strategies", "sequential, store-all")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["strategy"] for row in rows] == ["sequential", "store-all"]
    assert rows[0]["feasible"] and not rows[1]["feasible"]
    assert rows[1]["least_memory_bytes"] == 272_582_464


@pytest.mark.parametrize(
    "value, message",
    [("nope", "unknown strategy 'nope'"), ("store-all,auto", "unknown strategy 'auto'"), (" , ", "at least one")],
)
def test_compare_strategies_validated(value, message):
    r = run("compare", RESNET18, "--memory", "256MB", "--strategies", value)
    assert r.exit_code == 2
    assert message in r.stderr and "Traceback" not in r.output
    assert r.stdout == ""


def test_compare_nothing_fits_exits_1_with_least_memory():
    r = run("compare", RESNET18, "--memory", "100MB", "--strategies", "store-all,sequential")
    assert r.exit_code == 1
    assert "no strategy fits" in r.stdout
    # sequential needs the least: 81,887,744 activation bytes + 93,516,096 fixed
    model = load_model(RESNET18)
    seq = solvers.run_all(model, 0, strategies=["sequential"])[0]
    assert f"{seq.least_bytes + 2 * model.params_bytes:,} bytes" in r.stdout
    r = run("compare", RESNET18, "--memory", "100MB", "--json", "--strategies", "store-all")
    assert r.exit_code == 1
    assert json.loads(r.stdout)[0]["feasible"] is False


def test_compare_dag_lists_only_applicable_and_explains_the_rest(tmp_path):
    model = random_dag(10, 3)
    path = tmp_path / "dag.json"
    path.write_text(json.dumps(model.to_dict()))
    r = run("compare", path, "--memory", "1GB", "--json", *FAST)
    assert r.exit_code == 0, r.output
    names = {row["strategy"] for row in json.loads(r.stdout)}
    assert names == set(solvers.applicable(model))
    assert "sequential" not in names
    r = run("compare", path, "--memory", "1GB", "--strategies", "sequential,store-all")
    assert r.exit_code == 0
    line = next(line for line in r.stdout.splitlines() if "sequential" in line)
    assert " no " in line and "chains only" in line


def test_compare_optimizer_changes_fixed_memory():
    r = run("compare", RESNET18, "--memory", "400MB", "--optimizer", "adam", "--strategies", "store-all")
    assert r.exit_code == 0
    assert f"fixed {4 * 46_758_048:,} bytes" in r.stdout and "params x4, adam" in r.stdout


# --- simulate as a CI gate ---------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_schedule(tmp_path_factory):
    path = tmp_path_factory.mktemp("sched") / "schedule.json"
    r = run("solve", RESNET18, "--memory", "256MB", "-o", path)
    assert r.exit_code == 0, r.output
    return path, json.loads(path.read_text())


def test_simulate_gate_exit_codes(resnet_schedule):
    path, doc = resnet_schedule
    fixed = 2 * 46_758_048
    peak = doc["predicted"]["peak_bytes"]
    assert run("simulate", RESNET18, path, "--memory", "256MB").exit_code == 0
    assert run("simulate", RESNET18, path, "--memory", doc["budget_bytes"] + fixed).exit_code == 0
    assert run("simulate", RESNET18, path, "--memory", peak + fixed).exit_code == 0
    below = run("simulate", RESNET18, path, "--memory", peak + fixed - 1)
    assert below.exit_code == 1
    assert "does not fit" in below.stderr
    warn = run("simulate", RESNET18, path, "--memory", peak + fixed - 1, "--exit-zero", "--json")
    assert warn.exit_code == 0
    result = json.loads(warn.stdout)
    assert result["fits"] is False and result["problems"]


def test_simulate_gate_other_model_and_invalid(resnet_schedule, tmp_path):
    path, doc = resnet_schedule
    other = dict(doc, model={"name": "resnet18", "fingerprint": "sha256:" + "0" * 64})
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    assert run("simulate", RESNET18, other_path).exit_code == 1
    assert run("simulate", RESNET18, other_path, "--exit-zero").exit_code == 0
    broken = dict(doc, ops=doc["ops"][:-1])
    broken_path = tmp_path / "broken.json"
    broken_path.write_text(json.dumps(broken))
    r = run("simulate", RESNET18, broken_path, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["valid"] is False
    assert run("simulate", RESNET18, broken_path, "--exit-zero").exit_code == 0
    # bad input is still bad input
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    assert run("simulate", RESNET18, garbage, "--exit-zero").exit_code == 2


def test_milp_gap_shown_by_solve_and_compare(tmp_path):
    from rich.console import Console

    from planner.render import compare_table

    model = random_dag(8, 3)
    path = tmp_path / "dag.json"
    path.write_text(json.dumps(model.to_dict()))
    activations = solvers.solve(model, None, "store-all").result.peak_bytes * 3 // 5
    memory = str(activations + model.params_bytes * 2)  # sgd: parameters and their gradients
    r = run("solve", path, "--memory", memory, "--strategy", "milp", *FAST)
    assert r.exit_code == 0, r.output
    assert '"gap": 0.0' in r.output
    r = run("compare", path, "--memory", memory, "--strategies", "milp,store-all", "--json", *FAST)
    rows = json.loads(r.stdout)
    assert next(row for row in rows if row["strategy"] == "milp")["params"]["gap"] == 0.0
    console = Console(width=200, record=True)
    console.print(compare_table(rows, width=200))
    line = next(line for line in console.export_text().splitlines() if "milp" in line)
    assert "gap=0.0%" in line  # first in the notes column, before it is cut short
