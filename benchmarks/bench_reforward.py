"""Solve time and schedule quality of ``reforward`` (Feng and Huang's re-forwarding).

Usage::

    python benchmarks/bench_reforward.py [--quick] [--no-write]

Prints markdown tables and writes them as the section "## reforward" of
docs/benchmarks.md (replacing an older one) unless ``--no-write``.
``--quick`` runs the 100-layer sizes only, for a smoke test.

1. Solve time (registry ``solve``: solver, lowering and simulation) on
   random heterogeneous chains and random DAGs (``planner.synthetic``) of 100,
   500 and 2000 layers: with no budget (the least-peak schedule) and at budgets
   25%, 50% and 75% of the way from the least peak to the store-all peak, with
   the overhead each schedule costs and whether the least-compute pass was
   exact (no Pareto front thinned).
2. The same on the measured model files of ../shared/models and, when the
   Checkmate importer and Moccasin's graphs are there, on the Checkmate
   training graphs (real DAGs), next to ``dp`` (optimal over all schedules,
   chains only) where it applies.

Every schedule is replayed by the simulator (the registry does) and checked
against its budget.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _docs import markdown_table, publish, stamp  # noqa: E402  (benchmarks/ is on sys.path)

from planner.errors import InfeasibleError  # noqa: E402
from planner.model import load_model, model_from_dict  # noqa: E402
from planner.solvers import solve  # noqa: E402
from planner.solvers.reforward import reforward_plan  # noqa: E402
from planner.synthetic import random_chain, random_dag  # noqa: E402

SHARED = ROOT.parent / "shared"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## reforward"
SIZES = [100, 500, 2000]
FRACTIONS = [0.25, 0.5, 0.75]
MODELS = ["vgg16-ops", "vgg16", "resnet18", "resnet18-cpu", "mobilenet_v2-cpu"]


def timed(model, budget, strategy="reforward"):
    started = time.perf_counter()
    try:
        solution = solve(model, budget, strategy)
    except InfeasibleError:
        return None, time.perf_counter() - started
    seconds = time.perf_counter() - started
    assert solution.result.valid
    assert budget is None or solution.result.peak_bytes <= budget
    return solution, seconds


def budgets(least, full):
    return [int(least + f * (full - least)) for f in FRACTIONS]


def scale_rows(sizes):
    rows = []
    for kind, make in (("chain", random_chain), ("DAG", random_dag)):
        for n in sizes:
            model = make(n, 1)
            full = solve(model, None, "store-all").result.peak_bytes
            least, seconds = timed(model, None)
            row = [
                kind,
                n,
                reforward_plan(model).units if n <= 500 else least.params["units"],
                f"{seconds:.2f} s",
                f"{least.result.peak_bytes / full:.3f}",
            ]
            for budget in budgets(least.result.peak_bytes, full):
                solution, seconds = timed(model, budget)
                exact = reforward_plan(model, budget=budget).exact if n <= 100 else None
                mark = "" if exact is None else (" exact" if exact else " thinned")
                row.append(f"{solution.result.overhead:.1%} in {seconds:.2f} s{mark}")
            print(" | ".join(str(x) for x in row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def model_rows():
    models = [(name, load_model(SHARED / "models" / f"{name}.json")) for name in MODELS]
    data = SHARED / "benchmarks" / "moccasin" / "data"
    try:
        from planner.io.checkmate import import_checkmate
    except ImportError:  # the importer is another issue's
        import_checkmate = None
    if import_checkmate is not None and data.is_dir():
        for path in sorted(data.glob("*_train_nx.json")):
            models.append((path.name.split(" ")[0], model_from_dict(import_checkmate(path))))
    rows = []
    for name, model in models:
        full = solve(model, None, "store-all").result.peak_bytes
        least, seconds = timed(model, None)
        row = [
            name,
            len(model),
            least.params["units"],
            f"{least.result.peak_bytes / full:.3f}",
            f"{seconds:.2f} s",
        ]
        for budget in budgets(least.result.peak_bytes, full):
            solution, seconds = timed(model, budget)
            cell = f"{solution.result.overhead:.2%}"
            if model.is_chain:
                best, _ = timed(model, budget, "dp")
                cell += f" (dp {best.result.overhead:.2%})" if best else " (dp infeasible)"
            row.append(cell)
        print(" | ".join(str(x) for x in row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100-layer sizes only")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES
    levels = [f"{f:.0%} of the way" for f in FRACTIONS]
    scale = markdown_table(
        ["model", "layers", "units", "least peak: solve", "least / store-all"] + levels,
        scale_rows(sizes),
    )
    quality = markdown_table(
        ["model", "layers", "units", "least / store-all", "least peak: solve"] + levels,
        model_rows(),
    )
    date = stamp()
    text = f"""## reforward

`python benchmarks/bench_reforward.py` on {date}, Python {platform.python_version()}, a 2-core
shared x86 machine (noisy: compare numbers within one run only).

Solve time (registry `solve`: solver, lowering, simulation) of the least-peak schedule
(no budget) and, at budgets 25% / 50% / 75% of the way from the least peak to the store-all
peak, the overhead (extra compute / baseline) and the solve time. Random heterogeneous
chains and DAGs from `planner.synthetic` (seed 1). "units" are the pieces the splitting
vertices cut the model into: the dynamic program is O(units^2) for the least peak and
O(units^2 x front) under a budget. `exact`/`thinned` (100 layers only): whether the
least-compute pass kept every Pareto point (front cap: 512 points per state at 100
units, 64 at 500, 32 at 2000). `random_dag` draws its skip
connections from anywhere earlier, so its graphs have almost no splitting vertices and
reforward can only store or re-forward them nearly whole (the DAG rows); real networks split
well (ResNet50 below: 41 units of 177 layers). Other jobs share the machine: the same
run has given times up to four times these.

{scale}

Measured models (../shared/models) and the Checkmate training graphs: the least peak as a
fraction of store-all, and the overhead at the same three budgets, next to `dp` (optimal over
all schedules) on chains.

{quality}
"""
    publish(SECTION, text, write=not args.no_write, path=DOC)


if __name__ == "__main__":
    main()
