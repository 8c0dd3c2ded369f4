"""Recomputation, paging, or both: overhead and least memory on real models and edge devices.

Usage::

    python benchmarks/bench_paging.py [--devices rpi4-4gb-sd jetson-tx2-8gb] [--no-write]

For each model (the example models in examples/, and the measured chains in
../shared/models) and each device preset's storage, at budgets of 10%, 20%,
.., 90% of the store-all peak, three strategies:

* ``dp`` (recomputation only): rotor's class, solved by ``dp-paging`` without
  a storage, so that every schedule is counted with the same rule (the sink's
  output held until its backward, SPEC section 3);
* ``page-all`` (paging only, POET's baseline): one schedule, it fits or not;
* ``dp-paging`` (both).

Reported: the overhead ``(compute + transfer) / baseline - 1`` of each ("-" when
it does not fit), the gain of both together over the best of the two alone,
and the least memory (activation bytes) each trains in.  Every schedule is
replayed by the simulator with the device's storage.  Models whose
``time_unit`` is not a time are skipped with a note.

The result replaces the section "## Paging: recomputation, paging, or both" of
docs/benchmarks.md.
"""

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _docs import stamp, write_section  # noqa: E402  (benchmarks/ is on sys.path)

from planner.device import PRESETS, TIME_UNITS  # noqa: E402
from planner.errors import InfeasibleError  # noqa: E402
from planner.lowering import insert_frees, store_all_ops  # noqa: E402
from planner.model import load_model, model_from_dict  # noqa: E402
from planner.simulate import simulate  # noqa: E402
from planner.solvers.dp_paging import dp_paging  # noqa: E402
from planner.solvers.page_all import page_all  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Paging: recomputation, paging, or both"
SHARED = ROOT.parent / "shared" / "models"
MODELS = [
    ROOT / "examples" / "resnet18.json",
    ROOT / "examples" / "mobilenet_v2.json",
    ROOT / "examples" / "vgg16_bn.json",
    SHARED / "resnet50.json",
    SHARED / "vgg16.json",
]
FRACTIONS = [k / 10 for k in range(1, 10)]
SLOWDOWNS = (1, 10, 30, 100, 300)
GPU = "gpu-a100-80gb-pcie4-host"  # for the models timed on a GPU


def store_all_peak(model):
    """Store-all's peak with the sink's output held until its backward (as the DP counts)."""
    return simulate(model, insert_frees(model, store_all_ops(model))).peak_bytes


def measured(model, ops, storage):
    """(peak, overhead) of ``ops`` replayed by the simulator (sink held, as the DP counts)."""
    result = simulate(model, insert_frees(model, ops), storage=storage)
    assert result.valid, result.error
    return result.peak_bytes, result.overhead


def least(model, storage):
    """Least activation memory of dp (storage None) or dp-paging."""
    try:
        dp_paging(model, budget=model.input_bytes, storage=storage)
    except InfeasibleError as exc:
        return exc.least_bytes
    return model.input_bytes


def run_dp(model, budget, storage):
    try:
        ops, _ = dp_paging(model, budget=budget, storage=storage)
    except InfeasibleError:
        return None
    peak, overhead = measured(model, ops, storage)
    assert peak <= budget
    return overhead


def bench_model(model, device, remat):
    """Rows ``(fraction, dp, page-all, dp-paging)`` of overheads, store-all peak and least memories.

    ``remat`` caches dp's overheads per fraction (they do not depend on the storage).
    """
    storage = PRESETS[device].storage
    top = store_all_peak(model)
    pa_ops, _ = page_all(model, budget=None, storage=storage)
    pa_peak, pa_over = measured(model, pa_ops, storage)
    rows = []
    for frac in FRACTIONS:
        budget = int(top * frac)
        if frac not in remat:
            remat[frac] = run_dp(model, budget, None)
        rows.append((frac, remat[frac], pa_over if pa_peak <= budget else None, run_dp(model, budget, storage)))
    if "least" not in remat:
        remat["least"] = least(model, None)
    return top, rows, (remat["least"], pa_peak, least(model, storage))


def slowed(model, factor):
    """``model`` with every time multiplied by ``factor`` (a device that computes slower)."""
    doc = model.to_dict()
    for layer in doc["layers"]:
        layer["forward"] *= factor
        layer["backward"] *= factor
    return model_from_dict(doc)


def sensitivity(model, device, remat):
    """Per slowdown: the largest gain of dp-paging over dp, and at how many budgets it pages."""
    storage = PRESETS[device].storage
    top = store_all_peak(model)
    result = []
    for factor in SLOWDOWNS:
        m = slowed(model, factor)
        gains, paged = [], 0
        for frac in FRACTIONS:
            if remat.get(frac) is None:
                continue
            try:
                ops, params = dp_paging(m, budget=int(top * frac), storage=storage)
            except InfeasibleError:
                continue
            _, over = measured(m, ops, storage)
            gains.append((1 + remat[frac]) / (1 + over) - 1)
            paged += bool(params["paged"])
        result.append((factor, max(gains, default=0.0), paged))
    return result


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def gain(row):
    _, remat, paging, both = row
    alone = [x for x in (remat, paging) if x is not None]
    if both is None:
        return "-"
    if not alone:
        return "only both fit"
    best = min(alone)
    return f"{100 * ((1 + best) / (1 + both) - 1):.1f}%"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["rpi4-4gb-sd", "jetson-tx2-8gb"])
    parser.add_argument("--no-slowdown", dest="slowdown", action="store_false", help="skip the slowdown what-if")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    lines, notes, summary, sens = [], [], [], []
    for path in MODELS:
        if not path.exists():
            notes.append(f"{path.name}: not found, skipped")
            continue
        model = load_model(path)
        if model.time_unit not in TIME_UNITS:
            notes.append(f"{path.name}: time_unit {model.time_unit!r} is not a time, skipped")
            continue
        gpu_timed = path.parent == SHARED
        remat = {}
        devices = args.devices + ([GPU] if gpu_timed else [])
        per_device = {}
        for device in devices:
            top, rows, leasts = bench_model(model, device, remat)
            per_device[device] = rows
            gains = [(1 + min(x for x in (r, p) if x is not None)) / (1 + b) - 1 for _, r, p, b in rows
                     if b is not None and (r is not None or p is not None)]
            only = sum(1 for _, r, p, b in rows if b is not None and r is None and p is None)
            summary.append((model.name, device, max(gains, default=0.0), only, leasts))
        head = (
            f"### {model.name} ({len(model)} layers, {path.parent.name}/{path.name})\n\n"
            f"store-all peak {top / 1e6:.1f} MB. Overheads; page-all and dp-paging per device "
            f"(gain of dp-paging over the best of dp and page-all in brackets).\n\n"
            "| budget | dp (remat) | "
            + " | ".join(f"page-all on {d} | dp-paging on {d}" for d in devices)
            + " |\n|---|---|" + "---|---|" * len(devices)
        )
        body = []
        for k, frac in enumerate(FRACTIONS):
            cells = [f"{int(100 * frac)}%", pct(remat[frac])]
            for d in devices:
                row = per_device[d][k]
                cells += [pct(row[2]), pct(row[3]) + ("" if row[3] is None else f" ({gain(row)})")]
            body.append("| " + " | ".join(cells) + " |")
        lines.append(head + "\n" + "\n".join(body))
        print(lines[-1] + "\n", flush=True)
        if not gpu_timed and args.slowdown:
            sens.append((model.name, sensitivity(model, args.devices[0], remat)))
            print(sens[-1], flush=True)
    when = stamp()
    intro = (
        f"Run {when} on {platform.machine()} ({platform.system()}, Python {platform.python_version()}) "
        "with `python benchmarks/bench_paging.py`. Overhead = (compute + transfer) / baseline - 1 from "
        "the simulator, the device presets' storage figures (POET's measurements), budgets as a share "
        "of the store-all peak; `dp` is rotor's class (dp-paging without a storage), all counted with "
        "the sink's output held until its backward. \"-\": does not fit. The example models were "
        "profiled on a CPU (ms); resnet50 and vgg16 from ../shared/models were timed on an H200 GPU, "
        "so their compute is far faster than an edge device's (they are also paired with the GPU preset) and paging looks worse on the edge presets than "
        "it would with times measured on the device itself.\n\n"
        "| model | device | largest gain of both over the best alone | budgets only both reach | "
        "least memory dp / page-all / dp-paging (MB) |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {m} | {d} | {100 * g:.1f}% | {o} | {l[0] / 1e6:.1f} / {l[1] / 1e6:.1f} / {l[2] / 1e6:.1f} |"
            for m, d, g, o, l in summary
        )
    )
    if sens:
        intro += (
            f"\n\nWhat if the device computes slower than the machine that profiled the model (a "
            f"Raspberry Pi 4's cores are far slower than a desktop's)? Every time multiplied by k, "
            f"storage of {args.devices[0]}: the largest gain of dp-paging over dp over the budgets, and at "
            f"how many of the 9 budgets dp-paging pages at all.\n\n| model | "
            + " | ".join(f"k = {k}" for k in SLOWDOWNS)
            + " |\n|---|" + "---|" * len(SLOWDOWNS) + "\n"
            + "\n".join(
                f"| {name} | " + " | ".join(f"{100 * g:.1f}% ({p})" for _, g, p in rows) + " |" for name, rows in sens
            )
        )
    text = intro + "\n\n" + "\n\n".join(lines) + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")
    print(intro)
    if not args.no_write:
        write_section(SECTION, text, DOC)


if __name__ == "__main__":
    main()
