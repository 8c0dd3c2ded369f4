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

With ``--overhead [--against REV]`` it measures the executor's own overhead
instead: on the ordinary models of ``tests/`` (a chain with BatchNorm and
dropout, a ResNet DAG by ops, nanoGPT and a BERT encoder by ops and by
modules) and the tiny GPT-2 of ``tests/models_hf.py`` as transformers builds it
(its logits are the step's output), a step under the store-all schedule and under ``auto``'s schedule
at 50% of store-all's peak, as the median over the rounds of its ratio to the
plain step of the same round (single-threaded, the methods in turn).  With
``--against REV`` the executor of git revision REV runs the same schedules
in the same rounds (its ``planner/torch/executor.py`` loaded beside this one).
These steps are timed in the thread's CPU time (``time.thread_time``): on a
shared machine, wall time also counts the turns of other processes.

Run: ``python benchmarks/bench_runtime.py [--rounds N] [--quick] [--no-write]``
or ``python benchmarks/bench_runtime.py --overhead [--against REV] [--rounds N] [--no-write]``.
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

import torch
from torch.utils.checkpoint import checkpoint_sequential

from benchmarks import _docs
from benchmarks._docs import markdown_table, publish, write_section
from planner import solvers
from planner.errors import InfeasibleError
from planner.model import model_from_dict
from planner.torch.executor import ScheduledModule
from planner.torch.profile import profile_model

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
    """A forward and a backward with a gradient of ones."""
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
        methods[strategy] = _caller(wrapped, (x,))
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


def _overhead_models():
    from planner.torch.inputs import parse_input
    from tests.models_torch import resnet, small_bert, small_gpt
    from tests.models_train import bn_dropout_chain, resnet_dag

    tokens = [parse_input("4x64:int64:5000")]
    bert = [parse_input("4x64:int64:5000"), parse_input("4x64:int64:2")]
    gpt2_batch = os.path.join(ROOT, "tests", "models_hf.py") + ":gpt2_batch"
    return [
        ("GPT-2 tiny (modules)", _hf_gpt2, gpt2_batch, "modules"),
        ("GPT-2 tiny (ops)", _hf_gpt2, gpt2_batch, "ops"),
        ("bn-dropout chain", bn_dropout_chain, (32, 3, 8, 8), "auto"),
        ("resnet DAG (ops)", resnet_dag, (16, 3, 32, 32), "ops"),
        ("ResNet-18 small (ops)", resnet, (8, 3, 64, 64), "ops"),
        ("nanoGPT (ops)", small_gpt, tokens, "ops"),
        ("nanoGPT (modules)", small_gpt, tokens, "modules"),
        ("BERT encoder (ops)", small_bert, bert, "ops"),
    ]


def _hf_gpt2():
    """tests/models_hf.py's tiny GPT-2 (2 layers, hidden 32, sequence 16, batch 2), as transformers builds it."""
    from tests.models_hf import gpt2

    return gpt2()


def _old_executor(rev):
    """The ``ScheduledModule`` of git revision ``rev`` (its executor.py loaded as a module of its own)."""
    import importlib.util
    import subprocess
    import tempfile

    text = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:planner/torch/executor.py"], check=True,
                          capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="edgeplan-bench-"), "executor_old.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("planner.torch._executor_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ScheduledModule


def _caller(module, inputs):
    return lambda: _step(lambda t: module(*t), inputs)


def _plain_caller(module, inputs):
    """The plain module's step on ``inputs``; a transformers model's step reads its logits, as the stages' sink."""
    args, kwargs = inputs.call() if hasattr(inputs, "call") else (tuple(inputs), {})

    def call(_):
        out = module(*args, **kwargs)
        return getattr(out, "logits", out)

    return lambda: _step(call, inputs)


def _rounds(methods, rounds):
    """Each method's step seconds in every round, the methods timed in turn (after one warm-up each)."""
    for fn in methods.values():
        fn()
    times = {k: [] for k in methods}
    for _ in range(rounds):
        for k, fn in methods.items():
            t0 = time.thread_time()  # CPU time: on a shared machine, wall time counts other processes' turns
            fn()
            times[k].append(time.thread_time() - t0)
    return times


def overhead(rounds, against=None, quick=False):
    """Rows of the executor's own overhead: (model, layers, schedule, predicted, measured[, before])."""
    from planner.torch.inputs import make_example

    torch.set_num_threads(1)
    old = _old_executor(against) if against else None
    rows = []
    for label, factory, spec, mode in _overhead_models()[: 2 if quick else None]:
        model = model_from_dict(profile_model(factory(), spec, repeats=3, name=label, stages=mode))
        inputs, _ = make_example(spec)
        full = solvers.solve(model, None, "store-all")
        schedules = {"store-all": full}
        try:
            schedules["50%"] = solvers.solve(model, int(full.result.peak_bytes * 0.5), "auto")
        except InfeasibleError:
            pass
        methods = {"plain": _plain_caller(factory(), inputs)}
        for name, solution in schedules.items():
            for which, cls in (("after", ScheduledModule), ("before", old)):
                if cls is not None:
                    methods[name, which] = _caller(cls(factory(), model, solution.schedule, stages=mode), inputs)
        times = _rounds(methods, rounds)
        plain_ms = 1000 * statistics.median(times["plain"])
        for name, solution in schedules.items():
            ratio = {which: statistics.median(a / b for a, b in zip(times[name, which], times["plain"]))
                     for which in ("after", "before") if (name, which) in times}
            rows.append((label, len(model.layers), f"{name} ({solution.strategy})",
                         1 + solution.result.overhead, ratio.get("before"), ratio["after"], plain_ms,
                         len(solution.schedule.ops)))
    return rows


def overhead_table(rows):
    """The rows as a table; the last column spreads the gap over the schedule's ops (the executor's cost of one)."""
    body = [
        (label, n, name, f"{plain_ms:.2f}", f"{predicted:.3f}x", "" if before is None else f"{before:.3f}x",
         f"{after:.3f}x", f"{(after - predicted) * 100:+.1f}", n_ops,
         f"{(after - predicted) * plain_ms * 1000 / n_ops:+.1f}")
        for label, n, name, predicted, before, after, plain_ms, n_ops in rows
    ]
    return markdown_table(["model", "layers", "schedule", "plain step (ms)", "predicted", "measured before",
                           "measured", "measured - predicted (points)", "ops", "gap per op (us)"], body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per case (default 15)")
    parser.add_argument("--quick", action="store_true", help="one model, one budget (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--overhead", action="store_true",
                        help="the executor's own overhead on the models of tests/ (store-all and 50%%)")
    parser.add_argument("--against", metavar="REV", help="with --overhead: also time the executor of git revision REV")
    args = parser.parse_args(argv)
    if args.overhead:
        rows = overhead(args.rounds, args.against, args.quick)
        text = (
            f"`python benchmarks/bench_runtime.py --overhead{' --against ' + args.against if args.against else ''}` "
            f"({_docs.stamp()}, torch {torch.__version__}, {platform.machine()} CPU, one thread, a shared 2-core box). "
            "A step is a forward and a backward (no loss, no optimizer). Each figure is the median over "
            f"{args.rounds} rounds of the step's time (the thread's CPU time) over the plain step's of the same round, the methods "
            "timed in turn in each round; predicted is 1 + the schedule's overhead (the stage times that "
            "`edgeplan profile` measured; backwards less the backward() call's own cost). 50% is `auto`'s schedule at half of "
            "store-all's peak. Gap per op: the measured time above the predicted, over the schedule's ops (what "
            "the executor's own work costs an op; a store-all step runs no op of its own)."
            + (f" Before: the executor of {args.against}, on the same schedules in the same rounds." if args.against else "")
            + "\n\n" + overhead_table(rows)
        )
        publish("## Training executor: its own overhead (CPU)", text, write=not args.no_write and not args.quick)
        return 0
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
