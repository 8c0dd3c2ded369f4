"""--objective time|energy and --time-budget: what the paging strategies minimise, and the joules a schedule predicts.

docs/format.md, "Energy in a schedule" and "The objective".  The hot-storage
chain below is made so that the two objectives disagree: a transfer takes 0.1 s
(a forward 5 s) but draws 100 W (compute 1 W), so the fastest schedule pages
and the least-energy one recomputes.
"""

import json

import pytest

from planner.api import plan
from planner.device import PRESETS, device_time, load_device, step_energy
from planner.errors import InfeasibleError, OptionError
from planner.model import load_model
from planner.objective import objective_for
from planner.schedule import load_schedule
from planner.schemas import check_schedule_document
from tests.conftest import EXAMPLES, run
from tests.reference import reference_replay

FLOP = EXAMPLES / "flop"
EDGE = ("rpi4-4gb-sd", "cortex-m4f-sd")


@pytest.fixture
def hot(tmp_path):
    """(model file, device file): eight 5 s layers of 1000 bytes; transfers of 0.1 s at 100 W, compute 1 W."""
    model = {"format": "edgeplan-model/1", "name": "hot-storage", "input_bytes": 10, "time_unit": "s",
             "layers": [{"name": f"l{i}", "forward": 5.0, "backward": 5.0, "output_bytes": 1000} for i in range(8)]}
    device = {"format": "edgeplan-device/1", "name": "hot", "memory_bytes": 5000,
              "storage": {"read_bytes_per_s": 1e4, "write_bytes_per_s": 1e4, "transfer_power_w": 100.0,
                          "overlap": False},
              "compute": {"time_scale": 1.0, "power_w": 1.0}}
    paths = tmp_path / "hot.json", tmp_path / "hot-device.json"
    for path, doc in zip(paths, (model, device)):
        path.write_text(json.dumps(doc))
    return paths


def _at_share(model_path, device, share):
    """The memory at ``share`` of store-all's activation peak on ``device``."""
    top = plan(model_path, "1TB", device=device, strategy="store-all")
    return top.split.fixed_bytes + int(top.simulation.peak_bytes * share)


# ---- the command line: bad usage is one line and exit 2, nothing written ------------------------------


@pytest.mark.parametrize("args, message", [
    ((EXAMPLES / "resnet18.json", "--memory", "300MB"), "--objective energy needs a device with power figures"),
    ((FLOP / "resnet18.json", "--device", "gpu-a100-80gb-pcie4-host", "--memory", "300MB"),
     "needs the device's compute.power_w"),
])
@pytest.mark.parametrize("command", ["solve", "compare"])
def test_energy_without_power_figures_is_bad_usage(command, args, message, tmp_path):
    out = tmp_path / "s.json"
    extra = ("-o", out) if command == "solve" else ()
    r = run(command, *args, "--objective", "energy", *extra)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_energy_needs_the_transfer_power_and_seconds(hot, tmp_path):
    model, device = hot
    doc = json.loads(device.read_text())
    del doc["storage"]["transfer_power_w"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(doc))
    r = run("solve", model, "--device", bare, "--objective", "energy")
    assert r.exit_code == 2 and "needs the storage's transfer_power_w" in r.output
    # a FLOP-counted model on a device that only scales times: no seconds, no joules, no time budget
    del doc["storage"]
    scaled = tmp_path / "scaled.json"
    scaled.write_text(json.dumps(doc))
    r = run("sweep", FLOP / "resnet18.json", "--device", scaled, "--objective", "energy")
    assert r.exit_code == 2 and "needs the model's times in seconds" in r.output, r.output
    r = run("compare", FLOP / "resnet18.json", "--device", scaled, "--memory", "300MB", "--time-budget", "5")
    assert r.exit_code == 2 and "--time-budget needs the model's times in seconds" in r.output
    for bad in ("0", "-1", "soon"):
        r = run("solve", model, "--device", device, "--time-budget", bad)
        assert r.exit_code == 2 and "--time-budget" in r.output
    r = run("solve", model, "--device", device, "--objective", "joules")
    assert r.exit_code == 2 and "'joules' is not one of 'time', 'energy'" in r.output


def test_the_library_says_the_same():
    model = load_model(EXAMPLES / "resnet18.json")
    with pytest.raises(OptionError, match="unknown objective 'cost'"):
        objective_for(model, None, "cost")
    with pytest.raises(OptionError, match="--time-budget must be a positive number"):
        objective_for(model, None, time_budget=0)
    with pytest.raises(OptionError, match="needs a device"):
        plan(model, "300MB", objective="energy")


@pytest.mark.parametrize("strategy", ["dp-paging", "page-records", "milp-paging"])
@pytest.mark.parametrize("seconds", [0, -1.0, float("inf"), "5", True])
def test_solvers_check_their_time_budget(hot, strategy, seconds):
    from planner.solvers import STRATEGIES

    model, device = hot
    solver = STRATEGIES[strategy].load()
    with pytest.raises(OptionError, match="time_budget must be a positive number of seconds"):
        solver(load_model(model), budget=5000, storage=load_device(device).storage, time_budget=seconds)


# ---- the objective energy never costs more joules than the objective time --------------------------------


@pytest.mark.parametrize("device", EDGE)
@pytest.mark.parametrize("name, share", [("resnet18", 0.5), ("mobilenet_v2", 0.5), ("small_gpt", 0.6)])
@pytest.mark.parametrize("strategy", ["dp-paging", "page-records"])  # auto: test_energy_objective_pays_on_the_cortex_m4f
def test_energy_objective_never_gives_more_joules(name, share, device, strategy):
    memory = _at_share(FLOP / f"{name}.json", device, share)
    time, energy = (plan(FLOP / f"{name}.json", memory, device=device, strategy=strategy, objective=objective)
                    for objective in ("time", "energy"))
    assert time.success and energy.success
    assert energy.energy_j <= time.energy_j * (1 + 1e-9)
    assert time.simulation.step_time <= energy.simulation.step_time * (1 + 1e-9) or strategy == "dp-paging"
    assert energy.peak_bytes <= energy.split.activation_bytes


def test_energy_objective_pays_on_the_cortex_m4f():
    """A transfer draws 30x the compute power there: the fastest plan (paging records) costs joules."""
    memory = _at_share(FLOP / "resnet18.json", "cortex-m4f-sd", 0.5)
    time, energy = (plan(FLOP / "resnet18.json", memory, device="cortex-m4f-sd", objective=objective)
                    for objective in ("time", "energy"))
    assert time.strategy == "page-records"
    assert energy.energy_j < 0.97 * time.energy_j
    assert time.simulation.step_time < energy.simulation.step_time


def test_milp_paging_minimises_joules(hot):
    model, device = hot
    time, energy = (plan(model, None, device=device, strategy="milp-paging", objective=objective)
                    for objective in ("time", "energy"))
    assert time.params["proven_optimal"] and energy.params["proven_optimal"]
    assert energy.params["objective"] == "energy"
    assert (time.energy_j, time.simulation.step_time) == pytest.approx((170.0, 110.6))
    assert (energy.energy_j, energy.simulation.step_time) == pytest.approx((150.0, 130.2))


# ---- the time budget -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["dp-paging", "milp-paging", "page-records", "auto"])
@pytest.mark.parametrize("seconds, joules", [(112.0, 170.0), (119.0, 155.0), (140.0, 150.0)])
def test_time_budget_is_honoured(hot, strategy, seconds, joules):
    model, device = hot
    r = plan(model, None, device=device, strategy=strategy, objective="energy", time_budget=seconds)
    assert r.success, r.message
    assert r.simulation.step_time <= seconds
    assert r.energy_j == pytest.approx(joules)  # milp-paging proves these; the Lagrangian finds them here
    if strategy == "dp-paging":
        method = r.params["time_budget_method"]
        assert method == ("unconstrained" if seconds >= 130.2 else "lagrangian")


@pytest.mark.parametrize("strategy", ["dp-paging", "milp-paging", "page-records", "auto", "dp"])
def test_a_time_budget_below_every_schedule_is_infeasible(hot, strategy):
    model, device = hot
    r = plan(model, None, device=device, strategy=strategy, objective="energy", time_budget=100)
    assert not r.success and isinstance(r.error, InfeasibleError)
    assert "time budget of 100 s" in r.message


def test_time_budget_on_the_command_line(hot, tmp_path):
    model, device = hot
    out = tmp_path / "s.json"
    r = run("solve", model, "--device", device, "--strategy", "dp", "--time-budget", "100", "-o", out, "--json")
    assert r.exit_code == 1, r.output
    assert "more than the time budget of 100 s" in json.loads(r.stdout)["error"]
    assert not out.exists()
    r = run("solve", model, "--device", device, "--objective", "energy", "--time-budget", "119", "-o", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["predicted"]["compute"] + doc["predicted"]["transfer"] <= 119
    assert doc["predicted"]["energy_j"] == pytest.approx(155.0)
    assert "energy: 155 J a step" in r.stderr


# ---- joules in the schedule file --------------------------------------------------------------------------


@pytest.mark.parametrize("device", EDGE)
@pytest.mark.parametrize("strategy", ["page-records", "dp", "milp-paging"])
def test_predicted_energy_is_step_energy_and_the_reference_replays_it(device, strategy, tmp_path):
    memory = _at_share(FLOP / "resnet18.json", device, 0.5)
    options = {"time_limit": 2} if strategy == "milp-paging" else {}
    r = plan(FLOP / "resnet18.json", memory, device=device, strategy=strategy, objective="energy", **options)
    dev, sim = load_device(device), r.simulation
    assert r.model.time_unit == "s"  # planned in the device's seconds
    assert r.energy_j == pytest.approx(step_energy(dev, sim.compute, sim.transfer), rel=1e-12)
    path = tmp_path / "s.json"
    r.schedule.write(path, r.model)
    doc = json.loads(path.read_text())
    check_schedule_document(doc)
    assert doc["power_w"] == dev.compute.power_w
    replayed = reference_replay(r.model.to_dict(), doc)
    assert replayed["valid"] and replayed["energy_j"] == pytest.approx(doc["predicted"]["energy_j"], rel=1e-9)
    again = load_schedule(path, r.model)
    assert again.power_w == dev.compute.power_w and again.predicted == r.schedule.predicted
    assert again.format == r.schedule.format


def test_schedules_without_power_figures_have_no_joules_and_old_files_still_read(tmp_path):
    model = load_model(EXAMPLES / "resnet18.json")
    r = plan(model, "300MB")
    assert r.energy_j is None and r.schedule.power_w is None
    path = tmp_path / "s.json"
    r.schedule.write(path, model)
    doc = json.loads(path.read_text())
    assert "power_w" not in doc and "energy_j" not in doc["predicted"]
    assert "energy_j" not in reference_replay(model.to_dict(), doc)
    assert load_schedule(path, model).power_w is None
    doc["power_w"] = -3
    path.write_text(json.dumps(doc))
    r = run("simulate", EXAMPLES / "resnet18.json", path)
    assert r.exit_code == 2 and "power_w" in r.output


def test_compare_and_sweep_show_joules():
    memory = _at_share(FLOP / "resnet18.json", "cortex-m4f-sd", 0.5)
    args = (FLOP / "resnet18.json", "--device", "cortex-m4f-sd", "--memory", memory,
            "--strategies", "dp,dp-paging,page-records")
    r = run("compare", *args, "--objective", "energy", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    best = next(row for row in rows if row["best"])
    assert best["energy_j"] == min(row["energy_j"] for row in rows if row["feasible"])
    assert [row["energy_j"] for row in rows] == sorted(row["energy_j"] for row in rows)
    text = run("compare", *args, "--objective", "energy")
    assert " energy " in text.output and " J a step)" in text.output
    r = run("sweep", FLOP / "resnet18.json", "--device", "rpi4-4gb-sd", "--strategies", "dp", "--sizes", "2",
            "--objective", "energy", "--json")
    assert r.exit_code == 0, r.output
    pi = PRESETS["rpi4-4gb-sd"]
    seconds = device_time(load_model(FLOP / "resnet18.json"), pi)[0]
    assert seconds.time_unit == "s"
    for point in json.loads(r.stdout):
        if point["feasible"]:
            assert point["energy_j"] == pytest.approx(point["compute"] * pi.compute.power_w)
    text = run("sweep", FLOP / "resnet18.json", "--device", "rpi4-4gb-sd", "--strategies", "dp", "--sizes", "2",
               "--objective", "energy")
    assert " J*" in text.output and "joules of a step (--objective energy)" in text.output
