"""Plans on real op graphs: every strategy's overhead and solve time, and each model's floor.

For each model: the *floor*, the least activation memory any strategy trains
with, as % of store-all's peak, beside a lower bound no schedule can beat (the
largest memory one backward needs by itself: its saved data, the outputs it
reads, its output's gradient and its inputs' gradients, the model input; for a
language model that is the loss over the logits); then, at budgets of 30-70 %
of store-all, each strategy's overhead and solve time; then how long ``auto``
takes at 50 % and ``sweep`` over 12 sizes.

Models: the op graphs of tests/data/models (VGG-16 from torch.fx; GPT-2, BERT
with its attention mask as an input, ViT and a ResNet-50 from transformers,
profiled op by op with ``edgeplan profile --stages ops`` through the wrappers
of benchmarks/hf_wrappers.py, see tests/data/README.md), the ordinary chains of
tests/data/models, and synthetic transformer-shaped graphs with a shared mask
(``planner.synthetic.transformer_dag``), one of about 500 ops.

Usage::

    python benchmarks/bench_blocks.py [--write] [--quick]

``--write`` replaces the "Plans on real op graphs" section of docs/benchmarks.md.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._docs import markdown_table, publish, stamp  # noqa: E402
from planner.errors import InfeasibleError  # noqa: E402
from planner.holding import held_view  # noqa: E402
from planner.model import load_model  # noqa: E402
from planner.solvers import run_all, solve  # noqa: E402
from planner.sweep import plan as sweep_plan, sweep  # noqa: E402
from planner.synthetic import transformer_dag  # noqa: E402

HEADING = "## Plans on real op graphs (hierarchical, held small tensors)"
DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "models"
FRACTIONS = (0.3, 0.4, 0.5, 0.7)
SHOWN = ("chen-greedy", "reforward", "dp", "milp", "hierarchical")


def models(quick):
    names = ["vgg16-ops", "gpt2-ops", "bert-mask-ops", "vit-ops", "resnet50-ops", "resnet50", "vgg16",
             "mobilenet_v2-cpu"]
    found = [(n, load_model(DATA / f"{n}.json")) for n in names if (DATA / f"{n}.json").exists()]
    found.append(("transformer-12 (synthetic)", transformer_dag(12)))
    if not quick:
        found.append(("transformer-40 (synthetic)", transformer_dag(40)))
    return found


def one_backward_bound(model):
    """The most memory any single backward needs, whatever the schedule (a lower bound of every peak)."""
    layers = model.layers
    bound = 0
    for i, layer in enumerate(layers):
        reads = set(layer.inputs) if layer.needs_inputs else set()
        if layer.needs_output or i == len(layers) - 1:
            reads.add(i)
        need = model.input_bytes + layer.saved_bytes + layer.workspace_backward
        need += sum(layers[j].output_bytes for j in reads)
        need += layers[i].output_bytes  # its output's gradient (the sink's appears at its backward)
        need += sum(layers[j].output_bytes for j in layer.inputs if j not in reads)  # new input gradients
        need += sum(layers[j].output_bytes for j in layer.inputs if j in reads)
        bound = max(bound, need)
    return bound


def milp_gap(model, budget, seconds):
    """[hierarchical's overhead, milp's, proven, gap] at ``budget``."""
    try:
        ours = solve(model, budget, "hierarchical")
        exact = solve(model, budget, "milp", time_limit=seconds)
    except InfeasibleError:
        return ["-", "-", "-", "-"]
    gap = ours.result.compute / exact.result.compute - 1
    return [pct(ours.result.overhead), pct(exact.result.overhead), str(exact.params.get("proven_optimal")),
            f"{100 * gap:.2f}%"]


def pct(x):
    return f"{100 * x:.1f}%"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="leave out the 500-op model")
    parser.add_argument("--milp-seconds", type=float, default=20.0,
                        help="milp's time on models of up to 70 layers, for the gap at 50%% (0: skip)")
    args = parser.parse_args(argv)
    floors, rows, timings, gaps = [], [], [], []
    for label, model in models(args.quick):
        top = solve(model, None, "store-all").result.peak_bytes
        view = held_view(model)
        least = {}
        for o in run_all(model, 0):
            if o.least_bytes is not None:
                least[o.strategy] = o.least_bytes
            elif o.feasible:
                least[o.strategy] = o.solution.result.peak_bytes
        floor_name = min(least, key=least.get)
        floors.append([
            label, len(model), "chain" if model.is_chain else "DAG",
            ", ".join(view.held_names) if view else "-",
            pct(least[floor_name] / top), floor_name, pct(least.get("hierarchical", float("nan")) / top),
            pct(one_backward_bound(model) / top),
        ])
        for fraction in FRACTIONS:
            budget = int(top * fraction)
            outcomes = {o.strategy: o for o in run_all(model, budget)}
            cells = []
            for name in SHOWN:
                o = outcomes.get(name)
                if o is None:
                    cells.append("n/a")
                elif o.feasible:
                    cells.append(f"{pct(o.solution.result.overhead)} ({o.solve_seconds:.2f} s)")
                else:
                    cells.append(f"- ({o.solve_seconds:.2f} s)")
            feasible = [o.solution.result.overhead for o in outcomes.values() if o.feasible]
            best = pct(min(feasible)) if feasible else "-"
            rows.append([label, pct(fraction)] + cells + [best])
        started = time.perf_counter()
        try:
            solve(model, int(top * 0.5), "auto")
        except InfeasibleError:
            pass
        auto_s = time.perf_counter() - started
        started = time.perf_counter()
        plan = sweep_plan(model, steps=12)
        sweep(model, plan.sizes, shared=plan.shared)
        sweep_s = time.perf_counter() - started
        timings.append([label, len(model), f"{auto_s:.2f}", f"{sweep_s:.2f}"])
        if args.milp_seconds and len(model) <= 70:
            gaps.append([label, len(model)] + milp_gap(model, int(top * 0.5), args.milp_seconds))
        print(f"done {label}", file=sys.stderr)
    machine = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    text = "\n\n".join([
        HEADING,
        f"{stamp()}, {machine}; `python benchmarks/bench_blocks.py --write`. Held: the small shared "
        "tensors held for the whole step (planner/holding.py). Floor: the least activation memory "
        "any strategy trains with, % of store-all's peak, and which strategy; bound: the most one "
        "backward needs by itself, which no schedule goes below.",
        markdown_table(["model", "layers", "shape", "held", "floor", "by", "hierarchical", "bound"], floors),
        "Overhead (solve time) of each strategy at a budget, % of store-all's peak; `-`: does not fit; "
        "best: what `auto` returns. milp runs in the default set on DAGs of up to 100 layers, for 0.5 s.",
        markdown_table(["model", "budget"] + list(SHOWN) + ["best"], rows),
        "Seconds for `solve --strategy auto` at 50 % of store-all, and for `sweep` over 12 sizes "
        "(including the range search).",
        markdown_table(["model", "layers", "auto (s)", "sweep 12 sizes (s)"], timings),
        f"At 50 % of store-all, on the models of up to 70 layers (where milp's program gives every "
        f"backward its own stage, so a proven optimum is the least compute of its whole search space): "
        f"hierarchical's overhead beside milp's after {args.milp_seconds:g} s, warm-started as `solve "
        "--strategy milp` does; gap: hierarchical's compute over milp's, less 1.",
        markdown_table(["model", "layers", "hierarchical", "milp", "proven", "gap"], gaps),
    ])
    publish(HEADING, text, write=args.write)


if __name__ == "__main__":
    main()
