"""Scale benchmark: long chains, large DAGs, and the simulator's throughput.

Measures, on synthetic models (:mod:`planner.synthetic`):

* chains of 2,500 to 20,000 layers: ``revolve --snapshots 20``, ``sqrt-n`` and
  ``chen-greedy`` (solve time, ops, peak, and the peak Python heap, whose
  ratio to the layer count shows that memory grows linearly);
* DAGs of 500 to 2,000 nodes: ``chen-greedy`` and ``reforward``;
* the simulator on 10^6 ops, streamed from a generator (its heap stays
  constant) and from a list, and :func:`planner.lowering.insert_frees` on the
  same ops.

Usage::

    python benchmarks/bench_scale.py            # print the tables
    python benchmarks/bench_scale.py --write    # also replace the "Scale" section of docs/benchmarks.md
    python benchmarks/bench_scale.py --quick    # small sizes, for a smoke test

Strategies not registered yet are listed as missing, not silently dropped.
"""

import argparse
import datetime
import gc
import pathlib
import platform
import sys
import time
import tracemalloc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)

from planner.lowering import insert_frees  # noqa: E402
from planner.schedule import OpKind  # noqa: E402
from planner.simulate import simulate  # noqa: E402
from planner.solvers import STRATEGIES, solve  # noqa: E402
from planner.synthetic import random_dag, uniform_chain  # noqa: E402

SECTION = "## Scale (benchmarks/bench_scale.py)"
CHAIN_RUNS = [("revolve", {"snapshots": 20}), ("sqrt-n", {}), ("chen-greedy", {})]
DAG_RUNS = [("chen-greedy", {}), ("reforward", {})]
TIGHT = 0.25  # the tight budget, as a fraction of store-all's peak


def residual_dag(n, seed=0):
    """A ResNet-like DAG: a chain where every third layer also reads the layer three back."""
    import numpy as np

    from planner.model import MODEL_FORMAT, model_from_dict

    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n):
        inputs = ["input"] if i == 0 else [f"N{i - 1}"]
        if i >= 3 and i % 3 == 0:
            inputs.append(f"N{i - 3}")
        layers.append({
            "name": f"N{i}",
            "inputs": inputs,
            "forward": float(rng.integers(1, 20)),
            "backward": float(rng.integers(1, 40)),
            "output_bytes": int(rng.integers(1, 100)) * 1000,
            "needs_output": bool(rng.random() < 0.3),
        })
    return model_from_dict(
        {"format": MODEL_FORMAT, "name": f"residual-{n}", "input_bytes": 1000, "layers": layers}
    )


def _measure(fn):
    """(result, seconds, peak traced heap in bytes): one timed run, one traced run."""
    gc.collect()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    del result
    gc.collect()
    tracemalloc.start()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak


def _fmt_bytes(n):
    return f"{n / 1e6:.1f} MB"


def bench_solvers(kind, sizes, runs, build, missing, *, tight=TIGHT):
    """One row per (strategy, size, budget): unlimited, and ``tight`` x the store-all peak."""
    from planner.errors import InfeasibleError

    rows = []
    for name, options in runs:
        if name not in STRATEGIES:
            missing.add(name)
            continue
        for n in sizes:
            model = build(n)
            store_all = solve(model, None, "store-all").result.peak_bytes
            label = " ".join(f"--{k} {v}" for k, v in options.items())
            for budget in (None, int(store_all * tight)):
                shown = "none" if budget is None else f"{tight:.0%} of store-all"
                try:
                    solution, seconds, heap = _measure(lambda: solve(model, budget, name, **options))
                except InfeasibleError as exc:
                    least = exc.least_bytes
                    rows.append(
                        f"| {kind} | {n:,} | {name} {label} | {shown} | infeasible (least "
                        f"{least / store_all:.0%} of store-all) | | | | | |"
                    )
                    print(rows[-1], flush=True)
                    continue
                except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
                    rows.append(f"| {kind} | {n:,} | {name} {label} | {shown} | error: "
                                f"{type(exc).__name__}: {exc} | | | | | |")
                    print(rows[-1], flush=True)
                    continue
                r = solution.result
                rows.append(
                    f"| {kind} | {n:,} | {name} {label} | {shown} | {seconds:.2f} s | "
                    f"{len(solution.ops):,} | {r.overhead:.1%} | {r.peak_bytes / store_all:.0%} | "
                    f"{_fmt_bytes(heap)} | {heap / n:,.0f} |"
                )
                print(rows[-1], flush=True)
    return rows


def bench_loading(sizes, build, kind):
    """Time ``load_model`` (read, schema, checks) on the written file of each size."""
    import json
    import tempfile

    from planner.model import load_model

    rows = []
    for n in sizes:
        model = build(n)
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "model.json"
            path.write_text(json.dumps(model.to_dict()), encoding="utf-8")
            gc.collect()
            started = time.perf_counter()
            load_model(path)
            seconds = time.perf_counter() - started
            rows.append(f"| {kind} | {n:,} | {path.stat().st_size / 1e6:.1f} MB | {seconds:.2f} s |")
        print(rows[-1], flush=True)
    return rows


def bench_simulator(n, snapshots):
    """Simulate revolve's schedule of an ``n``-layer chain, streamed and as a list."""
    from planner.solvers.revolve import revolve_ops

    model = uniform_chain(n)
    model.consumers  # built once per model, not part of the replay

    gc.collect()
    started = time.perf_counter()
    ops = list(revolve_ops(model, snapshots))
    gen_seconds = time.perf_counter() - started
    count = len(ops)

    gc.collect()
    started = time.perf_counter()
    result = simulate(model, ops)
    list_seconds = time.perf_counter() - started
    assert result.valid, result.error

    # Streamed: the generator is consumed once; nothing holds the ops.
    gc.collect()
    started = time.perf_counter()
    streamed = simulate(model, revolve_ops(model, snapshots))
    stream_seconds = time.perf_counter() - started
    assert streamed.predicted() == result.predicted()
    tracemalloc.start()
    simulate(model, revolve_ops(model, snapshots))
    _, stream_heap = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    bare = [op for op in ops if op.kind is not OpKind.FREE]
    gc.collect()
    started = time.perf_counter()
    lowered = insert_frees(model, bare)
    lower_seconds = time.perf_counter() - started
    assert simulate(model, lowered).valid
    lines = [
        "| what | ops | seconds | ops per second | peak heap |",
        "|---|---:|---:|---:|---:|",
        f"| simulate, a list | {count:,} | {list_seconds:.2f} | {count / list_seconds:,.0f} | "
        f"(the list itself: {_fmt_bytes(sys.getsizeof(ops))}) |",
        f"| simulate, streamed from revolve's generator (generation included) | {count:,} | "
        f"{stream_seconds:.2f} | {count / stream_seconds:,.0f} | {_fmt_bytes(stream_heap)} |",
        f"| generating the ops alone (revolve_ops) | {count:,} | {gen_seconds:.2f} | "
        f"{count / gen_seconds:,.0f} | |",
        f"| insert_frees | {len(bare):,} in, {len(lowered):,} out | {lower_seconds:.2f} | "
        f"{len(bare) / lower_seconds:,.0f} | |",
    ]
    for line in lines:
        print(line, flush=True)
    return lines, result


def render(chain_rows, dag_rows, load_rows, sim_lines, sim_n, missing, quick):
    head = ("| model | layers | strategy | budget | solve time | ops | overhead | peak / store-all | "
            "peak heap | heap per layer (B) |")
    rule = "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"
    out = [
        SECTION,
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: 2-core "
        f"x86 box ({platform.machine()}, Python {platform.python_version()}), shared with other jobs "
        "and so noisy: read the ratios within this table rather than absolute times."
        + (" **Quick run (small sizes).**" if quick else ""),
        "",
        "Each solve is run twice: once timed, once under `tracemalloc` for the peak Python heap "
        "(solve, shared lowering, simulation and the schedule object). A constant heap per layer "
        "across sizes means memory grows linearly. Budgets: none (each strategy's own default; "
        f"revolve with 20 snapshots), and {TIGHT:.0%} of the store-all peak (the strategy searches "
        "its parameters, or says it is infeasible and the least it needs).",
        "",
        "Chains (`uniform_chain`, revolve's setting):",
        "",
        head,
        rule,
        *chain_rows,
        "",
        "DAGs: `random_dag` (skip connections to random earlier layers with probability 0.3, up to "
        "3 inputs: long-lived outputs everywhere, so recomputation can hardly save memory) and a "
        "ResNet-like `residual_dag` (every third layer also reads the layer three back):",
        "",
        head,
        rule,
        *dag_rows,
        "",
        "Loading the model file (`load_model`: read, JSON Schema, semantic checks), not included "
        "in the solve times above:",
        "",
        "| model | layers | file | load time |",
        "|---|---:|---:|---:|",
        *load_rows,
        "",
        f"Simulator throughput (revolve's schedule of a {sim_n:,}-layer uniform chain, 2 snapshots; "
        "the streamed replay's heap is the per-layer state, independent of the number of ops):",
        "",
        *sim_lines,
        "",
    ]
    wanted = sorted({name for name, _ in CHAIN_RUNS + DAG_RUNS})
    if missing:
        out += [
            "Not measured, not registered when this ran: " + ", ".join(f"`{m}`" for m in sorted(missing)) + ".",
            "",
        ]
    else:
        out += ["Every strategy this benchmark asks for was registered: "
                + ", ".join(f"`{m}`" for m in wanted) + ".", ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the Scale section of docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args(argv)
    chain_sizes = [500, 1000] if args.quick else [2_500, 5_000, 10_000, 20_000]
    dag_sizes = [100, 200] if args.quick else [500, 1_000, 2_000]
    sim_n = 2_000 if args.quick else 20_000  # 2 snapshots: 1.48 million ops for 20,000 layers
    missing = set()
    chain_rows = bench_solvers("chain", chain_sizes, CHAIN_RUNS, uniform_chain, missing)
    dag_rows = bench_solvers("random DAG", dag_sizes, DAG_RUNS, lambda n: random_dag(n, seed=n), missing)
    dag_rows += bench_solvers("residual DAG", dag_sizes, DAG_RUNS, residual_dag, missing)
    load_rows = bench_loading(chain_sizes[-1:], uniform_chain, "chain")
    load_rows += bench_loading(dag_sizes[-1:], lambda n: random_dag(n, seed=n), "DAG")
    sim_lines, _ = bench_simulator(sim_n, 2)
    text = render(chain_rows, dag_rows, load_rows, sim_lines, sim_n, missing, args.quick)
    if missing:
        print("missing strategies:", ", ".join(sorted(missing)))
    if args.write:
        write_section(SECTION, text, ROOT / "docs" / "benchmarks.md")
        print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
