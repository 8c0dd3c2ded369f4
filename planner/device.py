"""Devices and their second storage (SPEC section 5): ``edgeplan-device/1``.

A :class:`Storage` is where layer outputs can be paged out to and read back
from (an SD card, eMMC, host memory for a GPU); a :class:`Compute` is how fast
the device computes; a :class:`Device` is a memory size and optionally a
storage and a compute speed.  :func:`device_time` turns a model's times into
the device's seconds.  :data:`PRESETS` are built-in devices named
after what users own; :func:`load_device` takes a preset name or a device file.

Transfer times are in seconds here; :func:`time_scale` converts them to a
model's ``time_unit``.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from planner.errors import DeviceError, ModelError

__all__ = [
    "DEVICE_FORMAT",
    "TIME_UNITS",
    "Storage",
    "Compute",
    "Device",
    "device_time",
    "step_energy",
    "PRESETS",
    "time_scale",
    "storage_from_dict",
    "compute_from_dict",
    "device_from_dict",
    "load_device",
]

DEVICE_FORMAT = "edgeplan-device/1"

#: Model ``time_unit`` -> how many of it make one second.
TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}

_RATES = ("read_bytes_per_s", "write_bytes_per_s")
_LATENCIES = ("read_latency_s", "write_latency_s")
_SPEEDS = ("flop_per_s", "time_scale")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Storage:
    """A second, slower storage for paged layer outputs.

    Attributes
    ----------
    read_bytes_per_s, write_bytes_per_s : float
        Sustained rates, > 0.
    read_latency_s, write_latency_s : float
        Fixed cost of each transfer, >= 0.
    bytes : int or None
        Capacity: the paged outputs may never exceed it (None: unlimited).
    overlap : bool
        Transfers run on a copy engine beside compute, one at a time
        (:mod:`planner.timing`); False: they stop compute (SPEC section 5's
        serial model).  Device files default to True, ``edgeplan-schedule/2``
        files are serial and ``/3`` files overlap.
    transfer_power_w : float or None
        Watts drawn while a transfer runs (POET's memory power): a transfer
        of ``t`` seconds costs ``t x transfer_power_w`` joules.

    Raises
    ------
    ValueError
        On construction, naming the field that is out of range.
    """

    read_bytes_per_s: float
    write_bytes_per_s: float
    read_latency_s: float = 0.0
    write_latency_s: float = 0.0
    bytes: int = None
    overlap: bool = False
    transfer_power_w: float = None

    def __post_init__(self):
        for key in _RATES:
            value = getattr(self, key)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"field 'storage.{key}': must be a number > 0, got {value!r}")
        for key in _LATENCIES:
            value = getattr(self, key)
            if not _is_number(value) or value < 0:
                raise ValueError(f"field 'storage.{key}': must be a number >= 0, got {value!r}")
        cap = self.bytes
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0):
            raise ValueError(f"field 'storage.bytes': must be an integer > 0 or absent, got {cap!r}")
        if not isinstance(self.overlap, bool):
            raise ValueError(f"field 'storage.overlap': must be true or false, got {self.overlap!r}")
        power = self.transfer_power_w
        if power is not None and (not _is_number(power) or power <= 0):
            raise ValueError(f"field 'storage.transfer_power_w': must be a number > 0, got {power!r}")

    def pageout_seconds(self, nbytes):
        """Seconds to write ``nbytes``: ``write_latency_s + nbytes / write_bytes_per_s``."""
        return self.write_latency_s + nbytes / self.write_bytes_per_s

    def pagein_seconds(self, nbytes):
        """Seconds to read ``nbytes`` back: ``read_latency_s + nbytes / read_bytes_per_s``."""
        return self.read_latency_s + nbytes / self.read_bytes_per_s

    def to_dict(self):
        """The ``storage`` object of device and ``edgeplan-schedule/2`` files."""
        doc = {key: getattr(self, key) for key in _RATES + _LATENCIES}
        if self.bytes is not None:
            doc["bytes"] = self.bytes
        if self.overlap:
            doc["overlap"] = True
        if self.transfer_power_w is not None:
            doc["transfer_power_w"] = self.transfer_power_w
        return doc


@dataclass(frozen=True)
class Compute:
    """How fast a device computes, as one or both of two figures.

    Attributes
    ----------
    flop_per_s : float or None
        Sustained FLOP/s: a model timed in FLOPs (``time_unit`` ``flop``:
        ``profile --estimate``, ``import``) takes ``time / flop_per_s``
        seconds on the device.
    time_scale : float or None
        How many times longer the device takes than the machine that profiled
        the model: a model timed in ``s``, ``ms``, ``us`` or ``ns`` takes its
        time in seconds ``x time_scale`` on the device.  It is relative to
        one profiling machine, so only device files carry it, never presets.
    power_w : float or None
        Watts drawn while computing (above idle): ``t`` seconds of compute
        cost ``t x power_w`` joules.

    Raises
    ------
    ValueError
        On construction: neither figure, or one <= 0.
    """

    flop_per_s: float = None
    time_scale: float = None
    power_w: float = None

    def __post_init__(self):
        if self.flop_per_s is None and self.time_scale is None:
            raise ValueError("field 'compute': give flop_per_s or time_scale (or both)")
        for key in _SPEEDS + ("power_w",):
            value = getattr(self, key)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ValueError(f"field 'compute.{key}': must be a number > 0, got {value!r}")

    def to_dict(self):
        """The ``compute`` object of device files."""
        return {key: getattr(self, key) for key in _SPEEDS + ("power_w",) if getattr(self, key) is not None}

    def text(self):
        """``120.3 MFLOP/s``, ``x40 the profiling machine's time`` or both."""
        parts = []
        if self.flop_per_s is not None:
            parts.append(_flops_text(self.flop_per_s))
        if self.time_scale is not None:
            parts.append(f"x{self.time_scale:.4g} the profiling machine's time")
        return ", ".join(parts)


def _flops_text(value):
    for prefix, factor in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= factor:
            return f"{value / factor:.4g} {prefix}FLOP/s"
    return f"{value:.4g} FLOP/s"


@dataclass(frozen=True)
class Device:
    """A device: the memory a training step may use, and an optional storage.

    Attributes
    ----------
    name : str
    memory_bytes : int
        What ``--memory`` would give.
    storage : Storage or None
    source : str
        Where the figures come from.
    compute : Compute or None
        How fast it computes (None: the model's times are taken as they are).
    """

    name: str
    memory_bytes: int
    storage: Storage = None
    source: str = ""
    compute: Compute = None

    def to_dict(self):
        """The ``edgeplan-device/1`` document."""
        doc = {"format": DEVICE_FORMAT, "name": self.name, "memory_bytes": self.memory_bytes}
        if self.storage is not None:
            doc["storage"] = self.storage.to_dict()
        if self.compute is not None:
            doc["compute"] = self.compute.to_dict()
        if self.source:
            doc["source"] = self.source
        return doc


def time_scale(model):
    """How many of ``model``'s time unit make one second.

    Raises
    ------
    ModelError
        If the model's ``time_unit`` is not ``s``, ``ms``, ``us`` or ``ns``:
        paging costs are times, and cannot be added to other units.
    """
    unit = model.time_unit
    if unit not in TIME_UNITS:
        raise ModelError(
            f"model {model.name!r}: paging needs a model whose time_unit is a time "
            f"({', '.join(TIME_UNITS)}), got {unit!r}" + ("" if unit else " (none given)")
        )
    return TIME_UNITS[unit]


def device_time(model, device):
    """``(model, note)``: ``model`` with its times in ``device``'s seconds, and what was done.

    A model timed in FLOPs on a device with ``flop_per_s``, or timed in a
    time unit on a device with ``time_scale``, comes back with every forward
    and backward in seconds on the device (``time_unit`` ``s``; the
    fingerprint, which holds no times, is unchanged, so its schedules are
    the original model's).  Otherwise the model comes back as it is, and the
    note says why its times are not the device's.
    """
    compute = device.compute
    unit = model.time_unit
    if compute is None:
        return model, "no compute speed: times are the model's own"
    if unit == "flop" and compute.flop_per_s is not None:
        per_unit, how = 1.0 / compute.flop_per_s, f"FLOPs / {_flops_text(compute.flop_per_s)}"
    elif unit in TIME_UNITS and compute.time_scale is not None:
        per_unit, how = compute.time_scale / TIME_UNITS[unit], f"{unit} x{compute.time_scale:.4g}"
    else:
        need = "time_scale" if unit in TIME_UNITS else "flop_per_s"
        return model, (
            f"times are the model's own ({unit or 'no unit'}): the device's compute has no {need} "
            + ("(profile --estimate gives FLOPs)" if need == "time_scale" else "")
        ).rstrip()
    from planner.model import model_from_dict

    doc = model.to_dict()
    doc["time_unit"] = "s"
    for layer in doc["layers"]:
        layer["forward"] *= per_unit
        layer["backward"] *= per_unit
    return model_from_dict(doc), f"planning in the device's seconds ({how})"


def step_energy(device, compute_seconds, transfer_seconds):
    """Joules of a training step on ``device``, or None without both power figures.

    ``compute_seconds x compute.power_w + transfer_seconds x
    storage.transfer_power_w`` (POET's model: energy is power times the time
    each part runs, whether or not transfers overlap compute).
    """
    compute, storage = device.compute, device.storage
    if compute is None or compute.power_w is None:
        return None
    joules = compute_seconds * compute.power_w
    if transfer_seconds:
        if storage is None or storage.transfer_power_w is None:
            return None
        joules += transfer_seconds * storage.transfer_power_w
    return joules


def compute_from_dict(document, *, source_name="<device>"):
    """A :class:`Compute` from a parsed ``compute`` object (raises :class:`DeviceError`)."""
    if not isinstance(document, dict):
        raise DeviceError(f"{source_name}: field 'compute': must be a JSON object")
    try:
        return Compute(**{key: document[key] for key in _SPEEDS + ("power_w",) if key in document})
    except ValueError as exc:
        raise DeviceError(f"{source_name}: {exc}") from None


def storage_from_dict(document, *, error=DeviceError, source_name="<device>", overlap=True):
    """A :class:`Storage` from a parsed ``storage`` object.

    Parameters
    ----------
    document : object
    error : type, keyword-only
        The exception class to raise (:class:`~planner.errors.DeviceError`,
        :class:`~planner.errors.ScheduleFormatError`).
    source_name : str, keyword-only
        The file name for messages.
    overlap : bool, keyword-only
        ``overlap`` when the object does not say (True for device files).
    """
    if not isinstance(document, dict):
        raise error(f"{source_name}: field 'storage': must be a JSON object")
    kwargs = {}
    for key in _RATES:
        if key not in document:
            raise error(f"{source_name}: field 'storage.{key}': missing")
    for key in _RATES + _LATENCIES + ("bytes", "overlap", "transfer_power_w"):
        if key in document:
            kwargs[key] = document[key]
    kwargs.setdefault("overlap", overlap)
    try:
        return Storage(**kwargs)
    except ValueError as exc:
        raise error(f"{source_name}: {exc}") from None


def device_from_dict(document, *, source_name="<device>"):
    """A :class:`Device` from a parsed ``edgeplan-device/1`` document.

    Raises
    ------
    DeviceError
        Naming the file and the field, for anything the schema
        (``device.schema.json``) rejects.
    """
    from planner.schemas import check_device_document

    check_device_document(document, source_name=source_name)
    storage = document.get("storage")
    if storage is not None:
        storage = storage_from_dict(storage, source_name=source_name)
    compute = document.get("compute")
    if compute is not None:
        compute = compute_from_dict(compute, source_name=source_name)
    return Device(
        name=document["name"],
        memory_bytes=document["memory_bytes"],
        storage=storage,
        source=document.get("source", ""),
        compute=compute,
    )


def load_device(name_or_path):
    """A built-in preset by name, or an ``edgeplan-device/1`` file.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A key of :data:`PRESETS`, else a path.

    Raises
    ------
    DeviceError
        Neither a preset nor a readable, valid device file.
    """
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    from planner.model import read_json_file

    if not Path(key).exists():
        raise DeviceError(
            f"{key}: no such device file, and not a built-in device (one of: {', '.join(PRESETS)})"
        )
    document = read_json_file(key, error=DeviceError, what="device file")
    return device_from_dict(document, source_name=key)


_POET = (
    "Patil et al., POET (ICML 2022), paging figures measured on the device; "
    "memory_bytes: the board's RAM (pass --memory for what a training step may really use)"
)
_POET_FLOPS = (
    "; compute: POET's chipsets.py, a 1.6283 GFLOP benchmark timed on the device ({}); "
    "power: POET's chipsets.py POWER (compute) and MEMORY_POWER (transfers)"
)

#: Built-in devices, by name.
PRESETS = {
    d.name: d
    for d in (
        Device(
            "rpi4-4gb-sd",
            4 * 2**30,
            Storage(45.5e6, 24.5e6, read_latency_s=5.1e-6, write_latency_s=18.5e-6, overlap=True,
                    transfer_power_w=0.15),
            "Raspberry Pi 4 Model B 4 GB with an SD card, write caching on. " + _POET
            + _POET_FLOPS.format("13.53 s: 120.3 MFLOP/s"),
            Compute(flop_per_s=1.6283e9 / 13.53, power_w=3.0),
        ),
        Device(
            "jetson-tx2-8gb",
            8 * 2**30,
            Storage(108.5e6, 94.37e6, read_latency_s=0.54e-3, write_latency_s=2.396e-3, overlap=True,
                    transfer_power_w=0.309),
            "NVIDIA Jetson TX2 8 GB (memory shared by CPU and GPU), its eMMC. " + _POET
            + "; compute: its 256-core Pascal GPU's FP32 peak, 665 GFLOP/s (NVIDIA's 1.33 TFLOPS "
            "FP16 halved; POET gives no FLOP/s for it), an upper bound a training step does not reach; "
            "power: POET's chipsets.py, 0.766 W (one CPU core under stress less idle: its figure is "
            "for the CPU, not the GPU) and 0.309 W for transfers",
            Compute(flop_per_s=665e9, power_w=0.766),
        ),
        Device(
            "cortex-m4f-sd",
            256 * 2**10,
            Storage(4.6e6, 4.44e6, read_latency_s=0.109e-3, write_latency_s=0.113e-3, overlap=True,
                    transfer_power_w=0.33),
            "Arm Cortex-M4F microcontroller (nRF52840 class, 256 KiB SRAM) with an SD card. "
            + _POET + _POET_FLOPS.format("255.6 s at 64 MHz: 6.37 MFLOP/s"),
            Compute(flop_per_s=1.6283e9 / 255.6237, power_w=3.328e-3 * 3.3),
        ),
        Device(
            "gpu-a100-80gb-pcie4-host",
            80 * 2**30,
            Storage(25e9, 25e9, read_latency_s=10e-6, write_latency_s=10e-6, overlap=True),
            "NVIDIA A100 80 GB PCIe, pinned host memory over PCIe 4.0 x16: 31.5 GB/s "
            "theoretical each way, about 25 GB/s in practice; 10 us per copy is an estimate "
            "of a synchronised cudaMemcpyAsync; compute: 19.5 TFLOP/s, NVIDIA's FP32 peak "
            "(A100 data sheet), an upper bound",
            Compute(flop_per_s=19.5e12),
        ),
    )
}
