"""The command line with paging: edgeplan devices, --device, /2 schedules in solve and simulate."""

import json

import pytest
from planner.device import PRESETS
from planner.solvers import STRATEGIES
from tests.conftest import run

PAGING = {name for name, s in STRATEGIES.items() if s.needs_storage}


@pytest.fixture
def chain_file(tmp_path):
    """Six 1000-byte layers of 5 s each: at 5000 bytes a fast storage beats recomputation."""
    doc = {
        "format": "edgeplan-model/1", "name": "slow-chain", "input_bytes": 10, "time_unit": "s",
        "layers": [{"name": f"l{i}", "forward": 5.0, "backward": 5.0, "output_bytes": 1000}
                   for i in range(6)],
    }
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def fast_device(tmp_path):
    doc = {"format": "edgeplan-device/1", "name": "fast", "memory_bytes": 5000,
           "storage": {"read_bytes_per_s": 1e12, "write_bytes_per_s": 1e12}}
    path = tmp_path / "fast.json"
    path.write_text(json.dumps(doc))
    return path


def test_devices_table_and_json():
    r = run("devices")
    assert r.exit_code == 0, r.output
    for name, device in PRESETS.items():
        assert name in r.stdout
        assert device.source[:30] in r.stdout
    assert "45.50 MB/s" in r.stdout and "2.396 ms" in r.stdout
    r = run("devices", "--json")
    docs = json.loads(r.stdout)
    assert [d["name"] for d in docs] == list(PRESETS)
    assert docs[0]["format"] == "edgeplan-device/1" and docs[0]["storage"]["read_bytes_per_s"] == 45.5e6


def test_solve_with_a_device_file_pages_and_simulate_replays_it(chain_file, fast_device, tmp_path):
    out = tmp_path / "s.json"
    r = run("solve", chain_file, "--device", fast_device, "-o", out)
    assert r.exit_code == 0, r.output
    assert "device fast: memory 5,000 bytes" in r.stderr
    assert "pageouts" in r.stderr and "transfer" in r.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == "edgeplan-schedule/3"  # a device file's storage overlaps unless it says not
    assert doc["storage"] == {"read_bytes_per_s": 1e12, "write_bytes_per_s": 1e12,
                              "read_latency_s": 0.0, "write_latency_s": 0.0, "overlap": True}
    assert doc["budget_bytes"] == 5000 and doc["strategy"] in PAGING
    assert doc["predicted"]["pageouts"] >= 1
    sim = run("simulate", chain_file, out, "--memory", "5000", "--json")
    assert sim.exit_code == 0, sim.output
    res = json.loads(sim.stdout)
    assert res["valid"] and res["fits"]
    for key in ("peak_bytes", "compute", "overhead", "transfer", "pageouts", "pageins"):
        assert res[key] == doc["predicted"][key]
    assert doc["predicted"]["time"] <= doc["predicted"]["compute"] + doc["predicted"]["transfer"]
    human = run("simulate", chain_file, out)
    assert human.exit_code == 0 and "pageouts" in human.stdout


def test_memory_overrides_the_device_memory(chain_file, fast_device):
    r = run("solve", chain_file, "--device", fast_device, "--memory", "7000", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["budget_bytes"] == 7000
    assert "overridden by --memory" in r.stderr


def test_without_a_device_nothing_pages(chain_file):
    r = run("solve", chain_file, "--memory", "5000", "--json")
    doc = json.loads(r.stdout)
    assert doc["format"] == "edgeplan-schedule/1" and doc["strategy"] not in PAGING
    r = run("compare", chain_file, "--memory", "5000", "--json")
    assert not PAGING & {row["strategy"] for row in json.loads(r.stdout)}
    assert all("transfer" not in row for row in json.loads(r.stdout))


def test_compare_with_a_device_includes_the_paging_strategies(chain_file, fast_device):
    r = run("compare", chain_file, "--device", fast_device, "--json", "--time-limit", "20")
    assert r.exit_code == 0, r.output
    rows = {row["strategy"]: row for row in json.loads(r.stdout)}
    assert PAGING <= set(rows)
    best = next(row for row in rows.values() if row["best"])
    assert best["strategy"] in PAGING and best["pageouts"] >= 1
    assert rows["dp"]["transfer"] == 0.0 and rows["dp"]["overhead"] > best["overhead"]
    table = run("compare", chain_file, "--device", fast_device, "--strategies", "dp,dp-paging")
    assert table.exit_code == 0 and "out/" in table.stdout
    assert "extra compute and transfer" in table.stdout


def test_sweep_with_a_device(chain_file, fast_device):
    r = run("sweep", chain_file, "--device", fast_device, "--strategies", "dp,dp-paging", "--sizes", "3",
            "--json")
    assert r.exit_code == 0, r.output
    points = json.loads(r.stdout)
    assert {p["strategy"] for p in points} == {"dp", "dp-paging"}
    assert all(p["transfer"] == 0.0 for p in points if p["strategy"] == "dp" and p["feasible"])
    assert any(p["transfer"] > 0 for p in points if p["strategy"] == "dp-paging" and p["feasible"])
    assert max(p["memory_bytes"] for p in points) <= 5000  # --to defaults to the device memory
    plain = run("sweep", chain_file, "--strategies", "dp", "--sizes", "3", "--json")
    assert all("transfer" not in p for p in json.loads(plain.stdout))


def test_usage_errors_exit_2(chain_file, fast_device, tmp_path):
    r = run("solve", chain_file)
    assert r.exit_code == 2 and "give --memory SIZE or --device" in r.stderr
    r = run("solve", chain_file, "--device", "no-such-board")
    assert r.exit_code == 2 and "not a built-in device" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "edgeplan-device/1", "name": "x", "memory_bytes": -1}))
    r = run("compare", chain_file, "--device", bad)
    assert r.exit_code == 2 and "field 'memory_bytes'" in r.stderr
    flop = json.loads(chain_file.read_text())
    flop["time_unit"] = "flop"
    flop_file = tmp_path / "flop.json"
    flop_file.write_text(json.dumps(flop))
    for command in ("solve", "compare"):  # a storage, and no flop_per_s to turn FLOPs into seconds
        r = run(command, flop_file, "--device", fast_device, "--memory", "5000")
        assert r.exit_code == 2 and "time_unit is a time" in r.stderr, r.output
    r = run("solve", chain_file, "--memory", "5000", "--strategy", "page-all")
    assert r.exit_code == 2 and "none is given" in r.stderr


def test_a_device_compute_speed_plans_in_the_devices_seconds(chain_file, tmp_path):
    """FLOPs / flop_per_s, or the profiling machine's time x time_scale; the output says which."""
    flop = json.loads(chain_file.read_text())
    flop["time_unit"] = "flop"
    for layer in flop["layers"]:
        layer["forward"] = layer["backward"] = 5e9  # 5 GFLOP: 41.5 s each on the Pi
    flop_file = tmp_path / "flop.json"
    flop_file.write_text(json.dumps(flop))
    r = run("solve", flop_file, "--device", "rpi4-4gb-sd", "--memory", "4500", "--strategy", "dp-paging", "--json")
    assert r.exit_code == 0, r.output
    assert "planning in the device's seconds (FLOPs / 120.3 MFLOP/s)" in r.stderr
    pi = json.loads(r.stdout)["predicted"]
    assert pi["compute"] == pytest.approx(5e9 / PRESETS["rpi4-4gb-sd"].compute.flop_per_s * (12 + pi["forwards"] - 6))
    scaled = tmp_path / "scaled.json"
    scaled.write_text(json.dumps({"format": "edgeplan-device/1", "name": "slow", "memory_bytes": 4500,
                                  "storage": PRESETS["rpi4-4gb-sd"].storage.to_dict(),
                                  "compute": {"time_scale": 100}}))
    for command in (("compare",), ("sweep", "--steps", "2")):
        r = run(*command, chain_file, "--device", scaled, "--strategies", "dp,dp-paging")
        assert r.exit_code in (0, 1) and "planning in the device's seconds (s x100)" in r.stderr, r.output
    r = run("compare", chain_file, "--device", "rpi4-4gb-sd", "--memory", "4500", "--strategies", "dp")
    assert "times are the model's own (s): the device's compute has no time_scale" in r.stderr
    out = tmp_path / "pi.json"
    assert run("solve", flop_file, "--device", "rpi4-4gb-sd", "--memory", "4500", "-o", out).exit_code == 0
    assert run("simulate", flop_file, out).exit_code == 2  # FLOPs cannot be added to transfer seconds
    r = run("simulate", flop_file, out, "--device", "rpi4-4gb-sd", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["overhead"] == json.loads(out.read_text())["predicted"]["overhead"]


def test_simulate_a_paging_schedule_on_a_model_without_a_time_unit(chain_file, fast_device, tmp_path):
    out = tmp_path / "s.json"
    assert run("solve", chain_file, "--device", fast_device, "-o", out).exit_code == 0
    doc = json.loads(chain_file.read_text())
    del doc["time_unit"]
    chain_file.write_text(json.dumps(doc))
    r = run("simulate", chain_file, out)
    assert r.exit_code == 2 and "time_unit is a time" in r.stderr


def test_verify_runs_paging_schedules(tmp_path):
    """verify runs a /2 schedule and reports the measured transfer next to the predicted one."""
    pytest.importorskip("torch")
    import os

    from planner.torch.profile import profile_model
    from planner.model import model_from_dict
    from planner.schedule import OpKind, Schedule, pageout
    from planner.simulate import simulate
    from planner.solvers import solve
    from tests.models_torch import deeper_cnn

    shape = (2, 3, 16, 16)
    model = model_from_dict(profile_model(deeper_cnn(), shape, repeats=1, name="deeper_cnn"))
    ops = list(solve(model, None, "store-all").ops)
    first = next(k for k, op in enumerate(ops) if op.kind is OpKind.FORWARD)
    ops.insert(first + 1, pageout(ops[first].layer))
    storage = PRESETS["rpi4-4gb-sd"].storage
    result = simulate(model, ops, storage=storage)
    assert result.valid and result.pageouts == 1
    sched = tmp_path / "s.json"
    Schedule(model.name, model.fingerprint, "hand", tuple(ops), predicted=result.predicted(),
             storage=storage).write(sched, model)
    factory = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models_torch.py") + ":deeper_cnn"
    r = run("verify", factory, "--input", ",".join(map(str, shape)), "--schedule", sched)
    assert r.exit_code == 0, r.output
    assert "grads_match: true" in r.stdout and "(1 pageouts, 0 pageins)" in r.stdout
    assert "ms measured, predicted" in r.stdout


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "device file is empty"),
        ('{"format": "edgeplan-device/1", "name": "x", "memory_bytes": NaN}', "memory_bytes"),
        ('{"format": "edgeplan-device/1", "name": "x", "name": "y", "memory_bytes": 5}', "name"),
        ('{"format": "edgeplan-device/1", "name": "x", "memory_bytes": 1180591620717411303424}',
         "beyond 2\\*\\*62 bytes"),
        ('{"format": "edgeplan-device/1", "name": "x", "memory_bytes": 5, "storage": []}',
         "field 'storage'"),
    ],
)
def test_hostile_device_files_get_one_line_and_exit_2(chain_file, tmp_path, text, message):
    import re

    path = tmp_path / "dev.json"
    path.write_text(text)
    r = run("solve", chain_file, "--device", path)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1
    assert re.search(message, r.stderr), r.stderr
