"""One meaning per exit code, through every command (issue 10).

* A missing optional extra is exit 2 naming the extra when its strategy or
  command is asked for by name; ``auto``, ``compare`` and ``sweep`` skip the
  strategy with a note.  Modules are hidden in a fresh interpreter
  (``sys.modules[name] = None``), as on a base install.
* Strategy options are checked once, by the registry, before any solver runs:
  an unknown name or a value out of range is an ``OptionError``, exit 2 with
  the same message in ``solve``, ``compare`` and ``sweep``.
* ``--json`` writes exactly one JSON document on stdout, whatever the exit code.
* A schedule made for another model is exit 1, naming both models.
"""

import json

import pytest

from planner import solvers
from planner.budget import split_memory
from planner.errors import MissingExtraError, ModelMismatchError, OptionError
from planner.extras import missing, require
from planner.model import load_model
from planner.schedule import load_schedule
from planner.sweep import memory_range
from planner.synthetic import random_dag, uniform_chain
from tests.conftest import EXAMPLES, RESNET18, run, run_edgeplan

MOBILENET = EXAMPLES / "mobilenet_v2.json"
TINY = f"{EXAMPLES / 'tiny_cnn.py'}:tiny_cnn"


def hide(*modules):
    """A prelude for :func:`run_edgeplan` that makes ``modules`` unimportable."""
    return "".join(f"sys.modules[{m!r}] = None; " for m in modules)


def error_lines(stderr):
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    return [line for line in text.splitlines() if line.startswith("error:")]


def one_json(stdout):
    """The single JSON document on stdout (json.loads refuses anything after it)."""
    return json.loads(stdout.decode() if isinstance(stdout, bytes) else stdout)


# ------------------------------------------------------------ missing extras


def test_missing_reports_hidden_and_absent_modules(monkeypatch):
    assert not missing("click")
    assert missing("edgeplan_no_such_module")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert missing("matplotlib")
    with pytest.raises(MissingExtraError, match=r"--plot needs matplotlib: pip install 'edgeplan\[plot\]'"):
        require("matplotlib", purpose="--plot")


def test_registry_skips_a_strategy_whose_module_is_missing(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)
    model = random_dag(8, seed=3)  # auto runs milp on DAGs
    with pytest.raises(MissingExtraError, match="strategy 'milp' needs scipy"):
        solvers.solve(model, None, "milp")
    assert solvers.missing_requirements("milp") == ["scipy"]
    outcomes = {o.strategy: o for o in solvers.run_all(model, None)}
    assert "milp" not in outcomes and "milp" in solvers.applicable(model, include_missing=True)
    assert all(o.feasible for o in outcomes.values())
    assert solvers.solve(model, None, "auto").strategy != "milp"


def test_named_strategy_without_its_module_exits_2(tmp_path):
    out = tmp_path / "s.json"
    proc = run_edgeplan("solve", RESNET18, "--memory", "256MB", "-s", "milp", "-o", out, prelude=hide("scipy"))
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "strategy 'milp' needs scipy" in line and "Traceback" not in proc.stderr.decode()
    assert not out.exists()
    proc = run_edgeplan("solve", RESNET18, "--memory", "256MB", "-s", "milp", "--json", prelude=hide("scipy"))
    assert proc.returncode == 2 and "needs scipy" in one_json(proc.stdout)["error"]
    proc = run_edgeplan("compare", RESNET18, "--memory", "256MB", "--strategies", "dp,milp", prelude=hide("scipy"))
    assert proc.returncode == 2 and "needs scipy" in error_lines(proc.stderr)[0]


@pytest.mark.parametrize(
    "args",
    [
        ("solve", "DAG", "--memory", "1GB", "--json"),
        ("compare", "DAG", "--memory", "1GB", "--json"),
        ("sweep", "DAG", "--sizes", "2", "--json"),
    ],
    ids=lambda a: a[0],
)
def test_default_set_skips_a_strategy_without_its_module_with_a_note(args, tmp_path):
    # The default set runs milp on DAGs (on chains dp is exact), so a DAG shows the skip.
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps(random_dag(8, seed=3, name="dag").to_dict()))
    args = tuple(str(dag) if a == "DAG" else a for a in args)
    proc = run_edgeplan(*args, prelude=hide("scipy"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    stderr = proc.stderr.decode()
    assert "note: skipped strategy 'milp' needs scipy" in stderr and not error_lines(stderr)
    doc = one_json(proc.stdout)
    if args[0] == "solve":
        assert doc["strategy"] != "milp" and doc["predicted"]["peak_bytes"] <= doc["budget_bytes"]
    else:
        assert doc and "milp" not in {row["strategy"] for row in doc}


@pytest.mark.parametrize(
    "args, hidden, extra",
    [
        (("sweep", RESNET18, "--sizes", "2", "--plot", "{tmp}/curve.png"), "matplotlib", "edgeplan[plot]"),
        (("profile", TINY, "--input", "2,3,32,32", "-o", "{tmp}/model.json"), "torch", "edgeplan[torch]"),
        (("verify", TINY, "--input", "2,3,32,32", "--schedule", "{tmp}/s.json"), "torch", "edgeplan[torch]"),
        (("import", "{tmp}/model.onnx", "-o", "{tmp}/model.json"), "onnx", "edgeplan[onnx]"),
    ],
    ids=["plot", "profile", "verify", "import-onnx"],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_command_without_its_extra_exits_2_naming_it(tmp_path, args, hidden, extra, as_json):
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args] + (["--json"] if as_json else [])
    proc = run_edgeplan(*args, prelude=hide(hidden))
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert f"needs {hidden}" in line and extra in line
    if as_json:
        assert one_json(proc.stdout) == {"error": line.removeprefix("error: ")}
    else:
        assert proc.stdout == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------- options


SEGMENTS_50 = "--segments must be an integer from 1 to 10 (the number of layers), got 50"


@pytest.mark.parametrize(
    "args",
    [
        ("solve", RESNET18, "--memory", "256MB"),
        ("solve", RESNET18, "--memory", "256MB", "--strategy", "sequential"),
        ("compare", RESNET18, "--memory", "256MB"),
        ("compare", RESNET18, "--memory", "256MB", "--strategies", "dp,sequential"),
        ("sweep", RESNET18, "--sizes", "2"),
    ],
    ids=["solve-auto", "solve-sequential", "compare", "compare-strategies", "sweep"],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_out_of_range_segments_is_exit_2_with_one_message_everywhere(args, as_json):
    r = run(*args, "--segments", "50", *(["--json"] if as_json else []))
    assert r.exit_code == 2, r.output
    (line,) = error_lines(r.stderr)
    assert line == f"error: {SEGMENTS_50}"
    if as_json:
        assert one_json(r.stdout) == {"error": SEGMENTS_50}
    else:
        assert "strategy" not in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("solve", RESNET18, "--memory", "256MB"),
        ("compare", RESNET18, "--memory", "256MB"),
        ("sweep", RESNET18, "--sizes", "2"),
    ],
    ids=["solve", "compare", "sweep"],
)
@pytest.mark.parametrize("option", [("--snapshots", "-1"), ("--time-limit", "0"), ("--time-limit", "-3")])
def test_click_ranges_are_exit_2_with_json(args, option):
    r = run(*args, *option, "--json")
    assert r.exit_code == 2, r.output
    assert option[0] in one_json(r.stdout)["error"]


def test_the_registry_checks_options_before_any_solver_runs(monkeypatch):
    model = uniform_chain(10)

    def no_solver(*args, **kwargs):
        raise AssertionError("a solver ran before the options were checked")

    monkeypatch.setattr(solvers, "_run", no_solver)
    cases = [
        (lambda: solvers.solve(model, None, "auto", segmnts=3), "unknown option 'segmnts'"),
        (lambda: solvers.solve(model, None, "auto", segments=11), "from 1 to 10"),
        (lambda: solvers.solve(model, None, "sequential", segments=0), "from 1 to 10"),
        (lambda: solvers.solve(model, None, "auto", snapshots=-1), "integer >= 0"),
        (lambda: solvers.solve(model, None, "auto", time_limit=0), "positive number of seconds"),
        (lambda: solvers.solve(model, None, "milp", time_limit=float("nan")), "positive number of seconds"),
        (lambda: solvers.solve(model, None, "dp", segments=2), "'dp' does not take 'segments'"),
        (lambda: solvers.solve(model, None, "nope"), "unknown strategy 'nope'"),
        (lambda: solvers.run_all(model, None, options={"segmnts": 3}), "unknown option 'segmnts'"),
        (lambda: solvers.run_all(model, None, strategies=["sequential"], options={"segments": 50}), "from 1 to 10"),
    ]
    for call, message in cases:
        with pytest.raises(OptionError, match=message):
            call()
    monkeypatch.undo()
    with pytest.raises(OptionError, match="from 1 to 10"):
        memory_range(model, options={"segments": 50})  # sweep's library entry, through run_all


def test_options_in_range_still_solve():
    model = uniform_chain(10)
    assert solvers.solve(model, None, "auto", segments=10).result.valid
    assert solvers.solve(model, None, "sequential", segments=10).params == {"segments": 10}
    assert solvers.solve(model, None, "revolve", snapshots=0).params == {"snapshots": 0}


# ---------------------------------------------------------- --json documents


def _bad_inputs(tmp_path):
    """(command, args) pairs that are exit 2 for every command that takes --json."""
    missing_file = str(tmp_path / "nope.json")
    schedule = tmp_path / "schedule.json"
    schedule.write_text("{}")
    return [
        ("solve", ["solve", missing_file, "--memory", "1GB"]),
        ("solve-size", ["solve", str(RESNET18), "--memory", "12XB"]),
        ("solve-option", ["solve", str(RESNET18), "--memory", "1GB", "--bogus"]),
        ("compare", ["compare", missing_file, "--memory", "1GB"]),
        ("sweep", ["sweep", missing_file]),
        ("simulate", ["simulate", str(RESNET18), str(schedule)]),
        ("profile", ["profile", f"{EXAMPLES / 'tiny_cnn.py'}:nothing", "--input", "2,3,32,32"]),
        ("import", ["import", missing_file]),
        ("verify", ["verify", TINY, "--input", "2,3,32,32", "--schedule", missing_file]),
    ]


def test_every_json_command_writes_one_error_document_on_exit_2(tmp_path):
    cases = _bad_inputs(tmp_path)
    assert {args[0] for _, args in cases} == {"solve", "compare", "sweep", "simulate", "profile", "import", "verify"}
    for name, args in cases:
        r = run(*args, "--json")
        assert r.exit_code == 2, (name, r.output)
        doc = one_json(r.stdout)
        assert list(doc) == ["error"] and doc["error"], name
        assert "Traceback" not in r.output
        plain = run(*args)
        assert plain.exit_code == 2 and plain.stdout == "", name


def test_solve_json_on_exit_1_gives_the_least_memory_that_works():
    r = run("solve", RESNET18, "--memory", "120MB", "--json")
    assert r.exit_code == 1, r.output
    doc = one_json(r.stdout)
    assert doc["feasible"] is False and doc["memory_bytes"] == 120_000_000
    assert "no strategy fits" in doc["error"] and "least memory that works" in doc["error"]
    least = doc["least_memory_bytes"]
    model = load_model(RESNET18)
    assert least == doc["least_activation_bytes"] + split_memory(model, least, "sgd").fixed_bytes
    assert run("solve", RESNET18, "--memory", least, "--json").exit_code == 0
    assert run("solve", RESNET18, "--memory", least - 1, "--json").exit_code == 1


def test_solve_json_below_the_fixed_memory_gives_the_least_memory_that_works():
    r = run("solve", RESNET18, "--memory", "10MB", "--json")
    assert r.exit_code == 1, r.output
    doc = one_json(r.stdout)
    assert doc["feasible"] is False and "less than the fixed memory" in doc["error"]
    assert doc["least_memory_bytes"] > doc["fixed_bytes"] > doc["memory_bytes"]
    assert run("solve", RESNET18, "--memory", doc["least_memory_bytes"], "--json").exit_code == 0


def test_named_strategy_json_on_exit_1():
    r = run("solve", RESNET18, "--memory", "150MB", "--strategy", "store-all", "--json")
    assert r.exit_code == 1, r.output
    doc = one_json(r.stdout)
    assert doc["feasible"] is False and doc["least_activation_bytes"] == 179_066_368
    assert run("solve", RESNET18, "--memory", doc["least_memory_bytes"], "-s", "store-all", "--json").exit_code == 0


# ------------------------------------------------- a schedule for another model


@pytest.fixture
def mobilenet_schedule(tmp_path):
    path = tmp_path / "mobilenet.json"
    r = run("solve", MOBILENET, "--memory", "1GB", "--strategy", "store-all", "-o", path)
    assert r.exit_code == 0, r.output
    return path


def test_simulate_a_schedule_for_another_model_is_exit_1_naming_both(mobilenet_schedule):
    r = run("simulate", RESNET18, mobilenet_schedule)
    assert r.exit_code == 1, r.output
    (line,) = error_lines(r.stderr)
    assert "made for another model" in line and "'mobilenet_v2'" in line and "'resnet18'" in line
    r = run("simulate", RESNET18, mobilenet_schedule, "--memory", "1GB", "--json")
    assert r.exit_code == 1
    doc = one_json(r.stdout)
    assert doc["valid"] is False and doc["fingerprint_matches"] is False
    assert "'mobilenet_v2'" in doc["error"] and "'resnet18'" in doc["error"]
    assert run("simulate", RESNET18, mobilenet_schedule, "--exit-zero").exit_code == 0


def test_load_schedule_names_both_models(mobilenet_schedule):
    model = load_model(RESNET18)
    with pytest.raises(ModelMismatchError, match=r"made for another model: 'mobilenet_v2' \(sha256:.*not 'resnet18'"):
        load_schedule(mobilenet_schedule, model)


def test_every_json_command_writes_one_document_on_exit_1(tmp_path, mobilenet_schedule):
    """solve, compare, simulate and verify: a negative answer is still one JSON document."""
    solve = run("solve", RESNET18, "--memory", "120MB", "--json")
    compare = run("compare", RESNET18, "--memory", "120MB", "--strategies", "store-all,revolve", "--json")
    simulate = run("simulate", RESNET18, mobilenet_schedule, "--json")
    model = tmp_path / "tiny.json"
    assert run("profile", TINY, "--input", "2,3,32,32", "--estimate", "-o", model).exit_code == 0
    first = load_model(model)
    bad = {
        "format": "edgeplan-schedule/1",
        "model": {"name": first.name, "fingerprint": first.fingerprint},
        "strategy": "hand", "params": {}, "budget_bytes": None, "predicted": {},
        "ops": [{"op": "forward", "layer": first.layers[0].name, "save": True}],
    }
    schedule = tmp_path / "bad.json"
    schedule.write_text(json.dumps(bad))
    verify = run("verify", TINY, "--input", "2,3,32,32", "--schedule", schedule, "--model", model, "--json")
    for r in (solve, compare, simulate, verify):
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output
    assert one_json(solve.stdout)["feasible"] is False
    assert [row["feasible"] for row in one_json(compare.stdout)] == [False, False]
    assert one_json(simulate.stdout)["valid"] is False
    assert "invalid schedule" in one_json(verify.stdout)["error"]
