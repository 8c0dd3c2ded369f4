"""Solve time and schedule quality of the chain strategies.

Usage::

    python benchmarks/bench_chain_solvers.py [--quick] [--no-write]

Prints two markdown tables (and a third for revolve's op generation) and
writes them as the section "## Chain solvers" of docs/benchmarks.md (replacing
an older one).  ``--quick`` runs small sizes only, for a smoke test.

1. Solve time (registry ``solve``: solver, lowering and simulation) on random
   heterogeneous chains of 10 .. 10^4 layers, at half the store-all peak.  A
   size is skipped for a strategy when its previous size's time, scaled by
   the square of the size ratio, predicts more than ``LIMIT`` seconds.
2. revolve's op generation alone for 10^4 .. 10^6 layers with 20 snapshots:
   making the ops lazily and replaying them through the simulator as a stream.
3. Quality: overhead (extra compute / baseline) at budgets of 20% .. 90% of the
   store-all peak, and each strategy's least feasible budget, on the measured
   model files of ../shared/models and on synthetic heterogeneous chains.
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
from planner.model import Layer, Model, load_model  # noqa: E402
from planner.simulate import simulate  # noqa: E402
from planner.solvers import STRATEGIES, solve  # noqa: E402
from planner.solvers.revolve import numforw, revolve_ops  # noqa: E402
from planner.synthetic import random_chain  # noqa: E402

SHARED = ROOT.parent / "shared" / "models"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Chain solvers (store-all, sequential, sqrt-n, chen-greedy, revolve, dp)"
# A size is skipped when the previous one, scaled quadratically, predicts more than this.
LIMIT = 120.0
MODELS = ["vgg16.json", "resnet18.json", "resnet18-cpu.json", "mobilenet_v2-cpu.json"]
FRACTIONS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def strategies():
    names = ["store-all", "sequential", "sqrt-n", "chen-greedy", "revolve"]
    return names + (["dp"] if "dp" in STRATEGIES else [])


def timed_solve(model, budget, name, **options):
    started = time.perf_counter()
    try:
        sol = solve(model, budget, name, **options)
    except InfeasibleError as exc:
        return None, exc, time.perf_counter() - started
    return sol, None, time.perf_counter() - started


def solve_times(sizes):
    names = strategies()
    columns = names + ["revolve --snapshots 20"]
    last = {}  # column -> (n, seconds) of its previous size
    rows = []
    for n in sizes:
        model = random_chain(n, seed=n)
        budget = solve(model, None, "store-all").result.peak_bytes // 2
        row = [f"{n:,}"]
        for column in columns:
            if column in last:
                before, seconds = last[column]
                estimate = seconds * (n / before) ** 2
                if estimate > LIMIT:
                    row.append(f"skipped (est. {estimate:,.0f})")
                    continue
            if column.startswith("revolve --snapshots"):
                _, _, seconds = timed_solve(model, None, "revolve", snapshots=20)
                text = f"{seconds:.3f}"
            else:
                sol, _, seconds = timed_solve(model, budget, column)
                text = f"{seconds:.3f}" + ("" if sol is not None else " (infeasible)")
            last[column] = (n, seconds)
            row.append(text)
            print(f"  solve time n={n} {column}: {text}", file=sys.stderr)
        rows.append(row)
    return markdown_table(["layers"] + columns, rows)


def plain_uniform_chain(n):
    """A uniform chain built without file validation (10^6 layers in seconds)."""
    layers = tuple(
        Layer(name=f"L{i}", inputs=(i - 1,) if i else (), uses_input=not i, forward=1.0,
              backward=2.0, output_bytes=100)
        for i in range(n)
    )
    return Model(name=f"uniform-{n}", input_bytes=100, layers=layers)


def revolve_generation(sizes, snapshots=20):
    rows = []
    for n in sizes:
        model = plain_uniform_chain(n)
        started = time.perf_counter()
        count = sum(1 for _ in revolve_ops(model, snapshots))
        generate = time.perf_counter() - started
        started = time.perf_counter()
        result = simulate(model, revolve_ops(model, snapshots))
        both = time.perf_counter() - started
        assert result.valid and result.forwards == n + numforw(n, snapshots + 1)
        rows.append([f"{n:,}", f"{count:,}", f"{result.forwards:,}", f"{generate:.2f}", f"{both:.2f}"])
        print(f"  revolve ops n={n}: {count} ops, {generate:.2f} s, streamed {both:.2f} s", file=sys.stderr)
    return markdown_table(
        ["layers", "ops", "forwards (= l + numforw(l, 21))", "generate (s)", "generate + simulate, streamed (s)"],
        rows,
    )


def quality(models):
    names = strategies()
    blocks = []
    for label, model in models:
        full = solve(model, None, "store-all").result.peak_bytes
        header = ["strategy"] + [f"{int(f * 100)}%" for f in FRACTIONS] + ["least budget"]
        rows = []
        for name in names:
            row = [name]
            for fraction in FRACTIONS:
                sol, _, _ = timed_solve(model, int(full * fraction), name)
                row.append("-" if sol is None else f"{sol.result.overhead:.1%}")
            sol, exc, _ = timed_solve(model, 0, name)
            least = exc.least_bytes if exc is not None else sol.result.peak_bytes
            row.append("?" if least is None else f"{least / full:.1%}")
            rows.append(row)
            print(f"  quality {label} {name}: {row[1:]}", file=sys.stderr)
        blocks.append(
            f"**{label}** ({len(model)} layers, store-all peak {full:,} bytes): overhead at a budget "
            f"of x% of the store-all peak (`-`: infeasible); least budget as % of that peak.\n\n"
            + markdown_table(header, rows)
        )
    return "\n\n".join(blocks)


def against_sequential(models):
    """dp at the peak of each ``checkpoint_sequential`` segment count (the seed paper's comparison)."""
    rows = []
    for label, model in models:
        seen = set()
        for segments in range(2, min(len(model), 10) + 1):
            seq = solve(model, None, "sequential", segments=segments)
            peak = seq.result.peak_bytes
            if peak in seen:
                continue
            seen.add(peak)
            best, _, _ = timed_solve(model, peak, "dp")
            rows.append(
                [
                    label,
                    segments,
                    f"{peak:,}",
                    f"{1 + seq.result.overhead:.3f}x",
                    "-" if best is None else f"{1 + best.result.overhead:.3f}x",
                ]
            )
            print(f"  vs sequential {label} s={segments}: {rows[-1][3:]}", file=sys.stderr)
    return markdown_table(["model", "segments", "peak (bytes)", "sequential time", "dp time at that peak"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    args = parser.parse_args()
    sizes = [10, 100] if args.quick else [10, 100, 1_000, 10_000]
    revolve_sizes = [10_000] if args.quick else [10_000, 100_000, 1_000_000]

    models = [(name, load_model(SHARED / name)) for name in MODELS if (SHARED / name).exists()]
    models += [
        ("synthetic random-chain-50 (seed 1)", random_chain(50, seed=1)),
        ("synthetic random-chain-200 (seed 2)", random_chain(200, seed=2)),
    ]
    if args.quick:
        models = models[:1]

    when = stamp()
    times = solve_times(sizes)
    generation = revolve_generation(revolve_sizes)
    quality_text = quality(models)
    versus = against_sequential(models)
    text = f"""Measured {when} with `python benchmarks/bench_chain_solvers.py` on a 2-core shared x86
box (Python {platform.python_version()}); other jobs ran at the same time, so compare numbers
within a table, not across runs.

### Solve time (seconds)

Registry `solve` (solver + lowering + simulation) on `random_chain(n, seed=n)`, a heterogeneous
chain, at half its store-all peak; `revolve --snapshots 20` without a budget. `skipped (est. N)`:
the previous size's time scaled by (size ratio)^2 predicts N > {LIMIT:.0f} s.

{times}

### revolve: op generation for long chains (20 snapshots)

Uniform chains; `revolve_ops` is a lazy generator that also emits the frees, so the simulator
consumes the schedule as a stream and no op list is held.

{generation}

### Quality on real and synthetic chains

{quality_text}

Reading the tables: `revolve` places its snapshots by step count alone (the binomial rule is
optimal for equal layers), and every layer but the sink is forwarded at least twice, so on
chains with very unequal layers it pays more compute than the memory-aware strategies;
`chen-greedy` cuts by memory and searches its segment budget; `dp` is optimal among persistent
schedules. The least budget of `sqrt-n` and `store-all` is their single schedule's peak.

### dp against checkpoint_sequential at the same memory

The seed paper (Beaumont et al. 2019) reports that the optimal DP reaches the memory of
`checkpoint_sequential` at about 1.5x the time of a plain step instead of about 1.9x
(ResNet-152). Here: for each segment count of `sequential`, its peak, its compute relative to
a plain step (1 + overhead), and dp's at a budget equal to that peak.

{versus}
"""
    publish(SECTION, text, write=not args.no_write, path=DOC)


if __name__ == "__main__":
    main()
