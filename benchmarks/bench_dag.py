"""Every applicable strategy on the Checkmate graphs, next to Moccasin's CP-SAT results.

Usage::

    python benchmarks/bench_dag.py [--time-limit 60] [--graphs VGG16,ResNet50] [--no-write]

Imports the seven Checkmate training graphs published with Moccasin (read from
../shared/benchmarks/moccasin/data, GPL-3.0, never copied here) with
:func:`planner.io.checkmate.import_checkmate`, and solves each at 0.9 and 0.8
of its store-all peak (B = ceil(fraction x peak), Moccasin's convention; the
store-all peak of the imported graphs equals Moccasin's no-remat peak to the
byte) with every registered strategy that applies.  Prints a markdown table of
the compute overhead and the solve time of each, with Moccasin's CP-SAT
results from ../shared/benchmarks/moccasin/derived_cpsat_runs.csv, and writes it
as the section "## DAG strategies on the Checkmate graphs" of docs/benchmarks.md
(replacing an older one) unless ``--no-write``.

Every schedule is replayed by the simulator (the registry does) and checked
against its budget.
"""

import argparse
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _docs import markdown_table, publish, stamp  # noqa: E402  (benchmarks/ is on sys.path)

from planner import solvers  # noqa: E402
from planner.errors import InfeasibleError  # noqa: E402
from planner.io.checkmate import import_checkmate  # noqa: E402
from planner.model import model_from_dict  # noqa: E402

MOCCASIN = ROOT.parent / "shared" / "benchmarks" / "moccasin"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## DAG strategies on the Checkmate graphs"
GRAPHS = ["VGG16", "VGG19", "MobileNet", "ResNet50", "fcn_8_vgg", "segnet", "vgg_unet"]
FRACTIONS = [0.9, 0.8]


def cpsat_results():
    """{(graph file stem, fraction): row} from Moccasin's CP-SAT runs.

    The graph names hold unquoted commas ("(224, 224, 3)"), so each line is
    split from the right: every other column is a plain value.
    """
    path = MOCCASIN / "derived_cpsat_runs.csv"
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    header = lines[0].split(",")
    results = {}
    for line in lines[1:]:
        row = dict(zip(header, line.rsplit(",", len(header) - 1)))
        results[row["graph"], float(row["mem_multiplier"])] = row
    return results


def run_graph(path, fraction, time_limit):
    model = model_from_dict(import_checkmate(path))
    peak = solvers.solve(model, None, "store-all").result.peak_bytes
    budget = math.ceil(fraction * peak)
    results = {}
    for name in solvers.applicable(model):
        options = {"time_limit": time_limit} if "time_limit" in solvers.STRATEGIES[name].options else {}
        started = time.perf_counter()
        try:
            solution = solvers.solve(model, budget, name, **options)
        except InfeasibleError:
            results[name] = (None, time.perf_counter() - started, None)
            continue
        seconds = time.perf_counter() - started
        assert solution.result.valid and solution.result.peak_bytes <= budget
        results[name] = (solution.result.overhead, seconds, solution.params)
        print(f"  {name}: {solution.result.overhead:.3%} in {seconds:.1f} s", file=sys.stderr)
    return model, budget, results


def cell(entry):
    overhead, seconds, _ = entry
    if overhead is None:
        return f"infeasible ({seconds:.1f} s)"
    return f"{overhead:.3%} ({seconds:.1f} s)"


def cpsat_cell(row):
    if row is None:
        return "not run"
    seconds = float(row["wall_s"])
    if row["TDI_pct"]:
        return f"{float(row['TDI_pct']):.3f}% ({row['status']}, {seconds:.0f} s)"
    if row["status"] == "INFEASIBLE":
        return f"infeasible with C = 2 ({seconds:.0f} s)"
    return f"no schedule ({row['status']}, {seconds:.0f} s)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-limit", type=float, default=60.0, help="milp's time limit (s)")
    parser.add_argument("--graphs", default=",".join(GRAPHS), help="comma-separated name prefixes")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    data = MOCCASIN / "data"
    if not data.is_dir():
        sys.exit(f"error: {data} not found (the Moccasin graphs live in ../shared)")
    cpsat = cpsat_results()
    rows = []
    columns = []
    when = stamp()
    for prefix in [g.strip() for g in args.graphs.split(",") if g.strip()]:
        path = sorted(data.glob(f"{prefix} *_train_nx.json"))[0]
        stem = path.name[: -len("_nx.json")]
        for fraction in FRACTIONS:
            print(f"{prefix} at {fraction}", file=sys.stderr)
            model, budget, results = run_graph(path, fraction, args.time_limit)
            for name in results:
                if name not in columns:
                    columns.append(name)
            milp = results.get("milp")
            if milp is None or milp[2] is None:
                proven = ""
            elif milp[2].get("proven_optimal"):
                proven = "yes"
            elif 0 < milp[2].get("stages", 0) < len(model):
                proven = f"no ({milp[2]['stages']} merged stages)"
            else:
                proven = "no (time limit)"
            rows.append((prefix, len(model), fraction, f"{budget:,}", results, proven,
                         cpsat_cell(cpsat.get((stem, fraction)))))
    order = [c for c in solvers.STRATEGIES if c in columns and c != "store-all"]
    header = ["graph", "layers", "B", "budget (bytes)"] + order + ["milp proven optimal", "Moccasin CP-SAT TDI"]
    body = []
    for prefix, n, fraction, budget, results, proven, moccasin in rows:
        body.append([prefix, n, fraction, budget]
                    + [cell(results[c]) if c in results else "n/a (chains only)" for c in order]
                    + [proven, moccasin])
    text = "\n".join([
        f"Measured {when} with `python benchmarks/bench_dag.py "
        f"--time-limit {args.time_limit:g}` on a 2-core shared x86 box (Python "
        f"{platform.python_version()}); other jobs ran at the same time, so compare solve times "
        "within a row, not across runs.",
        "",
        "The seven Checkmate training graphs published with Moccasin, imported with `edgeplan "
        "import` (forward nodes and the Loss become layers, backward times come from the "
        "`_backward` nodes, `needs_output` from Checkmate's output dependency). B is the "
        "fraction of the store-all peak (budget = ceil(B x peak), Moccasin's convention; "
        "the store-all peak of every imported graph equals Moccasin's no-remat peak to the "
        "byte, and the baseline compute its total `cost_cpu`, so the budgets and the "
        "overheads are the same numbers as Moccasin's B and TDI). Each cell: compute "
        "overhead (recomputation / baseline) and solve time of the registry's `solve` "
        "(solver, lowering, simulation); store-all is infeasible at both fractions by "
        f"construction and left out. milp runs with `--time-limit {args.time_limit:g}` "
        "(its time includes running the other strategies for its starting incumbent). "
        "The last column is Moccasin's CP-SAT (C = 2, 2 cores, 60-90 s per phase) from "
        "`derived_cpsat_runs.csv`.",
        "",
        markdown_table(header, body),
        "",
        "How the memory models differ: Moccasin counts the output of every node of the "
        "training graph (forward outputs, the loss and the gradients, which are the "
        "`_backward` nodes' outputs) from its computation to its last use, in one "
        "topological order of all nodes. edgeplan counts outputs, saved data and gradients "
        "(SPEC section 3) plus workspaces and the model input; the Checkmate graphs have no "
        "workspace, no saved data beyond the outputs and no input size, so those are zero "
        "here, and with the mapping above the two models give the same store-all peak. "
        "They still differ in what a schedule may do: Moccasin (C = 2) computes each node at "
        "most twice but may interleave forward and backward nodes freely; edgeplan's milp "
        "runs the backwards in reverse topological order and may recompute a layer any "
        "number of times. "
        "On graphs above 70 layers milp merges consecutive backwards into fewer stages "
        "(MobileNet, ResNet50), so its optimum there is not proven for the full search space.",
    ])
    publish(SECTION, text, write=not args.no_write, path=DOC)


if __name__ == "__main__":
    main()
