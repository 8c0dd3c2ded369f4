"""Solve time and quality of the ``dp`` strategy on long heterogeneous chains.

Usage::

    python benchmarks/bench_dp.py [--sizes 50 100 200 500 1000] [--levels 500] [--no-write]

For each chain length L, a random heterogeneous chain (planner.synthetic.
random_chain, seed L) is solved at 30% and 60% of the way from its least
persistent peak to its store-all peak.  Reported per run: wall and CPU seconds
of ``dp`` itself, the grid it used (levels, unit), its overhead, and the best
overhead of the other chain strategies at the same budget (ratio of computes
measured in the same run).  Every schedule is replayed by the simulator.

The result replaces the section "## dp: solve time" of docs/benchmarks.md.
"""

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)

from planner.errors import InfeasibleError  # noqa: E402
from planner.lowering import insert_frees  # noqa: E402
from planner.simulate import simulate  # noqa: E402
from planner.solvers import applicable, run_all, solve  # noqa: E402
from planner.solvers.dp import dp  # noqa: E402
from planner.model import model_from_dict  # noqa: E402
from planner.solvers.dp import _sizes, _Table  # noqa: E402
from planner.synthetic import random_chain  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## dp: solve time"
FRACTIONS = (0.3, 0.6)
LONG = 500  # from this length on, one budget only (each solve takes minutes)


GRID_NOTE = (
    "Grid: dp runs on the exact byte grid (unit = gcd of all sizes) when it is small (L^2 x "
    "levels <= 2e7 and L^3/6 x levels <= 3e8: the unjittered random chains, whose sizes are "
    "multiples of 1000 bytes, up to about 60 layers); otherwise sizes are rounded to the nearest "
    "1/levels of the budget, levels doubled while the same limits allow (8,000+ levels at "
    "L = 50, 1,000 at L = 100, 500 from L = 200 on), and the table's optimal schedules around "
    "the budget level are measured in exact bytes, keeping the cheapest that really fits. So "
    "rounding never returns a schedule that does not fit, and whenever the budget is at least "
    "dp's exact least peak a schedule is returned."
)


def least_peak(model):
    try:
        dp(model, budget=model.input_bytes - 1)
    except InfeasibleError as exc:
        return exc.least_bytes
    raise AssertionError("a budget below the input cannot fit")


def jittered_chain(n, seed):
    """random_chain with every size perturbed by < 1000 bytes, so no coarse exact grid exists."""
    rng = np.random.default_rng(seed + 10**6)
    doc = random_chain(n, seed).to_dict()
    doc["input_bytes"] += int(rng.integers(0, 1000))
    for layer in doc["layers"]:
        for key in ("output_bytes", "saved_bytes", "workspace_forward", "workspace_backward"):
            if layer[key]:
                layer[key] += int(rng.integers(0, 1000))
    return model_from_dict(doc)


def table_seconds(model, budget, levels):
    """CPU seconds of the O(L^3 M) table alone at exactly ``levels`` levels."""
    z = _sizes(model)
    f = [layer.forward for layer in model.layers]
    b = [layer.backward for layer in model.layers]
    avail = budget - model.input_bytes
    unit = -(-avail // levels)
    cpu = time.process_time()
    _Table(z.scaled(unit, "nearest"), f, b, avail // unit + 1)
    return time.process_time() - cpu


def run(sizes, levels):
    rows = []
    for n in sizes:
        model = jittered_chain(n, n)
        store = solve(model, None, "store-all").result.peak_bytes
        if n < LONG:
            started = time.perf_counter()
            low = least_peak(model)
            least_seconds = time.perf_counter() - started
        else:  # the O(L^3) least-peak DP takes minutes here; measure from the input instead
            low, least_seconds = model.input_bytes, None
        for fraction in FRACTIONS if n < LONG else FRACTIONS[:1]:
            budget = low + int((store - low) * fraction)
            wall = time.perf_counter()
            cpu = time.process_time()
            ops, params = dp(model, budget=budget, levels=levels)
            cpu = time.process_time() - cpu
            wall = time.perf_counter() - wall
            result = simulate(model, insert_frees(model, ops))
            assert result.valid and result.peak_bytes <= budget, result.error
            assert result.compute == params["dp_compute"] or abs(result.compute / params["dp_compute"] - 1) < 1e-9
            # The table alone at exactly `levels` levels, where dp chose another grid.
            same = params["grid"] == "rounded" and params["levels"] <= levels * 1.1
            core = cpu if same else table_seconds(model, budget, levels)
            others = [
                o for o in run_all(model, budget, strategies=[s for s in applicable(model) if s not in ("dp", "milp")])
                if o.feasible
            ]
            best = min(others, key=lambda o: o.solution.result.compute) if others else None
            rows.append(
                dict(
                    n=n,
                    fraction=fraction,
                    budget=budget,
                    wall=wall,
                    cpu=cpu,
                    least_seconds=least_seconds,
                    core=core,
                    grid=params["grid"],
                    levels=params["levels"],
                    overhead=result.overhead,
                    best_other=best.strategy if best else "-",
                    ratio=(result.compute / best.solution.result.compute) if best else None,
                )
            )
            r = rows[-1]
            print(
                f"L={n:5d} at {fraction:.0%}: dp {wall:7.2f} s wall, {cpu:7.2f} s CPU, grid {r['grid']} "
                f"{r['levels']} levels, overhead {r['overhead']:.1%}, best other {r['best_other']} "
                f"ratio {r['ratio'] if r['ratio'] is None else round(r['ratio'], 4)}; least peak in "
                f"{least_seconds if least_seconds is None else round(least_seconds, 1)} s; table at {levels} levels {core:.2f} s CPU",
                file=sys.stderr,
                flush=True,
            )
    return rows


def table(rows, levels):
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} by `python benchmarks/bench_dp.py` on the shared 2-core x86 box "
        f"(Python {platform.python_version()}); other jobs ran at the same time, so wall "
        "seconds are inflated: CPU seconds are the better measure of the work, ratios are "
        "from the same run.",
        "",
        f"Random heterogeneous chains (`random_chain(L, seed=L)`, every size jittered by < 1000 "
        f"bytes so that no exact byte grid is small), `--levels {levels}`; budget at "
        "30% / 60% of the way from dp's least peak to the store-all peak. `dp` columns: the "
        "whole solve with its default grid (finer than `--levels` when n^3/6 x levels stays "
        "under 3e8, plus the search over levels near the budget); `table` is the O(L^3 M) "
        f"table alone at exactly M = {levels} levels (CPU; dp's own time where it used that "
        f"grid). From L = {LONG} on, one budget only, 30% of the way from the input size to the "
        "store-all peak, and the least-peak DP is not run. `least peak` is the "
        "time of the exact O(L^3) least-peak DP that answers an infeasible budget. `vs best "
        "other` is dp's compute divided by the least compute of store-all, sequential, sqrt-n, "
        "chen-greedy and revolve at the same budget (below 1: dp is cheaper).",
        "",
        GRID_NOTE,
        "",
        "| L | budget | grid | levels | dp wall (s) | dp CPU (s) | table CPU (s) | least peak (s) | dp overhead | best other | vs best other |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.4f}"
        least = "-" if r["least_seconds"] is None else f"{r['least_seconds']:.2f}"
        lines.append(
            f"| {r['n']} | {r['fraction']:.0%} | {r['grid']} | {r['levels']} | {r['wall']:.2f} | "
            f"{r['cpu']:.2f} | {r['core']:.2f} | {least} | {r['overhead']:.1%} | {r['best_other']} | {ratio} |"
        )
    cpu = {}
    for r in rows:
        cpu.setdefault(r["n"], r["core"])
    sizes = sorted(cpu)
    growth = [
        f"x{cpu[b] / cpu[a]:.1f} from L = {a} to {b} (L^3 predicts x{(b / a) ** 3:.1f})"
        for a, b in zip(sizes, sizes[1:])
        if cpu[a] > 0.05
    ]
    lines += [
        "",
        "Scaling of the table at fixed M: " + ("; ".join(growth) or "-") + ". The tables take "
        "2 x L^2/2 x M float32 cells (about 2.1 GB at L = 1000, M = 500); dp refuses, with "
        "TooLargeError naming revolve/sequential/chen-greedy, a chain whose tables would "
        "exceed 4 GB or 3e11 steps (about 1,300 layers at 500 levels) when the budget is below "
        "the store-all peak.",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 500, 1000])
    parser.add_argument("--levels", type=int, default=500)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = run(args.sizes, args.levels)
    text = table(rows, args.levels)
    print(text)
    if not args.no_write:
        write_section(SECTION, text, DOC)


if __name__ == "__main__":
    main()
