"""Determinism: the same command gives the same bytes, whatever the process.

Schedules are artefacts that CI pipelines regenerate and compare, so
``edgeplan solve`` must write byte-identical files across runs, across
processes and across ``PYTHONHASHSEED`` values, and a schedule file must hold
no timing or other run-dependent value.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from planner.device import PRESETS
from planner.model import load_model, model_from_dict
from planner.solvers import STRATEGIES, applicable, solve
from planner.synthetic import random_chain, random_dag
from tests.reference import spec_fingerprint
from tests.conftest import RESNET18, ROOT, run_edgeplan

OPTIONS = {"time_limit": 30.0}  # only strategies that take it get it
STORAGE_DEVICE = "jetson-tx2-8gb"  # paging strategies run with its storage
# Keys that would betray a run-dependent value in a schedule file.
TIMING_KEY = re.compile(r"(^time$|second|elapsed|timestamp|date|duration|wall|clock|host|pid|seed)", re.I)


def _run(args, *, hashseed):
    env = dict(os.environ, PYTHONHASHSEED=str(hashseed))
    proc = run_edgeplan(*args, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def _small_models(tmp_path):
    """(path, memory, strategy) triples: a chain and a DAG small enough for every strategy."""
    chain = random_chain(6, seed=2, name="det-chain")
    dag = random_dag(6, seed=4, name="det-dag")
    pairs = []
    # auto (every strategy, milp included) on the DAG; the chain with dp alone keeps it quick.
    for model, strategy in ((chain, "dp"), (dag, "auto")):
        path = tmp_path / f"{model.name}.json"
        path.write_text(json.dumps(dict(model.to_dict(), time_unit="ms")))
        store_all = solve(model, None, "store-all").result.peak_bytes
        memory = store_all * 3 // 4 + model.params_bytes * 2
        pairs.append((path, memory, strategy))
    return pairs


def _timing_keys(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            if TIMING_KEY.search(key):
                yield f"{path}.{key}"
            yield from _timing_keys(item, f"{path}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _timing_keys(item, f"{path}[{n}]")


def test_solve_output_file_is_byte_identical_across_processes_and_hash_seeds(tmp_path):
    for path, memory, strategy in _small_models(tmp_path):
        files = []
        for seed in (0, 4242):
            out = tmp_path / f"{path.stem}-{seed}.json"
            _run(["solve", str(path), "--memory", str(memory), "--strategy", strategy, "-o", str(out)],
                 hashseed=seed)
            files.append(out.read_bytes())
        assert files[0] == files[1]
        doc = json.loads(files[0])
        assert list(_timing_keys(doc)) == []
        assert set(doc["predicted"]) == {"peak_bytes", "compute", "baseline_compute", "overhead", "forwards"}


def test_solve_json_stdout_is_byte_identical_and_matches_the_file(tmp_path):
    args = ["solve", str(RESNET18), "--memory", "256MB", "--strategy", "sequential"]
    first = _run(args + ["--json"], hashseed=0).stdout
    second = _run(args + ["--json"], hashseed=123).stdout
    assert first == second
    out = tmp_path / "s.json"
    _run(args + ["-o", str(out)], hashseed=7)
    assert out.read_bytes() == first
    assert list(_timing_keys(json.loads(first))) == []


def test_simulate_json_is_byte_identical(tmp_path):
    out = tmp_path / "s.json"
    _run(["solve", str(RESNET18), "--memory", "300MB", "-o", str(out), "--strategy", "store-all"], hashseed=0)
    args = ["simulate", str(RESNET18), str(out), "--memory", "300MB", "--json"]
    assert _run(args, hashseed=1).stdout == _run(args, hashseed=99).stdout


_DIGEST_SCRIPT = """
import hashlib, json, sys
from planner.model import model_from_dict
from planner.solvers import STRATEGIES, applicable, solve
from planner.errors import InfeasibleError
from planner.device import PRESETS
storage = PRESETS["STORAGE_DEVICE"].storage
for path, budget in json.loads(sys.argv[1]):
    model = model_from_dict(json.load(open(path)))
    for name in applicable(model, storage=storage):
        options = {"time_limit": 30.0} if "time_limit" in STRATEGIES[name].options else {}
        try:
            text = "".join(solve(model, budget, name, storage=storage, **options).schedule.iter_json(model))
        except InfeasibleError as exc:
            text = "infeasible %s" % exc.least_bytes
        print(path, name, hashlib.sha256(text.encode()).hexdigest())
""".replace("STORAGE_DEVICE", STORAGE_DEVICE)


def test_every_strategy_is_deterministic_across_hash_seeds(tmp_path):
    """One process per hash seed solves every model with every applicable strategy."""
    jobs = [(str(path), memory) for path, memory, _ in _small_models(tmp_path)]
    outputs = []
    for seed in (0, 2, 31337):
        env = dict(os.environ, PYTHONHASHSEED=str(seed))
        proc = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT, json.dumps(jobs)],
            capture_output=True, cwd=ROOT, env=env, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    lines = outputs[0].decode().splitlines()
    strategies = {line.split()[1] for line in lines}
    assert strategies == set(STRATEGIES)  # every registered strategy was exercised


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_twice_in_one_process(name):
    model = random_dag(7, seed=11) if not STRATEGIES[name].chains_only else random_chain(9, seed=12)
    model = model_from_dict(dict(model.to_dict(), time_unit="ms"))
    storage = PRESETS[STORAGE_DEVICE].storage
    assert name in applicable(model, storage=storage)
    peak = solve(model, None, "store-all").result.peak_bytes
    options = {k: v for k, v in OPTIONS.items() if k in STRATEGIES[name].options}
    texts = []
    for _ in range(2):
        # A fresh model object each time: no cached state may leak between solves.
        fresh = model_from_dict(json.loads(json.dumps(model.document)))
        try:
            solution = solve(fresh, peak * 3 // 4, name, storage=storage, **options)
            texts.append("".join(solution.schedule.iter_json(fresh)))
        except Exception as exc:  # an infeasible answer must be deterministic too
            texts.append(f"{type(exc).__name__}: {exc} {getattr(exc, 'least_bytes', None)}")
    assert texts[0] == texts[1]


def test_fingerprint_ignores_key_order_and_whitespace(tmp_path):
    doc = json.loads(RESNET18.read_text())
    shuffled = {key: doc[key] for key in reversed(list(doc))}
    shuffled["layers"] = [{k: layer[k] for k in sorted(layer, reverse=True)} for layer in doc["layers"]]
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(doc))
    b.write_text(json.dumps(shuffled, indent=7))
    assert load_model(a).fingerprint == load_model(b).fingerprint == load_model(RESNET18).fingerprint
    assert load_model(a).fingerprint == spec_fingerprint(doc)


def test_schedule_text_has_a_stable_layout():
    """Header first, one op per line, a final newline: diffs between schedules stay readable."""
    model = load_model(RESNET18)
    text = "".join(solve(model, None, "store-all").schedule.iter_json(model))
    assert text.endswith("}\n")
    lines = text.splitlines()
    assert lines[0] == "{" and lines[1].startswith('  "format": "edgeplan-schedule/1"')
    op_lines = [line for line in lines if line.lstrip().startswith('{"op"')]
    assert len(op_lines) == len(json.loads(text)["ops"])
