"""Tests for planner.torch.verify and ``edgeplan verify`` (CPU, tiny models)."""

import copy
import json

import pytest
import torch
from click.testing import CliRunner

import planner.torch.verify as runtime
from cli import main
from planner import solvers
from planner.errors import ModelError, ScheduleError
from planner.torch.profile import profile_model
from planner.model import model_from_dict
from planner.schedule import OpKind, backward, forward, free
from tests.conftest import ROOT
from tests.models_torch import deeper_cnn, dropout_mlp, lm_head_mlp, skip_net
from tests.reference import replay_solution

SHAPE = (4, 3, 16, 16)
TOLERANCE = 0.15  # measured peak within 15% of the prediction


@pytest.fixture(scope="module")
def cnn_model():
    return model_from_dict(profile_model(deeper_cnn(), SHAPE, repeats=1, name="deeper_cnn"))


def _check(model, solution, factory=deeper_cnn, shape=SHAPE, stages="auto"):
    ref = replay_solution(model, solution)
    assert ref["valid"] and ref["peak_bytes"] == solution.result.peak_bytes
    result = runtime.verify(
        factory(), shape, solution.ops, stages=stages, names=[layer.name for layer in model.layers],
        predicted=solution.result.peak_bytes,
    )
    assert result.grads_match and result.buffers_match, result
    assert result.max_abs_diff <= 1e-5
    assert abs(result.relative_error) <= TOLERANCE, result
    return result


def test_store_all_matches_autograd_and_the_prediction(cnn_model):
    result = _check(cnn_model, solvers.solve(cnn_model, None, "store-all"))
    # Executing store-all is plain autograd: the same peak, to a few kB.
    assert abs(result.measured_peak_bytes - result.reference_peak_bytes) < 0.02 * result.reference_peak_bytes


@pytest.mark.parametrize("segments", [2, 4])
def test_sequential_schedules(cnn_model, segments):
    solution = solvers.solve(cnn_model, None, "sequential", segments=segments)
    result = _check(cnn_model, solution)
    assert result.n_ops == len(solution.ops)


def test_auto_at_half_of_store_all(cnn_model):
    full = solvers.solve(cnn_model, None, "store-all").result.peak_bytes
    budget = full // 2
    solution = solvers.solve(cnn_model, budget, "auto", time_limit=2)
    assert solution.result.peak_bytes <= budget
    assert solution.result.forwards > len(cnn_model)  # it recomputes
    result = _check(cnn_model, solution)
    assert result.measured_peak_bytes < full


def test_dropout_masks_are_reproduced_by_recomputation():
    shape = (8, 3, 4, 4)
    model = model_from_dict(profile_model(dropout_mlp(), shape, repeats=1))
    solution = solvers.solve(model, None, "sequential", segments=4)
    assert solution.result.forwards > len(model)
    _check(model, solution, factory=dropout_mlp, shape=shape)


def test_without_rng_restore_recomputation_gives_wrong_gradients(monkeypatch):
    shape = (8, 3, 4, 4)
    model = model_from_dict(profile_model(dropout_mlp(), shape, repeats=1))
    solution = solvers.solve(model, None, "sequential", segments=4)
    import planner.torch.executor as executor
    monkeypatch.setattr(executor, "_set_rng", lambda state, device: None)
    result = runtime.verify(dropout_mlp(), shape, solution.ops, names=[l.name for l in model.layers])
    assert not result.grads_match and result.max_abs_diff > 1e-3


def test_batchnorm_running_stats_updated_once(cnn_model):
    solution = solvers.solve(cnn_model, None, "sequential", segments=4)
    net = deeper_cnn()
    runtime.verify(net, SHAPE, solution.ops, names=[l.name for l in cnn_model.layers])
    bn = net[1]
    assert int(bn.num_batches_tracked) == 1  # one step, however many recomputations


def test_dag_of_ops():
    shape = (2, 3, 8, 8)
    model = model_from_dict(profile_model(skip_net(), shape, stages="ops", repeats=1))
    assert not model.is_chain
    _check(model, solvers.solve(model, None, "store-all"), factory=skip_net, shape=shape, stages="ops")


def test_names_must_match_and_bad_schedules_are_caught(cnn_model):
    names = [layer.name for layer in cnn_model.layers]
    ops = solvers.solve(cnn_model, None, "store-all").ops
    with pytest.raises(ModelError, match="does not describe this TARGET"):
        runtime.verify(deeper_cnn(), SHAPE, ops, names=names[:-1])
    with pytest.raises(ScheduleError, match="an input is not in memory"):
        runtime.verify(deeper_cnn(), SHAPE, [forward(1, True)], names=names)
    with pytest.raises(ScheduleError, match="does not compute the sink"):
        runtime.verify(deeper_cnn(), SHAPE, [forward(0, False), backward(0)], names=names)
    unsaved = [forward(0, False) if op == forward(0, True) else op for op in ops]
    with pytest.raises(ScheduleError, match="saved data is not in memory"):
        runtime.verify(deeper_cnn(), SHAPE, unsaved, names=names)


def test_the_sink_output_is_held_until_its_backward():
    # Logits dominate, as in a language model: the loss holds them until the
    # head's backward, in plain autograd, in the prediction and in the run.
    shape = (16, 3, 4, 4)
    model = model_from_dict(profile_model(lm_head_mlp(), shape, repeats=1))
    head = model.layers[-1]
    assert not head.needs_output
    assert head.output_bytes > 10 * max(layer.output_bytes for layer in model.layers[:-1])
    solution = solvers.solve(model, None, "store-all")
    ops = list(solution.ops)
    head_backward = ops.index(backward(len(model) - 1))
    assert ops.index(free(len(model) - 1)) > head_backward
    result = _check(model, solution, factory=lm_head_mlp, shape=shape)
    assert abs(result.measured_peak_bytes - result.reference_peak_bytes) < 0.02 * result.reference_peak_bytes
    # Freeing the logits before the head's backward is refused, as by the simulator.
    early = [op for op in ops if op != free(len(model) - 1)]
    early.insert(head_backward, free(len(model) - 1))
    assert early[head_backward - 1].kind is OpKind.FORWARD
    with pytest.raises(ScheduleError, match="read by the loss"):
        runtime.verify(lm_head_mlp(), shape, early, names=[layer.name for layer in model.layers])


FACTORY = str(ROOT / "tests" / "models_torch.py") + ":deeper_cnn"


def test_cli_verify(tmp_path, cnn_model):
    model_path = tmp_path / "m.json"
    model_path.write_text(json.dumps(cnn_model.document))
    runner = CliRunner()
    sched = tmp_path / "s.json"
    result = runner.invoke(main, ["solve", str(model_path), "--memory", "1GB", "--strategy", "sequential",
                                  "--segments", "3", "-o", str(sched)])
    assert result.exit_code == 0, result.output
    shape = ",".join(map(str, SHAPE))
    result = runner.invoke(main, ["verify", FACTORY, "--input", shape, "--schedule", str(sched),
                                  "--model", str(model_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["grads_match"] is True and doc["max_abs_diff"] <= 1e-5
    assert abs(doc["measured_peak_bytes"] / doc["predicted_peak_bytes"] - 1) <= TOLERANCE
    # Without --model: the layer names come from TARGET, the prediction from the file.
    result = runner.invoke(main, ["verify", FACTORY, "--input", shape, "--schedule", str(sched)])
    assert result.exit_code == 0, result.output
    assert "grads_match: true" in result.output and "predicted_peak_bytes" in result.output
    # A schedule for another model: a negative answer naming both models, exit 1 (issue 10).
    result = runner.invoke(main, ["verify", FACTORY.replace("deeper_cnn", "dropout_mlp"), "--input", "8,3,4,4",
                                  "--schedule", str(sched)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "made for another model" in result.stderr and "'dropout_mlp'" in result.stderr


def test_cli_verify_invalid_schedule_exits_1(tmp_path, cnn_model):
    model_path = tmp_path / "m.json"
    model_path.write_text(json.dumps(cnn_model.document))
    first = cnn_model.layers[0].name
    bad = {
        "format": "edgeplan-schedule/1",
        "model": {"name": cnn_model.name, "fingerprint": cnn_model.fingerprint},
        "strategy": "hand", "params": {}, "budget_bytes": None, "predicted": {},
        "ops": [{"op": "forward", "layer": first, "save": True}],
    }
    sched = tmp_path / "bad.json"
    sched.write_text(json.dumps(bad))
    result = CliRunner().invoke(main, ["verify", FACTORY, "--input", ",".join(map(str, SHAPE)),
                                       "--schedule", str(sched), "--model", str(model_path)])
    assert result.exit_code == 1 and "invalid schedule" in result.output


def _solve_to(tmp_path, cnn_model, memory="1GB"):
    model_path = tmp_path / "m.json"
    model_path.write_text(json.dumps(cnn_model.document))
    sched = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["solve", str(model_path), "--memory", memory, "--strategy", "dp",
                                       "-o", str(sched)])
    assert result.exit_code == 0, result.output
    return model_path, sched


def test_cli_verify_steps_and_the_budget_exit_code(tmp_path, cnn_model):
    full = solvers.solve(cnn_model, None, "store-all").result.peak_bytes
    memory = str(full // 2 + 2 * cnn_model.params_bytes)  # half the activations, plus SGD's fixed memory
    model_path, sched = _solve_to(tmp_path, cnn_model, memory)
    args = ["verify", FACTORY, "--input", ",".join(map(str, SHAPE)), "--schedule", str(sched),
            "--model", str(model_path)]
    result = CliRunner().invoke(main, args + ["--steps", "3", "--lr", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["steps"] == 3 and doc["lr"] == 0.1
    assert doc["grads_match"] is True and doc["max_param_diff"] <= 1e-5
    assert doc["step_seconds"] > 0 and doc["reference_step_seconds"] > 0
    assert doc["budget_bytes"] <= full // 2 and doc["fits_budget"] is True
    assert doc["measured_peak_bytes"] <= doc["budget_bytes"] * 1.02
    assert doc["measured_peak_bytes"] < doc["reference_peak_bytes"]
    # The same ops with a budget below what they measure: a negative answer, exit 1.
    schedule = json.loads(sched.read_text())
    schedule["budget_bytes"] = int(doc["measured_peak_bytes"] / 1.05)
    sched.write_text(json.dumps(schedule))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "exceeds the schedule's budget" in result.output and "fits within 2%: false" in result.output


def test_cli_verify_refuses_a_schedule_for_another_model(tmp_path, cnn_model):
    model_path, sched = _solve_to(tmp_path, cnn_model)
    other = json.loads(model_path.read_text())
    other["layers"][0]["output_bytes"] += 4
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    result = CliRunner().invoke(main, ["verify", FACTORY, "--input", ",".join(map(str, SHAPE)),
                                       "--schedule", str(sched), "--model", str(other_path)])
    assert result.exit_code == 1 and "made for another model" in result.output
    assert "Traceback" not in result.output
    # A model file profiled for another input shape: bad input, exit 2.
    result = CliRunner().invoke(main, ["verify", FACTORY, "--input", "2,3,16,16", "--schedule", str(sched),
                                       "--model", str(model_path)])
    assert result.exit_code == 2 and "was profiled for" in result.output


def test_example_train_reaches_the_parameters_of_plain_training():
    import subprocess
    import sys

    root = str(ROOT)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), "--steps", "3"],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    diff = float(next(l for l in lines if l.startswith("max abs difference")).rsplit(" ", 1)[1])
    assert diff <= 1e-5
    peaks = next(l for l in lines if l.startswith("measured peak"))
    plain, scheduled = (int(p.split(" B")[0].replace(",", "")) for p in peaks.split("plain ")[1].split(", scheduled "))
    assert scheduled < 0.6 * plain


def test_cli_verify_timeline_puts_the_measured_memory_beside_the_prediction(tmp_path, cnn_model):
    """--timeline: one row per op, predicted and measured.  An op's measured window starts at
    the level the op before it left, so it is bounded by the prediction of that op or its own,
    within verify's 2% memory tolerance of the peak (the CPU allocator)."""
    import csv
    import io

    model_path, sched, table = tmp_path / "m.json", tmp_path / "s.json", tmp_path / "memory.csv"
    model_path.write_text(json.dumps(cnn_model.document))
    runner = CliRunner()
    result = runner.invoke(main, ["solve", str(model_path), "--memory", "1GB", "--strategy", "sequential",
                                  "--segments", "3", "-o", str(sched)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["verify", FACTORY, "--input", ",".join(map(str, SHAPE)), "--schedule", str(sched),
                                  "--model", str(model_path), "--timeline", str(table), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ops = json.loads(sched.read_text())["ops"]
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [(row["op"], row["layer"]) for row in rows] == [(op["op"], op["layer"]) for op in ops]
    predicted = [int(row["bytes"]) for row in rows]
    measured = [int(row["measured_bytes"]) for row in rows]
    assert max(predicted) == doc["predicted_peak_bytes"]
    for k, m in enumerate(measured):
        bound = max(predicted[max(k - 1, 0):k + 1])
        assert m - bound <= runtime.MEMORY_TOLERANCE * max(predicted), (k, rows[k])
    assert max(measured) >= 0.9 * max(predicted)
    seconds = [float(row["measured_ms"]) for row in rows]  # issue 18: measured time beside memory
    assert all(t >= 0 for t in seconds) and sum(seconds) > 0
    assert doc["predicted_overhead"] > 0 and doc["measured_overhead"] is not None  # sequential recomputes


class RandomDepth(torch.nn.Module):
    """Stochastic depth: the residual branch is kept or dropped by ``torch.rand`` in forward (bug 6)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        keep = (torch.rand(x.shape[0], 1) < 0.5).to(h.dtype)
        h = h + keep * torch.relu(self.b(h))
        return self.head(h)


def _plain_and_scheduled_differ(ops, model, x, steps, lr):
    """The truth verify must report: do ``steps`` SGD steps under the schedule equal the user's module's?"""
    from planner.schedule import Schedule
    from planner.torch.executor import ScheduledModule

    torch.manual_seed(0)
    plain = RandomDepth()
    net = copy.deepcopy(plain)
    wrapped = ScheduledModule(net, model, Schedule(model.name, model.fingerprint, "hand", tuple(ops)),
                              stages="ops", example=(x,))
    for module, call in ((plain, plain), (net, wrapped)):
        torch.manual_seed(0)  # verify's seed
        for _ in range(steps):
            call(x).sum().backward()
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(p.grad, alpha=-lr)
                    p.grad = None
    return max((p - q).abs().max().item() for p, q in zip(net.parameters(), plain.parameters())) > 1e-5


def test_verify_compares_with_the_users_own_module_not_the_traced_stages():
    """Bug 6: verify's reference ran the same traced stages, so a random draw the tracer froze
    into a constant passed.  The reference is the user's own module now: verify's verdict is
    whether training under the schedule really equals plain training of that module."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    model = model_from_dict(profile_model(RandomDepth(), lambda: (x, None), stages="ops", repeats=1, loss="sum"))
    ops = solvers.solve(model, None, "store-all").ops
    torch.manual_seed(0)
    result = runtime.verify(RandomDepth(), lambda: (x, None), ops, stages="ops", model=model, steps=3, lr=0.1)
    truth = not _plain_and_scheduled_differ(ops, model, x, steps=3, lr=0.1)
    assert result.grads_match == truth, result
