"""How long the default commands take: ``solve``, ``compare`` and ``sweep`` with default options.

Usage::

    python benchmarks/bench_latency.py [--baseline FILE] [--save FILE] [--no-write]
                                       [--root DIR] [--commands solve,compare,sweep]
                                       [--cases NAME,...]

Every command runs through the real CLI code path (``cli.main`` under click's
``CliRunner``, in this process, imports already warm) with default options:
``solve --json`` (strategy ``auto``), ``compare --json`` and ``sweep --json``
(12 points from the least workable memory to store-all's).  Cases: every model
file in ``examples/`` and ``tests/data/`` (``../shared/models/`` while
``tests/data/`` does not exist), heterogeneous random chains of 100 and 200
layers and ResNet-like random DAGs of 100 and 300 nodes (residual blocks of two
or three layers whose last layer also reads the block's input), each at 30% and
60% of its store-all activation peak (``--memory`` = fixed memory + that
fraction, rounded up).

``--root DIR`` imports ``cli`` and ``planner`` from another checkout (the
baseline: ``main`` before this change); ``--save FILE`` writes the raw results
as JSON and ``--baseline FILE`` (default: benchmarks/latency_baseline.json,
that baseline's ``solve`` results) reads such a file to report each case's
ratio of ``auto``'s compute and of the solve time against it.  The table is printed and, unless
``--no-write``, written into docs/benchmarks.md (section "Default latency").
Targets (issue 10) on the project's 2-core machine: solve <= 2 s, compare
<= 5 s, sweep <= 10 s, auto's compute within 1% of the baseline's.
"""

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from planner.synthetic import random_document, random_layer  # noqa: E402

SECTION = "## Default latency (benchmarks/bench_latency.py)"
FRACTIONS = (0.3, 0.6)
TARGETS = {"solve": 2.0, "compare": 5.0, "sweep": 10.0}
# `solve` of every case on main at 3b95e85 (before this change: auto ran milp up
# to 60 s on models of up to 100 layers), made with
#   git worktree add --detach ../latency-base 3b95e85
#   python benchmarks/bench_latency.py --root ../latency-base --commands solve \
#       --save benchmarks/latency_baseline.json --no-write
BASELINE = HERE / "benchmarks" / "latency_baseline.json"


# ---- synthetic models (this checkout's planner.synthetic, written as plain files, so that
# ---- every checkout --root names is measured on the same models) ----------------------


def _layer(rng, name, inputs=None):
    layer = random_layer(rng, name)
    if inputs is not None:
        layer["inputs"] = inputs
    return layer


def random_chain_doc(n, seed):
    """A heterogeneous chain of ``n`` layers with random costs and flags.

    Unlike :func:`planner.synthetic.random_chain` it draws the input size
    before the layers: the baseline was measured on these cases.
    """
    rng = np.random.default_rng(seed)
    return {
        "format": "edgeplan-model/1",
        "name": f"chain-{n}",
        "input_bytes": int(rng.integers(1, 100)) * 1000,
        "layers": [_layer(rng, f"L{i}") for i in range(n)],
    }


def resnet_dag_doc(n, seed):
    """A ResNet-like DAG of ``n`` nodes: residual blocks of 2-3 layers joined by an add."""
    rng = np.random.default_rng(seed)
    layers = [_layer(rng, "stem", ["input"])]
    while len(layers) < n:
        block_in = layers[-1]["name"]
        depth = min(int(rng.integers(2, 4)), n - len(layers))
        for k in range(depth):
            name = f"N{len(layers)}"
            inputs = [layers[-1]["name"]]
            if k == depth - 1 and depth > 1:
                inputs.append(block_in)  # the residual connection
            layers.append(_layer(rng, name, inputs))
    return random_document(rng, f"resnet-dag-{n}", layers)


def model_files(workdir):
    """(case name, path) of every benchmark model, synthetic ones written into ``workdir``."""
    files = [(p.stem, p) for p in sorted((HERE / "examples").glob("*.json"))]
    data = HERE / "tests" / "data"
    if not data.is_dir():
        data = HERE.parent / "shared" / "models"
    for p in sorted(data.rglob("*.json")):  # tests/data/models/*.json
        try:
            if json.loads(p.read_text()).get("format") == "edgeplan-model/1":
                files.append((f"{p.parent.name}/{p.stem}", p))
        except (OSError, ValueError):
            continue
    for name, doc in (
        ("chain-100", random_chain_doc(100, 1)),
        ("chain-200", random_chain_doc(200, 2)),
        ("resnet-dag-100", resnet_dag_doc(100, 3)),
        ("resnet-dag-300", resnet_dag_doc(300, 4)),
    ):
        path = Path(workdir) / f"{name}.json"
        path.write_text(json.dumps(doc))
        files.append((name, path))
    return files


# ---- running the CLI ---------------------------------------------------------------------


def _invoke(main, runner, args):
    """Wall seconds, CPU seconds (this process, every thread) and the result of one command."""
    started, cpu = time.perf_counter(), time.process_time()
    result = runner.invoke(main, args, catch_exceptions=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if result.exit_code not in (0, 1):
        raise RuntimeError(f"edgeplan {' '.join(args)} exited {result.exit_code}: {result.output[-400:]}")
    return seconds, cpu, result


def run_case(main, runner, path, memory, commands):
    """{command: {"seconds": ..., ...}} for one model at one memory size."""
    out = {}
    if "solve" in commands:
        seconds, cpu, result = _invoke(main, runner, ["solve", str(path), "--memory", str(memory), "--json"])
        entry = {"seconds": seconds, "cpu": cpu, "exit": result.exit_code}
        if result.exit_code == 0:
            doc = json.loads(result.stdout)
            entry.update(
                compute=doc["predicted"]["compute"],
                strategy=doc["strategy"],
                proven_optimal=doc.get("params", {}).get("proven_optimal"),
            )
        out["solve"] = entry
    if "compare" in commands:
        seconds, cpu, result = _invoke(main, runner, ["compare", str(path), "--memory", str(memory), "--json"])
        rows = json.loads(result.stdout)
        out["compare"] = {"seconds": seconds, "cpu": cpu, "strategies": [r["strategy"] for r in rows]}
    return out


def _import_from(root):
    """``import cli`` and ``import planner`` load ``root``'s code from here on.

    This checkout's planner is loaded already (for the synthetic cases): another
    root's replaces it.
    """
    if root != HERE:
        for name in [m for m in sys.modules if m in ("cli", "planner") or m.startswith("planner.")]:
            del sys.modules[name]
    sys.path.insert(0, str(root))


def run_all_cases(root, commands, only=None):
    """Every case x fraction; returns a list of result dicts."""
    _import_from(root)
    from click.testing import CliRunner

    from cli import main
    from planner import solvers
    from planner.budget import split_memory
    from planner.model import load_model

    try:  # warm the imports a real run pays once (scipy's HiGHS)
        import scipy.optimize  # noqa: F401
    except ImportError:
        pass
    runner = CliRunner()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeplan-bench-") as workdir:
        for name, path in model_files(workdir):
            if only and name not in only:
                continue
            model = load_model(path)
            fixed = split_memory(model, 0).fixed_bytes
            store_all = solvers.solve(model, None, "store-all").result.peak_bytes
            kind = "chain" if model.is_chain else "DAG"
            for fraction in FRACTIONS:
                memory = fixed + math.ceil(fraction * store_all)
                entry = {"case": name, "layers": len(model), "kind": kind, "fraction": fraction}
                entry.update(run_case(main, runner, path, memory, commands))
                results.append(entry)
                print(json.dumps(entry), file=sys.stderr, flush=True)
            if "sweep" in commands:
                seconds, cpu, result = _invoke(main, runner, ["sweep", str(path), "--json"])
                points = json.loads(result.stdout)
                for entry in results[-len(FRACTIONS):]:
                    entry["sweep"] = {
                        "seconds": seconds, "cpu": cpu, "points": len({p["memory_bytes"] for p in points})
                    }
                print(json.dumps({"case": name, "sweep_seconds": seconds}), file=sys.stderr, flush=True)
    return results


# ---- reporting ---------------------------------------------------------------------------


def _fmt(entry, target):
    """``wall / cpu`` seconds of one command, (!) when the wall time misses the target."""
    if not entry:
        return "-"
    seconds = entry["seconds"]
    return f"{seconds:.2f} / {entry['cpu']:.2f}" + ("" if seconds <= target else " (!)")


def report(results, baseline=None):
    """The markdown table and the missed targets: by wall time, by CPU time."""
    base = {(b["case"], b["fraction"]): b for b in baseline or []}
    header = [
        "case", "layers", "budget", "solve s", "compare s", "sweep s (12 pts)", "auto strategy", "auto compute"
    ]
    if baseline:
        header += ["vs today: compute", "vs today: solve time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    missed, cpu_missed = [], []
    for r in results:
        solve, compare, swept = r.get("solve", {}), r.get("compare", {}), r.get("sweep", {})
        compute = solve.get("compute")
        row = [
            r["case"], f"{r['layers']} ({r['kind']})", f"{r['fraction']:.0%}",
            _fmt(solve, TARGETS["solve"]), _fmt(compare, TARGETS["compare"]), _fmt(swept, TARGETS["sweep"]),
            solve.get("strategy", "infeasible") + ("" if solve.get("proven_optimal") is not False else " (not proven)"),
            "-" if compute is None else f"{compute:.6g}",
        ]
        for command, target in TARGETS.items():
            seconds = r.get(command, {}).get("seconds")
            if seconds is not None and seconds > target:
                missed.append(f"{r['case']} at {r['fraction']:.0%}: {command} {seconds:.2f} s > {target} s")
            cpu = r.get(command, {}).get("cpu")
            if cpu is not None and cpu > target:
                cpu_missed.append(f"{r['case']} at {r['fraction']:.0%}: {command} {cpu:.2f} s CPU > {target} s")
        if baseline:
            b = base.get((r["case"], r["fraction"]), {}).get("solve", {})
            if b.get("compute") and compute is not None:
                ratio = compute / b["compute"]
                row.append(f"{ratio:.4f}")
                if ratio > 1.01:
                    missed.append(f"{r['case']} at {r['fraction']:.0%}: auto compute {ratio:.4f} x today's")
            elif b and (compute is None) != (b.get("compute") is None):
                row.append("feasibility differs")
                missed.append(f"{r['case']} at {r['fraction']:.0%}: feasibility differs from today")
            else:
                row.append("both infeasible" if b else "-")
            row.append(f"{solve['seconds'] / b['seconds']:.3f}" if b.get("seconds") and solve.get("seconds") else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), missed, cpu_missed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE, help="checkout to import cli and planner from")
    parser.add_argument("--commands", default="solve,compare,sweep")
    parser.add_argument("--cases", default=None, help="only these case names, comma-separated")
    parser.add_argument("--save", type=Path, help="write the raw results as JSON")
    parser.add_argument(
        "--baseline", type=Path, default=BASELINE if BASELINE.exists() else None,
        help="raw results of the baseline (from --save; default benchmarks/latency_baseline.json)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    commands = set(args.commands.split(","))
    only = set(args.cases.split(",")) if args.cases else None
    started = time.perf_counter()
    results = run_all_cases(args.root.resolve(), commands, only)
    total = time.perf_counter() - started
    if args.save:
        args.save.write_text(json.dumps(results, indent=1))
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    table, missed, cpu_missed = report(results, baseline)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}"
    text = (
        f"{datetime.date.today().isoformat()}, {machine}, 2 cores shared with other jobs "
        f"(total {total:.0f} s, load average {load}).  `--memory` = fixed memory + 30% or 60% of the "
        "store-all activation peak; default options; times are `wall / CPU` seconds of the CLI command "
        "in-process (imports warm; CPU counts every thread of the process, so it is what the command "
        "costs on an idle core).  Targets: solve <= 2 s, compare <= 5 s, sweep <= 10 s; (!) marks a miss.  "
        "The last two columns compare with today's `main` (its auto runs milp up to 60 s): "
        "auto's compute and the solve time, as ratios from the same machine.\n\n"
        + table
        + "\n\n"
        + ("Missed (wall time): " + "; ".join(missed) if missed else "Every target met (wall time).")
        + "\n\n"
        + ("Missed (CPU time): " + "; ".join(cpu_missed) if cpu_missed else "Every CPU time is within its target.")
        + "\n\nPolicy measured: auto/compare/sweep leave milp out on chains and run it on DAGs of up "
        "to 100 layers for 0.5 s (sweep: 0.25 s per size), warm-started; dp's rounded tables are "
        "shared across sweep sizes (one per octave of budgets).  \"not proven\": milp ran out of "
        "time, so the schedule says `proven_optimal: false`."
    )
    print(SECTION + "\n\n" + text)
    if not args.no_write:
        sys.path.insert(0, str(HERE / "benchmarks"))
        from _docs import write_section

        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
