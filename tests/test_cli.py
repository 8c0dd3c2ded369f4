import csv
import io
import json

import pytest

from tests.conftest import RESNET18, run


def test_solve_prints_a_schedule_to_stdout():
    r = run("solve", RESNET18, "--memory", "256MB", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["format"] == "edgeplan-schedule/1"
    assert doc["budget_bytes"] == 256_000_000 - 2 * 46_758_048
    assert doc["predicted"]["peak_bytes"] <= doc["budget_bytes"]
    assert "activation budget" in r.stderr


def test_solve_writes_file_and_simulate_agrees(tmp_path):
    out = tmp_path / "s.json"
    r = run("solve", RESNET18, "--memory", "256MB", "-o", out)
    assert r.exit_code == 0 and r.stdout == ""
    assert "wrote" in r.stderr
    sched = json.loads(out.read_text())
    sim = run("simulate", RESNET18, out, "--memory", "256MB", "--json")
    assert sim.exit_code == 0, sim.output
    res = json.loads(sim.stdout)
    assert res["valid"] is True and res["fits"] is True
    for key in ("peak_bytes", "compute", "baseline_compute", "overhead", "forwards"):
        assert res[key] == sched["predicted"][key]


def test_4gb_and_4gib():
    a = json.loads(run("solve", RESNET18, "--memory", "4GB", "--json").stdout)
    b = json.loads(run("solve", RESNET18, "--memory", "4GiB", "--json").stdout)
    assert b["budget_bytes"] - a["budget_bytes"] == 294_967_296


def test_bad_size_is_usage_error():
    r = run("solve", RESNET18, "--memory", "12XB")
    assert r.exit_code == 2
    assert "unknown unit 'XB'" in r.stderr


def test_infeasible_budget_names_the_least_memory():
    r = run("solve", RESNET18, "--memory", "100MB", "--strategy", "store-all")
    assert r.exit_code == 1
    assert "the least memory that works" in r.stderr
    assert r.stdout == ""
    r = run("solve", RESNET18, "--memory", "10MB")
    assert r.exit_code == 1 and "less than the fixed memory" in r.stderr


def test_least_memory_really_is_least(tmp_path):
    r = run("solve", RESNET18, "--memory", "100MB", "--strategy", "store-all")
    least = int(r.stderr.split("the least memory that works: ")[1].split(" bytes")[0].replace(",", ""))
    assert run("solve", RESNET18, "--memory", least, "--strategy", "store-all", "--json").exit_code == 0
    assert run("solve", RESNET18, "--memory", least - 1, "--strategy", "store-all").exit_code == 1


def test_sequential_on_dag_is_refused(tmp_path):
    path = tmp_path / "dag.json"
    path.write_text(json.dumps({
        "format": "edgeplan-model/1", "name": "d", "input_bytes": 1,
        "layers": [
            {"name": "a", "forward": 1, "backward": 1, "output_bytes": 10},
            {"name": "b", "forward": 1, "backward": 1, "output_bytes": 10},
            {"name": "c", "inputs": ["a", "b"], "forward": 1, "backward": 1, "output_bytes": 10},
        ]}))
    r = run("solve", path, "--memory", "1MB", "--strategy", "sequential")
    assert r.exit_code == 2 and "chains only" in r.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"format": "edgeplan-model/1", "name": "x", "layers": [', "not valid JSON"),
        (json.dumps({"format": "edgeplan-model/1", "name": "x", "input_bytes": 1, "layers": [
            {"name": "a", "inputs": ["b"], "forward": 1, "backward": 1, "output_bytes": 1},
            {"name": "b", "inputs": ["a"], "forward": 1, "backward": 1, "output_bytes": 1}]}),
         "layer #0 'a': field 'inputs'.*cycle"),
    ],
)
def test_bad_model_file_exits_2(tmp_path, content, message):
    import re

    path = tmp_path / "bad.json"
    path.write_text(content)
    out = tmp_path / "out.json"
    for args in (("solve", path, "--memory", "1GB", "-o", out), ("compare", path, "--memory", "1GB")):
        r = run(*args)
        assert r.exit_code == 2
        assert re.search(message, r.stderr)
        assert "Traceback" not in r.output
    assert not out.exists()


def test_simulate_rejects_a_missing_forward(tmp_path):
    good = tmp_path / "s.json"
    run("solve", RESNET18, "--memory", "1GB", "--strategy", "store-all", "-o", good)
    doc = json.loads(good.read_text())
    doc["ops"] = [op for op in doc["ops"] if not (op["op"] == "forward" and op["layer"] == "L3_BasicBlock")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = run("simulate", RESNET18, bad, "--json")
    assert r.exit_code == 1
    res = json.loads(r.stdout)
    assert res["valid"] is False
    assert "L3_BasicBlock" in res["error"]


def test_simulate_memory_gate(tmp_path):
    path = tmp_path / "s.json"
    run("solve", RESNET18, "--memory", "1GB", "--strategy", "store-all", "-o", path)
    doc = json.loads(path.read_text())
    fixed = 2 * 46_758_048
    at_peak = doc["predicted"]["peak_bytes"] + fixed
    assert run("simulate", RESNET18, path, "--memory", at_peak).exit_code == 0
    below = run("simulate", RESNET18, path, "--memory", at_peak - 1)
    assert below.exit_code == 1 and "does not fit" in below.stderr


def test_simulate_other_model_fingerprint(tmp_path):
    path = tmp_path / "s.json"
    run("solve", RESNET18, "--memory", "1GB", "--strategy", "store-all", "-o", path)
    doc = json.loads(path.read_text())
    doc["model"]["fingerprint"] = "sha256:0"
    path.write_text(json.dumps(doc))
    r = run("simulate", RESNET18, path, "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["fingerprint_matches"] is False


def test_compare_json_lists_baselines():
    r = run("compare", RESNET18, "--memory", "1GB", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    names = {row["strategy"] for row in rows}
    assert {"store-all", "sequential"} <= names
    for row in rows:
        assert {"strategy", "feasible", "peak_bytes", "compute", "overhead", "solve_seconds"} <= set(row)


@pytest.mark.parametrize("command", ["solve", "compare", "simulate"])
def test_help_has_an_example(command):
    r = run(command, "--help")
    assert r.exit_code == 0
    assert "Example" in r.stdout and f"edgeplan {command}" in r.stdout


def test_simulate_timeline_csv_peaks_where_the_simulator_says(tmp_path):
    path, table = tmp_path / "s.json", tmp_path / "memory.csv"
    run("solve", RESNET18, "--memory", "256MB", "--strategy", "dp", "-o", path)
    doc = json.loads(path.read_text())
    r = run("simulate", RESNET18, path, "--timeline", table, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["peak_bytes"] == doc["predicted"]["peak_bytes"]  # stdout: the one document
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [(row["op"], row["layer"]) for row in rows] == [(op["op"], op["layer"]) for op in doc["ops"]]
    held = [int(row["bytes"]) for row in rows]
    assert max(held) == doc["predicted"]["peak_bytes"]
    assert [int(row["index"]) for row in rows] == list(range(len(doc["ops"])))


def test_simulate_timeline_of_an_invalid_schedule_stops_at_the_error(tmp_path):
    good, bad, table = tmp_path / "s.json", tmp_path / "bad.json", tmp_path / "memory.csv"
    run("solve", RESNET18, "--memory", "1GB", "--strategy", "store-all", "-o", good)
    doc = json.loads(good.read_text())
    broken = next(k for k, op in enumerate(doc["ops"]) if op["op"] == "backward")
    doc["ops"].insert(broken, {"op": "free", "layer": doc["ops"][broken]["layer"]})  # freed before its backward
    bad.write_text(json.dumps(doc))
    r = run("simulate", RESNET18, bad, "--timeline", table)
    assert r.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert 0 < len(rows) <= broken + 1


def test_timeline_csv_quotes_a_layer_name_with_a_comma():
    from planner.model import model_from_dict
    from planner.report import timeline_csv
    from planner.simulate import simulate
    from planner import solvers

    model = model_from_dict({"format": "edgeplan-model/1", "name": "m", "input_bytes": 4, "layers": [
        {"name": "a,b", "forward": 1.0, "backward": 1.0, "output_bytes": 8},
        {"name": "c", "inputs": ["a,b"], "forward": 1.0, "backward": 1.0, "output_bytes": 8}]})
    ops = solvers.solve(model, None, "store-all").ops
    text = timeline_csv(model, ops, simulate(model, ops, timeline=True).timeline)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["index", "op", "layer", "bytes"]
    assert [row[2] for row in rows[1:]] == [model.layers[op.layer].name for op in ops]


def test_every_output_that_cannot_be_written_is_one_line_and_exit_2(tmp_path):
    """solve -o, simulate --timeline and import -o share one message (planner.files, OutputError)."""
    schedule = tmp_path / "s.json"
    assert run("solve", RESNET18, "--memory", "256MB", "-o", schedule).exit_code == 0
    missing = tmp_path / "no" / "out"
    for args in (("solve", RESNET18, "--memory", "256MB", "-o", missing),
                 ("simulate", RESNET18, schedule, "--timeline", missing)):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "cannot write" in errors[0], (args, r.stderr)
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------ one meaning per flag (issue 18)


def test_sweep_sizes_and_its_old_spelling_steps_with_a_deprecation_line():
    new = run("sweep", RESNET18, "--sizes", "3", "--strategies", "dp", "--json")
    old = run("sweep", RESNET18, "--steps", "3", "--strategies", "dp", "--json")
    assert new.exit_code == old.exit_code == 0
    assert json.loads(new.stdout) == json.loads(old.stdout) and len(json.loads(new.stdout)) == 3
    assert "deprecated" not in new.stderr
    (line,) = [line for line in old.stderr.splitlines() if "deprecated" in line]
    assert line == ("warning: --steps is deprecated in 'edgeplan sweep': use --sizes (the old spelling goes in "
                    "the next release)")


def test_verify_and_profile_run_on_cpu_or_cuda_with_on_and_device_is_deprecated(tmp_path):
    pytest.importorskip("torch")
    from tests.conftest import ROOT

    target = f"{ROOT / 'examples' / 'tiny_cnn.py'}:tiny_cnn"
    for flag in ("--on", "--device"):
        r = run("profile", target, "--input", "2,3,32,32", "--estimate", flag, "cpu", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["format"] == "edgeplan-model/1"
        assert ("warning: --device is deprecated in 'edgeplan profile': use --on" in r.stderr) == (flag == "--device")
    r = run("profile", target, "--input", "2,3,32,32", "--on", "tpu")
    assert r.exit_code == 2 and "'tpu' is not one of 'cpu', 'cuda'" in r.stderr


def test_every_flag_means_one_thing_across_commands():
    """--device is a device preset or file wherever it is shown; --steps counts training steps."""
    from cli import main

    meanings = {}
    for name, command in main.commands.items():
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for flag in param.opts:
                meanings.setdefault(flag, set()).add(param.name)
    assert meanings["--device"] == {"device_name"}
    assert meanings["--steps"] == {"steps"}  # verify's training steps; sweep's is --sizes
    assert meanings["--on"] == {"device"}
