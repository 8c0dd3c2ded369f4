"""planner.device: Storage, Device, the presets and edgeplan-device/1 files."""

import json

import pytest

from planner.device import (
    DEVICE_FORMAT,
    PRESETS,
    TIME_UNITS,
    Compute,
    Device,
    Storage,
    device_from_dict,
    device_time,
    load_device,
    step_energy,
    time_scale,
)
from planner.errors import DeviceError, ModelError
from planner.model import model_from_dict
from tests.conftest import schema_errors


def test_storage_costs():
    s = Storage(2e6, 1e6, read_latency_s=0.5, write_latency_s=0.25)
    assert s.pagein_seconds(4e6) == 0.5 + 2.0
    assert s.pageout_seconds(4e6) == 0.25 + 4.0
    assert s.pagein_seconds(0) == 0.5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(read_bytes_per_s=0, write_bytes_per_s=1), "read_bytes_per_s"),
        (dict(read_bytes_per_s=1, write_bytes_per_s=-1), "write_bytes_per_s"),
        (dict(read_bytes_per_s=float("inf"), write_bytes_per_s=1), "read_bytes_per_s"),
        (dict(read_bytes_per_s=True, write_bytes_per_s=1), "read_bytes_per_s"),
        (dict(read_bytes_per_s=1, write_bytes_per_s=1, read_latency_s=-0.1), "read_latency_s"),
        (dict(read_bytes_per_s=1, write_bytes_per_s=1, write_latency_s=float("nan")), "write_latency_s"),
        (dict(read_bytes_per_s=1, write_bytes_per_s=1, bytes=0), "bytes"),
        (dict(read_bytes_per_s=1, write_bytes_per_s=1, bytes=1.5), "bytes"),
    ],
)
def test_storage_rejects_out_of_range_fields(kwargs, field):
    with pytest.raises(ValueError, match=rf"field 'storage\.{field}'"):
        Storage(**kwargs)


# POET's figures (bytes/s, seconds), as the issue gives them.
POET = {
    "rpi4-4gb-sd": (45.5e6, 24.5e6, 5.1e-6, 18.5e-6),
    "jetson-tx2-8gb": (108.5e6, 94.37e6, 0.54e-3, 2.396e-3),
    "cortex-m4f-sd": (4.6e6, 4.44e6, 0.109e-3, 0.113e-3),
}


def test_presets_have_sources_memory_and_valid_documents():
    assert set(POET) < set(PRESETS)
    for name, device in PRESETS.items():
        assert device.name == name
        assert device.memory_bytes > 0 and device.storage is not None
        assert "POET" in device.source or "PCIe" in device.source
        doc = device.to_dict()
        assert schema_errors(doc, "device.schema.json") == []
        assert device_from_dict(doc) == device
    for name, figures in POET.items():
        s = PRESETS[name].storage
        assert (s.read_bytes_per_s, s.write_bytes_per_s, s.read_latency_s, s.write_latency_s) == figures
    assert PRESETS["rpi4-4gb-sd"].compute.flop_per_s == pytest.approx(120.34e6, rel=1e-4)  # POET's RPi
    assert PRESETS["cortex-m4f-sd"].compute.flop_per_s == pytest.approx(6.37e6, rel=1e-3)  # POET's M4F
    assert all(d.compute is not None and d.compute.time_scale is None for d in PRESETS.values())
    pi, m4 = PRESETS["rpi4-4gb-sd"], PRESETS["cortex-m4f-sd"]  # POET's POWER and MEMORY_POWER
    assert (pi.compute.power_w, pi.storage.transfer_power_w) == (3.0, 0.15)
    assert (m4.compute.power_w, m4.storage.transfer_power_w) == (pytest.approx(3.328e-3 * 3.3), 0.33)
    gpu = [d for d in PRESETS.values() if "PCIe 4.0 x16" in d.source]
    assert len(gpu) == 1 and gpu[0].storage.read_bytes_per_s == gpu[0].storage.write_bytes_per_s == 25e9


def test_load_device_by_name_and_file(tmp_path):
    assert load_device("rpi4-4gb-sd") is PRESETS["rpi4-4gb-sd"]
    path = tmp_path / "board.json"
    path.write_text(json.dumps({
        "format": DEVICE_FORMAT, "name": "my-board", "memory_bytes": 512 * 2**20,
        "storage": {"read_bytes_per_s": 20e6, "write_bytes_per_s": 10e6, "bytes": 2**30},
        "source": "measured with dd",
    }))
    device = load_device(path)
    # a device file's storage overlaps transfers with compute unless it says "overlap": false
    assert device == Device("my-board", 512 * 2**20, Storage(20e6, 10e6, bytes=2**30, overlap=True), "measured with dd")
    path.write_text(json.dumps({"format": DEVICE_FORMAT, "name": "plain", "memory_bytes": 10}))
    assert load_device(str(path)).storage is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="edgeplan-device/2"), r"field 'format': expected \"edgeplan-device/1\""),
        (lambda d: d.pop("memory_bytes"), r"field 'memory_bytes': missing"),
        (lambda d: d.update(memory_bytes=0), r"field 'memory_bytes': must be > 0"),
        (lambda d: d.update(memory_bytes="1GB"), r"field 'memory_bytes': must be an integer"),
        (lambda d: d["storage"].update(read_bytes_per_s=0), r"field 'storage.read_bytes_per_s': must be > 0"),
        (lambda d: d["storage"].pop("write_bytes_per_s"), r"field 'storage.write_bytes_per_s': missing"),
        (lambda d: d["storage"].update(read_latency_s=-1), r"field 'storage.read_latency_s': must be >= 0"),
        (lambda d: d["storage"].update(bytes=-5), r"field 'storage.bytes': must be > 0"),
        (lambda d: d["compute"].update(flop_per_s=0), r"field 'compute.flop_per_s': must be > 0"),
        (lambda d: d.update(compute={}), r"field 'compute'"),
        (lambda d: d.update(compute={"time_scale": -2}), r"field 'compute.time_scale': must be > 0"),
    ],
)
def test_bad_device_files_name_the_field(tmp_path, edit, message):
    doc = PRESETS["jetson-tx2-8gb"].to_dict()
    edit(doc)
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DeviceError, match=message) as info:
        load_device(path)
    assert str(info.value).startswith(str(path))


def test_unknown_device_and_unreadable_files(tmp_path):
    with pytest.raises(DeviceError, match="not a built-in device .*rpi4-4gb-sd"):
        load_device("rpi5")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DeviceError, match="bad.json"):
        load_device(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DeviceError, match="top level must be a JSON object"):
        load_device(bad)


def _model(unit):
    doc = {"format": "edgeplan-model/1", "name": "m", "input_bytes": 0,
           "layers": [{"name": "a", "forward": 1, "backward": 1, "output_bytes": 1}]}
    if unit is not None:
        doc["time_unit"] = unit
    return model_from_dict(doc)


def test_time_scale():
    assert {u: time_scale(_model(u)) for u in TIME_UNITS} == {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}
    for unit in ("flop", "MS", None):
        with pytest.raises(ModelError, match="time_unit is a time"):
            time_scale(_model(unit))


def test_step_energy_is_power_times_time():
    device = PRESETS["rpi4-4gb-sd"]
    assert step_energy(device, 10.0, 2.0) == pytest.approx(10 * 3.0 + 2 * 0.15)
    assert step_energy(device, 10.0, 0.0) == pytest.approx(30.0)
    assert step_energy(Device("d", 1, compute=Compute(flop_per_s=1.0)), 1.0, 0.0) is None
    with pytest.raises(ValueError, match="transfer_power_w"):
        Storage(1, 1, transfer_power_w=0)


def test_compute_rejects_no_figure_and_out_of_range():
    with pytest.raises(ValueError, match="give flop_per_s or time_scale"):
        Compute()
    with pytest.raises(ValueError, match=r"field 'compute\.time_scale'"):
        Compute(time_scale=float("inf"))


def test_device_time_turns_flops_or_profiled_times_into_device_seconds():
    flops, ms = _model("flop"), _model("ms")
    both = Device("d", 10, compute=Compute(flop_per_s=1e6, time_scale=40.0))
    m, note = device_time(flops, both)
    assert (m.time_unit, m.layers[0].forward, m.fingerprint) == ("s", 1e-6, flops.fingerprint)
    assert "FLOPs / 1 MFLOP/s" in note
    m, note = device_time(ms, both)
    assert (m.time_unit, m.layers[0].backward) == ("s", pytest.approx(0.04)) and "ms x40" in note
    for model, device in ((ms, Device("d", 10, compute=Compute(flop_per_s=1e6))),
                          (flops, Device("d", 10, compute=Compute(time_scale=3.0))),
                          (_model(None), both), (ms, Device("d", 10))):
        same, note = device_time(model, device)
        assert same is model and "times are the model's own" in note


def test_the_device_file_in_docs_format_md_loads(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    block = text.split("### Device files", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    path = tmp_path / "my-pi.json"
    path.write_text(block)
    device = load_device(path)
    assert device.storage == Storage(40e6, 20e6, read_latency_s=5e-6, write_latency_s=2e-5, bytes=8 * 10**9,
                                     overlap=True)
