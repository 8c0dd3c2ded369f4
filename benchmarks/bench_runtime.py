"""Real CPU step times under edgeplan's training executor, against plain autograd and checkpoint_sequential.

Three chains (``examples/tiny_cnn.py``, the ResNet-18-shaped chain of
``tests/models_torch.py`` and the GPT-like body of ``examples/train.py``), two
activation budgets each (fractions of what store-all needs, where the four
strategies are feasible).  For each case a
training step (forward, backward, no optimizer) is timed for:

- plain autograd;
- ``torch.utils.checkpoint.checkpoint_sequential(..., use_reentrant=False)``
  with the segments of the ``sequential`` schedule;
- :class:`planner.torch.executor.ScheduledModule` running the
  ``sequential``, ``dp``, ``revolve`` and ``reforward`` schedules.

The methods are timed in turn within each round, and each time is the median
over the rounds, so that the load of a shared machine falls on every method
alike.  The measured overhead (``time / plain - 1``) is printed next to the
predicted one (the schedule's ``overhead``, from the times that
``edgeplan profile`` measured), and the executor's time on the ``sequential``
schedule is compared with ``checkpoint_sequential``'s on the same segments
(the median of the per-round ratios: the two run back to back).

Run: ``python benchmarks/bench_runtime.py [--rounds N] [--quick] [--no-write]``.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.utils.checkpoint import checkpoint_sequential  # noqa: E402

from benchmarks._docs import write_section  # noqa: E402
from planner import solvers  # noqa: E402
from planner.errors import InfeasibleError  # noqa: E402
from planner.torch.profile import profile_model  # noqa: E402
from planner.model import model_from_dict  # noqa: E402
from planner.torch.executor import ScheduledModule  # noqa: E402

STRATEGIES = ("sequential", "dp", "revolve", "reforward")


def _models():
    from examples.tiny_cnn import tiny_cnn
    from examples.train import BATCH, CONTEXT, WIDTH, gpt
    from tests.models_torch import resnet_chain

    return [
        ("tiny_cnn", tiny_cnn, (32, 3, 32, 32), (0.8, 0.9)),
        ("resnet-chain", resnet_chain, (8, 3, 96, 96), (0.6, 0.8)),
        ("gpt-body", lambda: gpt()[1], (BATCH, CONTEXT, WIDTH), (0.5, 0.7)),
    ]


def _step(call, x):
    out = call(x)
    out.backward(torch.ones_like(out))


def _cases(label, factory, shape, fractions):
    doc = profile_model(factory(), shape, repeats=3, name=label)
    model = model_from_dict(doc)
    full = solvers.solve(model, None, "store-all").result.peak_bytes
    cases = []
    for fraction in fractions:
        budget = int(full * fraction)
        schedules = {}
        for strategy in STRATEGIES:
            try:
                schedules[strategy] = solvers.solve(model, budget, strategy).schedule
            except InfeasibleError:
                continue
        cases.append((fraction, budget, schedules))
    return model, cases


def _time_case(factory, model, shape, schedules, rounds):
    """Median step seconds of each method, the methods timed in turn in every round."""
    x = torch.randn(shape)
    methods = {}
    plain = factory()
    methods["plain"] = lambda: _step(plain, x)
    if "sequential" in schedules:
        segments = schedules["sequential"].params.get("segments")
        net = factory()
        methods["checkpoint_sequential"] = lambda: _step(
            lambda t: checkpoint_sequential(net, segments, t, use_reentrant=False), x
        )
    for strategy, schedule in schedules.items():
        wrapped = ScheduledModule(factory(), model, schedule)
        methods[strategy] = (lambda w: lambda: _step(w, x))(wrapped)
    if "sequential" in methods:  # right after checkpoint_sequential: the pair sees the same load
        order = ["plain", "checkpoint_sequential", "sequential"]
        methods = {k: methods[k] for k in order + [k for k in methods if k not in order]}
    for fn in methods.values():  # warm up (allocator, first-call costs)
        fn()
    times = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    if "sequential" in times:  # paired: the two run back to back in every round
        medians["ratio"] = statistics.median(
            a / b for a, b in zip(times["sequential"], times["checkpoint_sequential"])
        )
    return medians


def run(rounds, quick):
    torch.set_num_threads(1)  # one core per step: steadier times on a shared machine
    rows = []
    models = _models()[:1] if quick else _models()
    for label, factory, shape, fractions in models:
        model, cases = _cases(label, factory, shape, fractions[:1] if quick else fractions)
        for fraction, budget, schedules in cases:
            times = _time_case(factory, model, shape, schedules, rounds)
            base = times["plain"]
            for name in ["plain", "checkpoint_sequential", *STRATEGIES]:
                if name not in times:
                    continue
                sched = schedules.get(name)
                if name == "checkpoint_sequential":
                    sched = schedules["sequential"]
                predicted = sched.predicted["overhead"] if sched is not None else 0.0
                params = (sched.params if sched is not None else {})
                rows.append({
                    "model": label, "fraction": fraction, "budget": budget, "method": name,
                    "params": params, "ms": times[name] * 1000, "measured": times[name] / base - 1,
                    "predicted": predicted,
                    "peak": sched.predicted["peak_bytes"] if sched is not None else None,
                })
            if "sequential" in times:
                ratio = times["ratio"] - 1
                rows.append({"model": label, "fraction": fraction, "budget": budget,
                             "method": "executor vs checkpoint_sequential", "ratio": ratio})
    return rows


def table(rows):
    lines = [
        "| model | budget (of store-all) | method | params | predicted peak | step (ms) | measured overhead | predicted overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "ratio" in r:
            lines.append(
                f"| {r['model']} | {r['fraction']:.0%} | **executor (sequential) vs checkpoint_sequential** "
                f"| | | | **{r['ratio']:+.1%}** | |"
            )
            continue
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k in ("segments", "snapshots"))
        peak = f"{r['peak']:,}" if r["peak"] is not None else ""
        lines.append(
            f"| {r['model']} | {r['fraction']:.0%} | {r['method']} | {params} | {peak} | {r['ms']:.1f} "
            f"| {r['measured']:+.1%} | {r['predicted']:+.1%} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per case (default 15)")
    parser.add_argument("--quick", action="store_true", help="one model, one budget (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = run(args.rounds, args.quick)
    text = table(rows)
    print(text)
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    if ratios:
        print(f"executor on sequential vs checkpoint_sequential: median {statistics.median(ratios):+.1%}, "
              f"max {max(ratios):+.1%}")
    if not args.no_write and not args.quick:
        stamp = datetime.date.today().isoformat()
        body = (
            f"`python benchmarks/bench_runtime.py` ({stamp}, torch {torch.__version__}, "
            f"{platform.machine()} CPU, one thread, a shared 2-core box; median of {args.rounds} rounds, "
            "the methods timed in turn in each round). A step is a forward and a backward, no optimizer. "
            "Measured overhead is the step time over plain autograd's, minus 1; predicted overhead is the "
            "schedule's, from the stage times `edgeplan profile` measured. checkpoint_sequential runs "
            "the segments of the `sequential` schedule; the executor-vs-checkpoint_sequential rows are the median "
            "of the per-round ratios of the two, run back to back (the per-method medians can differ from it "
            "when the load changes between rounds).\n\n" + text + "\n\n"
            + (f"Executor on the `sequential` schedule against `checkpoint_sequential` on the same "
               f"segments: median {statistics.median(ratios):+.1%}, max {max(ratios):+.1%}.\n" if ratios else "")
        )
        write_section("## Training executor: real step times (CPU)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
