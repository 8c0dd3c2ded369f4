"""Tests for planner.torch.profile and ``edgeplan profile`` (CPU, tiny models)."""

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cli import main
from planner import solvers
from planner.errors import ModelError
from planner.torch.capture import build_stages
from planner.torch.inputs import load_target, parse_shape
from planner.torch.measure import allocation_trace
from planner.torch.profile import profile_model
from planner.model import model_from_dict
from tests.conftest import EXAMPLES
from tests.models_torch import skip_net
from tests.reference import replay_solution

TINY = str(EXAMPLES / "tiny_cnn.py")


class _Temporary(nn.Module):
    """Allocates a temporary as big as its input and keeps nothing of it."""

    def forward(self, x):
        t = x * 2.0
        return t.sum(dim=1)


def _layers(doc):
    return {layer["name"]: layer for layer in doc["layers"]}


@pytest.fixture(scope="module")
def chain_doc():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 5)),
    )
    return profile_model(net, (2, 3, 8, 8), repeats=1, name="chain")


def test_parse_shape():
    assert parse_shape("8,3,224,224") == (8, 3, 224, 224)
    assert parse_shape(" 2, 5 ") == (2, 5)
    for bad in ("", "8,,3", "8,-3", "a,b", "8,0"):
        with pytest.raises(ValueError, match="bad shape"):
            parse_shape(bad)


def test_chain_fields_follow_the_measurement_rules(chain_doc):
    model = model_from_dict(chain_doc)  # valid edgeplan-model/1
    assert model.is_chain and len(model) == 5
    assert chain_doc["input_bytes"] == 2 * 3 * 8 * 8 * 4
    assert chain_doc["time_unit"] == "ms"
    layers = _layers(chain_doc)
    conv, bn, relu, pool, head = (layers[n] for n in ("L0_Conv2d", "L1_BatchNorm2d", "L2_ReLU", "L3_MaxPool2d", "L4_Sequential"))
    assert conv["output_bytes"] == 2 * 4 * 8 * 8 * 4
    assert conv["params_bytes"] == (4 * 3 * 3 * 3 + 4) * 4
    assert conv["needs_inputs"] and not conv["needs_output"] and conv["saved_bytes"] == 0
    # BatchNorm saves its input plus the batch mean and inverse std (2 x 4 channels).
    assert bn["needs_inputs"] and bn["saved_bytes"] == 2 * 4 * 4
    # ReLU's backward reads its output, not its input.
    assert relu["needs_output"] and not relu["needs_inputs"] and relu["saved_bytes"] == 0
    # MaxPool saves its input and the int64 indices of the maxima.
    assert pool["needs_inputs"] and pool["saved_bytes"] == 2 * 4 * 4 * 4 * 8
    # The head saves the first Linear's input (a view of the stage input: same storage)
    # and the inner ReLU's output, read by the second Linear too.
    assert head["needs_inputs"] and not head["needs_output"]
    assert head["saved_bytes"] == 2 * 6 * 4
    assert head["output_bytes"] == 2 * 5 * 4
    assert all(layer["forward"] > 0 and layer["backward"] > 0 for layer in chain_doc["layers"])


def test_profiled_model_solves_and_replays(chain_doc):
    model = model_from_dict(chain_doc)
    for strategy, options in (("store-all", {}), ("sequential", {"segments": 2})):
        solution = solvers.solve(model, None, strategy, **options)
        ref = replay_solution(model, solution)
        assert ref["valid"] and ref["peak_bytes"] == solution.result.peak_bytes


def test_workspace_is_measured_from_the_allocator():
    doc = profile_model(nn.Sequential(_Temporary()), (4, 256), repeats=1)
    layer = doc["layers"][0]
    assert layer["workspace_forward"] >= 4 * 256 * 4  # the temporary x * 2
    assert layer["saved_bytes"] == 0 and not layer["needs_inputs"]
    _, peak, end = allocation_trace(lambda: torch.ones(1000), torch.device("cpu"))
    assert peak == end == 4000


def test_profile_restores_the_module_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    profile_model(net, (4, 3), repeats=1)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in net.parameters())


def test_estimate_counts_flops_without_running():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    doc = profile_model(net, (2, 3, 8, 8), estimate=True)
    model_from_dict(doc)
    assert doc["time_unit"] == "flop"
    conv, relu, fc = doc["layers"]  # the Flatten (a view) is part of the ReLU's stage
    assert relu["name"] == "L1_ReLU+L2_Flatten"
    assert conv["forward"] == 2 * (2 * 8 * 6 * 6) * (3 * 3 * 3)
    assert conv["backward"] == conv["forward"]  # weight gradient only: the input needs none
    assert fc["forward"] == 2 * 2 * 288 * 4
    assert fc["backward"] == 2 * fc["forward"]  # input and weight gradients
    assert relu["forward"] == 2 * 8 * 6 * 6  # one per output element
    assert relu["needs_output"] and not relu["needs_inputs"]
    assert conv["output_bytes"] == 2 * 8 * 6 * 6 * 4 and conv["workspace_forward"] == 0
    assert all(p.grad is None for p in net.parameters())


def test_ops_mode_builds_a_dag_with_the_skip_connection():
    doc = profile_model(skip_net(), (2, 3, 8, 8), stages="ops", repeats=1)
    model = model_from_dict(doc)
    assert not model.is_chain
    adds = [layer for layer in doc["layers"] if layer["name"].startswith("add")]
    assert len(adds) == 1 and len(adds[0]["inputs"]) == 2
    assert adds[0]["output_bytes"] == 2 * 4 * 8 * 8 * 4
    assert not adds[0]["needs_inputs"]  # an addition's backward reads nothing
    assert doc["layers"][-1]["name"] == "fc"
    solution = solvers.solve(model, None, "store-all")
    assert replay_solution(model, solution)["valid"]


def test_auto_picks_modules_for_sequential_and_ops_otherwise():
    x = torch.randn(1, 3, 8, 8)
    _, chain = build_stages(nn.Sequential(nn.ReLU(), nn.ReLU()), "auto", example=x)
    assert [s.inputs for s in chain] == [(-1,), (0,)]
    _, dag = build_stages(skip_net(), "auto", example=x)
    assert len(dag) > 4
    # modules on ordinary code: the children are stages, the code between them one stage per op
    # (the flatten, a view, is folded into fc).
    _, blocks = build_stages(skip_net(), "modules", example=x)
    assert [s.name for s in blocks] == ["conv1", "bn", "relu", "conv2", "add", "relu_1", "fc"]


def test_stage_that_does_not_return_a_tensor():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ModelError, match="stage 'L0_Pair' returned tuple"):
        profile_model(nn.Sequential(Pair()), (2, 2), repeats=1)


def test_load_target_errors(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("from torch import nn\ndef f():\n    return nn.Sequential(nn.ReLU())\nNOT = 3\n"
                    "def boom():\n    raise RuntimeError('nope')\ndef notmod():\n    return 5\n")
    assert isinstance(load_target(f"{good}:f"), nn.Sequential)
    cases = [
        ("no-colon", "bad TARGET"),
        (f"{tmp_path}/missing.py:f", "no such file"),
        (f"{good}:absent", "has no attribute 'absent'"),
        (f"{good}:NOT", "neither a factory nor an nn.Module"),
        (f"{good}:boom", r"calling boom\(\) failed: RuntimeError: nope"),
        (f"{good}:notmod", "returned int, not an nn.Module"),
        ("edgeplan_no_such_package_xyz:f", "importing 'edgeplan_no_such_package_xyz' failed"),
    ]
    for target, message in cases:
        with pytest.raises(ModelError, match=message):
            load_target(target)


def test_cli_profile_writes_a_valid_model(tmp_path):
    out = tmp_path / "tiny.json"
    runner = CliRunner()
    result = runner.invoke(
        main, ["profile", f"{TINY}:tiny_cnn", "--input", "2,3,32,32", "--repeats", "1", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    model = model_from_dict(doc)
    assert model.is_chain and len(model) == 12 and doc["name"] == "tiny_cnn"
    result = runner.invoke(main, ["profile", f"{TINY}:tiny_cnn", "--input", "2,3,32,32", "--estimate", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["time_unit"] == "flop"


def test_cli_profile_bad_input_exits_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["profile", f"{TINY}:tiny_cnn", "--input", "2,x,3"])
    assert result.exit_code == 2 and "bad shape" in result.output
    result = runner.invoke(main, ["profile", f"{TINY}:nothing", "--input", "2,3,32,32"])
    assert result.exit_code == 2 and "has no attribute 'nothing'" in result.output
    # A shape the model cannot take: a clear message, no traceback, no file.
    out = tmp_path / "m.json"
    result = runner.invoke(main, ["profile", f"{TINY}:tiny_cnn", "--input", "2,5,32,32", "-o", str(out)])
    assert result.exit_code == 2 and "failed" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_robust_time_is_the_median_and_says_the_spread():
    from planner.torch.measure import robust_time

    assert robust_time([]) == (0.0, 0.0)
    assert robust_time([4.0]) == (4.0, 0.0)
    middle, spread = robust_time([1.0, 1.0, 1.0, 1.0, 50.0])  # one burst of load
    assert middle == 1.0 and spread == 0.0
    middle, spread = robust_time([1.0, 2.0, 3.0, 4.0, 5.0])
    assert middle == 3.0 and spread == pytest.approx((4.0 - 2.0) / 3.0)


def test_a_burst_of_load_lands_on_one_round_of_many_stages_not_on_one_stage(monkeypatch):
    """Identical stages get identical times although a burst slows every run in its window."""
    import time

    from planner.torch import measure
    from planner.torch.stages import Stage

    clock = {"now": 0.0, "calls": 0}

    def fake_counter():  # each reading advances 1 ms; readings 40-59 are under a 100x burst
        clock["calls"] += 1
        clock["now"] += 0.1 if 40 <= clock["calls"] < 60 else 0.001
        return clock["now"]

    block = nn.Linear(4, 4)
    stage_list = [Stage(name=f"s{i}", fn=block, inputs=((i - 1,) if i else (-1,))) for i in range(4)]
    x = torch.randn(2, 4)
    monkeypatch.setattr(time, "perf_counter", fake_counter)
    forward, backward = measure.time_stages(stage_list, [(x,)] * 4, [None] * 4, rounds=5, device=torch.device("cpu"))
    times = [measure.robust_time(f)[0] for f in forward] + [measure.robust_time(b)[0] for b in backward]
    assert all(len(f) == 5 for f in forward)
    assert times == [pytest.approx(1.0)] * 8


def test_profile_reports_rounds_threads_and_spread():
    before = torch.get_num_threads()
    doc = profile_model(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), (2, 3), repeats=3, threads=1)
    assert doc["timing"]["rounds"] == 3 and doc["timing"]["threads"] == 1
    assert len(doc["timing"]["spread"]) == 2 and all(s >= 0 for s in doc["timing"]["spread"])
    assert "1 thread, times: median of 3 interleaved rounds, spread" in doc["source"]
    assert torch.get_num_threads() == before  # restored


def test_a_child_that_views_its_input_joins_the_stage_before_it():
    """A Flatten's output is its input's storage: as a layer of its own it was counted twice while both
    lived (a revolve schedule keeping both measured 3.4% under its prediction)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    net[1].eval()  # the user's choice: a dropout in eval mode is a view, but the chain is trained
    doc = profile_model(net, (2, 3, 8, 8), repeats=1)
    assert [l["name"] for l in doc["layers"]] == ["L0_Conv2d", "L1_Dropout+L2_Flatten", "L3_Linear"]
    assert doc["layers"][1]["output_bytes"] == 2 * 4 * 6 * 6 * 4
    lead = profile_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), (2, 3, 4), repeats=1)
    assert [l["name"] for l in lead["layers"]] == ["L0_Flatten+L1_Linear"]
