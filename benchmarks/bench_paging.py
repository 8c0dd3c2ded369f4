"""Recomputation, paging, or both: overhead and least memory on real models and edge devices.

Usage::

    python benchmarks/bench_paging.py [--devices rpi4-4gb-sd jetson-tx2-8gb] [--no-write]
    python benchmarks/bench_paging.py --timing [--before a71d8bc] [--no-write]

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

``--device-speed`` runs instead the setting of issue 21 (POET's): the FLOP-counted
models of examples/flop/ in each preset's own time (its ``flop_per_s``), with
transfers beside compute (``overlap``) and POET's power figures, and
store-all, dp, page-all, dp-paging, page-records (backward records paged
too), dp-paging and page-records with the objective energy (``--objective
energy``) and milp-paging side by side: peak, step time and joules.  It replaces the section
"## Paging on the device's own speed" of docs/benchmarks.md.

``--timing`` measures instead how long ``dp-paging`` takes (CPU seconds, one
thread, in a process of its own): uniform chains (``planner.synthetic.uniform_chain``,
in ms) of 100, 200 and 300 layers and random chains (``random_chain(n, 5)``) of
100 and 300, with ``rpi4-4gb-sd``'s storage (transfers beside compute, as the
preset has them, and serial), at 30% and 50% of store-all; ``--before REV``
times the git revision REV too (before -> after, and whether the step's time
changed).  It replaces the section "## dp-paging solve time".
"""

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --timing-cells TREE times the planner of another tree (a revision that --timing --before extracted)
sys.path.insert(0, sys.argv[sys.argv.index("--timing-cells") + 1] if "--timing-cells" in sys.argv else str(ROOT))

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


DEVICE_SPEED = "## Paging on the device's own speed"
FLOP_MODELS = {"resnet18": (0.3, 0.5, 0.7), "mobilenet_v2": (0.3, 0.5, 0.7), "vgg16_bn": (0.3, 0.5, 0.7),
               "small_gpt": (0.6, 0.8)}


def device_speed_rows(name, device, fractions, time_limit):
    """Per budget: ``{strategy: (peak, seconds, joules) or None}`` for one FLOP model on one preset."""
    from planner.device import device_time, step_energy
    from planner.objective import objective_for
    from planner.solvers import solve

    d = PRESETS[device]
    model, _ = device_time(load_model(ROOT / "examples" / "flop" / f"{name}.json"), d)
    storage = d.storage
    energy = objective_for(model, d, "energy")  # what --objective energy plans with
    top = store_all_peak(model)
    rows = []
    for frac in fractions:
        budget = int(top * frac)
        cells = {"store-all": (top, model.baseline_compute, step_energy(d, model.baseline_compute, 0.0))}
        runs = (("dp", lambda: dp_paging(model, budget=budget)[0]),
                ("page-all", lambda: solve(model, budget, "page-all", storage=storage).ops),
                ("dp-paging", lambda: dp_paging(model, budget=budget, storage=storage)[0]),
                ("page-records", lambda: solve(model, budget, "page-records", storage=storage).ops),
                ("dp-paging energy", lambda: solve(model, budget, "dp-paging", storage=storage,
                                                   objective=energy).ops),
                ("page-records energy", lambda: solve(model, budget, "page-records", storage=storage,
                                                      objective=energy).ops),
                ("milp-paging", lambda: solve(model, budget, "milp-paging", storage=storage,
                                              time_limit=time_limit).ops))
        for label, run in runs:
            try:
                ops = run()
            except InfeasibleError:
                cells[label] = None
                continue
            r = simulate(model, ops, storage=storage)
            assert r.valid and r.peak_bytes <= budget, (label, r.error)
            cells[label] = (r.peak_bytes, r.step_time, step_energy(d, r.compute, r.transfer))
        rows.append((frac, budget, cells))
    return top, rows


def device_speed(args):
    labels = ("store-all", "dp", "page-all", "dp-paging", "page-records", "dp-paging energy", "page-records energy",
              "milp-paging")
    parts = []
    for name, fractions in FLOP_MODELS.items():
        for device in args.devices:
            top, rows = device_speed_rows(name, device, fractions, args.time_limit)
            lines = [f"### {name} on {device} (store-all peak {top / 1e6:.1f} MB)\n",
                     "| budget | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
            for frac, _, cells in rows:
                dp = cells["dp"]

                def cell(label, dp=dp, cells=cells):
                    c = cells[label]
                    if c is None:
                        return "-"
                    text = f"{c[0] / 1e6:.1f} MB, {c[1]:.4g} s, {c[2]:.4g} J"
                    if dp is not None and label not in ("store-all", "dp"):
                        text += f" ({100 * (c[1] / dp[1] - 1):+.1f}% time, {100 * (c[2] / dp[2] - 1):+.1f}% J)"
                    return text

                lines.append(f"| {int(100 * frac)}% | " + " | ".join(cell(label) for label in labels) + " |")
            parts.append("\n".join(lines))
            print(parts[-1] + "\n", flush=True)
    text = (
        f"Run {stamp()} with `python benchmarks/bench_paging.py --device-speed`: the models of "
        "examples/flop/ (FLOPs counted by examples/edge_flops.py) in each preset's own time "
        "(`flop_per_s`), transfers beside compute on one copy engine (`overlap`, edgeplan-schedule/3), "
        "joules from POET's power figures. Each cell: peak activation memory, predicted step time, "
        "predicted energy, and for the paging strategies the change against `dp`. \"-\": does not fit. "
        "store-all is shown at its own peak. `dp-paging energy` and `page-records energy` minimise joules "
        "(`--objective energy`); milp-paging ran "
        f"{args.time_limit:g} s at most per budget.\n\n" + "\n\n".join(parts)
    )
    if not args.no_write:
        write_section(DEVICE_SPEED, text, DOC)


TIMING_SECTION = "## dp-paging solve time"
TIMING_CHAINS = (("uniform", 100), ("uniform", 200), ("uniform", 300), ("random", 100), ("random", 300))


def timing_cells():
    """dp-paging's CPU seconds per chain, storage and budget, as JSON on stdout (``--timing-cells``)."""
    import dataclasses
    import json
    import time

    from planner.synthetic import random_chain, uniform_chain

    def timed(model):
        doc = model.to_dict()
        doc["time_unit"] = "ms"
        return model_from_dict(doc)

    preset = PRESETS["rpi4-4gb-sd"].storage
    cells = []
    for kind, n in TIMING_CHAINS:
        model = timed(uniform_chain(n) if kind == "uniform" else random_chain(n, 5))
        top = store_all_peak(model)
        for overlap in (True, False):
            storage = dataclasses.replace(preset, overlap=overlap)
            for frac in (0.3, 0.5):
                start = time.process_time()
                ops, params = dp_paging(model, budget=int(top * frac), storage=storage)
                seconds = time.process_time() - start
                step = simulate(model, ops, storage=storage).step_time
                cells.append([kind, n, overlap, frac, seconds, params["grid"], params["levels"], step])
                print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    print(json.dumps(cells))


def timing_run(root):
    """:func:`timing_cells` of the planner in ``root``, in a process of its own on one thread."""
    import json
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--timing-cells", str(root)], cwd=root, env=env,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def timing(args):
    """dp-paging's CPU seconds on uniform and random chains with the Pi's storage (``--timing``).

    With ``--before REV``, the revision ``REV`` (extracted by ``git archive``)
    is timed first, in a process of its own, and each cell reads ``before ->
    after``, with the step's time (``-``: the same in both).
    """
    import subprocess
    import tempfile

    before = None
    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            before = timing_run(Path(tmp))
    after = timing_run(ROOT)
    rows, steps = {}, []
    for k, cell in enumerate(after):
        kind, n, overlap, frac, seconds, grid, levels, step = cell
        text = f"{seconds:.2f} ({grid}, {levels})"
        if before is not None:
            b = before[k]
            text = f"{b[4]:.2f} ({b[5]}, {b[6]}) -> {text}"
            if abs(b[7] - step) > 1e-9 * abs(b[7]):
                steps.append(f"{kind} {n} layers, {'copy engine' if overlap else 'serial'}, {int(100 * frac)}%: "
                             f"step {b[7]:.3f} -> {step:.3f} ms")
        rows.setdefault((kind, n), []).append(text)
    lines = [f"| {kind} {'(seed 5), ' if kind == 'random' else ''}{n} layers | " + " | ".join(cells) + " |"
             for (kind, n), cells in rows.items()]
    print("\n".join(lines))
    compared = (f"; each cell `{args.before}` -> this revision, each timed in a process of its own" if args.before
                else "")
    text = (
        f"Run {stamp()} with `python benchmarks/bench_paging.py --timing"
        + (f" --before {args.before}" if args.before else "")
        + f"` on {platform.machine()} (Python {platform.python_version()}, one thread, a machine shared with "
        "other jobs): CPU seconds of `dp_paging` with rpi4-4gb-sd's storage at 30% and 50% of store-all, and in "
        f"brackets its grid and levels{compared}. Targets (issue 21): at most 0.5 s on 100 layers, 5 s on 300.\n\n"
        "| chain | copy engine, 30% | copy engine, 50% | serial, 30% | serial, 50% |\n|---|---|---|---|---|\n"
        + "\n".join(lines)
        + ("" if before is None else "\n\nThe step's time (simulator, the storage's timeline) is the same before "
           "and after in every cell" + (" but: " + "; ".join(steps) if steps else "") + ".")
    )
    if not args.no_write:
        write_section(TIMING_SECTION, text, DOC)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-speed", action="store_true",
                        help="the FLOP-counted models in each preset's own time, with overlap and energy")
    parser.add_argument("--time-limit", type=float, default=10.0, help="milp-paging's limit (--device-speed)")
    parser.add_argument("--devices", nargs="+", default=["rpi4-4gb-sd", "jetson-tx2-8gb"])
    parser.add_argument("--no-slowdown", dest="slowdown", action="store_false", help="skip the slowdown what-if")
    parser.add_argument("--timing", action="store_true", help="dp-paging's solve time on 100-300 layer chains")
    parser.add_argument("--before", metavar="REV", help="with --timing: also time this git revision, before -> after")
    parser.add_argument("--timing-cells", metavar="TREE", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.device_speed:
        return device_speed(args)
    if args.timing_cells:
        return timing_cells()
    if args.timing:
        return timing(args)
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
