"""The simulator's speed, and its speed against another version of edgeplan.

``planner.simulate.simulate`` judges every schedule any solver emits, so a
change to its per-op loop is measured here before it lands:

    python benchmarks/bench_simulate.py                      # this checkout: ops per second
    python benchmarks/bench_simulate.py --against 7c91075    # and the ratio to that commit
    python benchmarks/bench_simulate.py --against 7c91075 --write

Each version runs in its own interpreter (its own ``planner``), built from
``git archive REV`` for ``--against``.  The versions take turns, ``--rounds``
times, so that a busy machine slows both alike; each round times every case
``--repeats`` times and keeps the fastest.  The ratio is this checkout's
time over the other's, from the best round and from the median round.

Cases: revolve's schedule on a long uniform chain (the op count of a real
revolve run), store-all on a large random DAG, and page-all on a random DAG
with the Raspberry Pi preset's SD card (pageouts and pageins).
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import markdown_table, publish, stamp  # noqa: E402  (benchmarks/ is on sys.path)

HEADING = "## Simulator speed"

# Run inside each version's interpreter: build the cases with that version's
# planner, then print {case: [ops, best seconds]} as JSON.
CHILD = r"""
import dataclasses, json, sys, time
from planner.device import PRESETS
from planner.simulate import simulate
from planner.solvers import solve
from planner.solvers.revolve import revolve_ops
from planner.synthetic import random_dag, uniform_chain

quick, repeats = sys.argv[1] == "1", int(sys.argv[2])
scale = 10 if quick else 1
storage = PRESETS["rpi4-4gb-sd"].storage
chain = uniform_chain(40_000 // scale)
dag = random_dag(40_000 // scale, seed=1)
paged = dataclasses.replace(random_dag(20_000 // scale, seed=2), time_unit="ms")
cases = {
    "revolve, uniform chain": (chain, list(revolve_ops(chain, 6)), None),
    "store-all, random DAG": (dag, list(solve(dag, None, "store-all").ops), None),
    "page-all, random DAG, rpi4 SD": (paged, list(solve(paged, None, "page-all", storage=storage).ops), storage),
}
out = {}
for name, (model, ops, store) in cases.items():
    kwargs = {"storage": store} if store is not None else {}
    result = simulate(model, ops, **kwargs)
    assert result.valid, (name, result.error)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        simulate(model, ops, **kwargs)
        best = min(best, time.perf_counter() - start)
    out[name] = [len(ops), best]
print(json.dumps(out))
"""


def export(rev, into):
    """``git archive rev`` of this repository unpacked into ``into``; returns the path."""
    archive = subprocess.run(["git", "-C", str(HERE), "archive", rev], capture_output=True, check=True).stdout
    target = Path(into) / "other"
    target.mkdir()
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(target, filter="data")
    return target


def run_version(root, *, quick, repeats):
    """One round in a fresh interpreter whose ``planner`` is ``root``'s."""
    done = subprocess.run([sys.executable, "-c", CHILD, "1" if quick else "0", str(repeats)],
                          cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench_simulate: the run in {root} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def measure(roots, *, rounds, quick, repeats):
    """``{label: [round results]}``, the versions taking turns."""
    runs = {label: [] for label in roots}
    for k in range(rounds):
        for label, root in roots.items():
            print(f"round {k + 1}/{rounds}: {label}", file=sys.stderr)
            runs[label].append(run_version(root, quick=quick, repeats=repeats))
    return runs


def table(runs, against):
    rows = []
    for case in runs["this checkout"][0]:
        ops = runs["this checkout"][0][case][0]
        mine = [r[case][1] for r in runs["this checkout"]]
        row = [case, f"{ops:,}", f"{min(mine):.3f}", f"{ops / min(mine) / 1e6:.2f}"]
        if against is not None:
            theirs = [r[case][1] for r in runs[against]]
            row += [f"{min(theirs):.3f}", f"{min(mine) / min(theirs):.2f}",
                    f"{statistics.median(mine) / statistics.median(theirs):.2f}"]
        rows.append(row)
    header = ["case", "ops", "seconds (best)", "million ops/s"]
    if against is not None:
        header += [f"seconds at {against}", "ratio, best", "ratio, median"]
    return markdown_table(header, rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also time this git revision and print the ratio")
    parser.add_argument("--rounds", type=int, default=5, help="turns each version takes (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per case and round, the best kept")
    parser.add_argument("--quick", action="store_true", help="cases a tenth the size")
    parser.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeplan-bench-") as tmp:
        roots = {"this checkout": HERE}
        if args.against:
            roots[args.against] = export(args.against, tmp)
        runs = measure(roots, rounds=args.rounds, quick=args.quick, repeats=args.repeats)
    text = (
        f"{HEADING}\n\n{table(runs, args.against)}\n\n"
        f"Run {stamp()} on {platform.machine()} ({platform.system()}, Python {platform.python_version()}) "
        f"with `python benchmarks/bench_simulate.py{' --against ' + args.against if args.against else ''}"
        f"{' --quick' if args.quick else ''}`: {args.rounds} rounds, the versions taking turns, each in its own "
        f"interpreter; per round the best of {args.repeats} timings of `simulate` on an op list built "
        "beforehand. Ratio: this checkout's time over the other's (below 1: faster now)."
    )
    publish(HEADING, text, write=args.write)


if __name__ == "__main__":
    main()
