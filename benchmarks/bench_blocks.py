"""Plans on real op graphs: every strategy's overhead and solve time, and each model's floor.

The transformers models are profiled here, op by op, with the real capture
(``edgeplan profile --stages ops``, planner/torch/export.py: no wrapper, the
model as transformers builds it): GPT-2, BERT with a padding mask, Llama
(rotary tables, grouped-query attention), ViT and ResNet from the tiny
configs of tests/models_hf.py (random weights, the shapes of its examples),
measured on this machine (``--repeats``, default 3).  Beside them, the
ordinary models of tests/data/models (VGG-16 as an op graph, the ResNet-50,
VGG-16 and MobileNetV2 chains) and a synthetic transformer-shaped graph of
about 500 ops (``planner.synthetic.transformer_dag``).

For each model: store-all's activation peak; the *floor*, the least
activation memory any strategy trains with, as % of store-all's; two lower
bounds (see :func:`one_backward_bound` and :func:`block_bound`); then at
30-70 % of store-all each strategy's overhead and solve time; then how long
``auto`` takes at 50 % and ``sweep`` over 12 sizes.

Usage::

    python benchmarks/bench_blocks.py [--write] [--quick] [--save DIR]

``--write`` replaces the "Plans on real op graphs" section of
docs/benchmarks.md; ``--save DIR`` also writes the profiled model files
there (tests/data/models/*-hf-ops.json were made so).
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._docs import markdown_table, publish, stamp  # noqa: E402
from planner.errors import InfeasibleError  # noqa: E402
from planner.holding import held_view  # noqa: E402
from planner.model import load_model, model_from_dict  # noqa: E402
from planner.solvers import run_all, solve, solving_model  # noqa: E402
from planner.solvers.blocks import block_floors  # noqa: E402
from planner.sweep import plan as sweep_plan, sweep  # noqa: E402
from planner.synthetic import transformer_dag  # noqa: E402

HEADING = "## Plans on real op graphs (hierarchical, held small tensors)"
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "models"
FAMILIES = ("gpt2", "bert", "llama", "vit", "resnet")
FILES = ("vgg16-ops", "resnet50", "vgg16", "mobilenet_v2-cpu")
FRACTIONS = (0.3, 0.4, 0.5, 0.7)
SHOWN = ("chen-greedy", "reforward", "dp", "milp", "hierarchical")


def profile_family(family, repeats):
    """The ``edgeplan-model/1`` document of one family of tests/models_hf.py, profiled op by op."""
    import tests.models_hf as hf
    from planner.torch.profile import profile_model

    return profile_model(getattr(hf, family)(), f"{hf.__file__}:{family}_batch", stages="ops", repeats=repeats,
                         loss="cross_entropy", name=f"{family}-hf-ops")


def models(quick, repeats, save):
    found = []
    for family in FAMILIES:
        doc = profile_family(family, repeats)
        if save:
            Path(save, f"{family}-hf-ops.json").write_text(json.dumps(doc, indent=1) + "\n")
        found.append((f"{family} (transformers)", model_from_dict(doc)))
    found += [(n, load_model(DATA / f"{n}.json")) for n in FILES]
    if not quick:
        found.append(("transformer-40 (synthetic)", transformer_dag(40)))
    return found


def one_backward_bound(model):
    """``(bytes, layer name)``: the most memory one backward needs by itself, whatever the schedule.

    Its saved data, the outputs it reads, its output's gradient and its
    inputs' gradients, the model input: a lower bound of every peak (for a
    language model, the loss over the logits).
    """
    layers = model.layers
    bound = (0, "")
    for i, layer in enumerate(layers):
        reads = set(layer.inputs) if layer.needs_inputs else set()
        if layer.needs_output or i == len(layers) - 1:
            reads.add(i)
        need = model.input_bytes + layer.saved_bytes + layer.workspace_backward
        need += sum(layers[j].output_bytes for j in reads)
        need += layer.output_bytes  # its output's gradient (the sink's appears at its backward)
        need += sum(layers[j].output_bytes for j in layer.inputs)  # its inputs' gradients
        bound = max(bound, (need, layer.name))
    return bound


def block_bound(model):
    """``(bytes, block)``: the largest, over the blocks between cut points, of the least peak of its menu.

    What running that block forward and backward needs in ``hierarchical``'s
    class (its input and its output's gradient held): no schedule of the
    class goes below it; milp, which may recompute across blocks, can.
    """
    reduced = solving_model(model)
    (start, stop), least = max(block_floors(reduced), key=lambda x: x[1])
    layers = reduced.layers
    name = layers[start].name if stop - start == 1 else f"{layers[start].name}..{layers[stop - 1].name}"
    return least, name


def pct(x):
    return f"{100 * x:.1f}%"


def floor_row(label, model):
    top = solve(model, None, "store-all").result.peak_bytes
    view = held_view(model)
    least = {}
    for o in run_all(model, 0):
        if o.least_bytes is not None:
            least[o.strategy] = o.least_bytes
        elif o.feasible:
            least[o.strategy] = o.solution.result.peak_bytes
    floor_name = min(least, key=least.get)
    one, one_at = one_backward_bound(model)
    blk, blk_at = block_bound(model)
    return top, [
        label, len(model), "chain" if model.is_chain else "DAG", ", ".join(view.held_names) if view else "-",
        f"{top / 1024:.0f}", pct(least[floor_name] / top), floor_name,
        pct(least.get("hierarchical", float("nan")) / top),
        f"{pct(one / top)} ({one_at})", f"{pct(blk / top)} ({blk_at})",
    ]


def budget_rows(label, model, top):
    rows = []
    for fraction in FRACTIONS:
        outcomes = {o.strategy: o for o in run_all(model, int(top * fraction))}
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
        rows.append([label, pct(fraction)] + cells + [pct(min(feasible)) if feasible else "-"])
    return rows


def timing_row(label, model, top):
    started = time.perf_counter()
    try:
        solve(model, int(top * 0.5), "auto")
    except InfeasibleError:
        pass
    auto_s = time.perf_counter() - started
    started = time.perf_counter()
    plan = sweep_plan(model, steps=12)
    sweep(model, plan.sizes, shared=plan.shared)
    return [label, len(model), f"{auto_s:.2f}", f"{time.perf_counter() - started:.2f}"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="leave out the 500-op model")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of the profile (default 3)")
    parser.add_argument("--save", metavar="DIR", help="also write the profiled model files into DIR")
    args = parser.parse_args(argv)
    floors, rows, timings = [], [], []
    for label, model in models(args.quick, args.repeats, args.save):
        top, row = floor_row(label, model)
        floors.append(row)
        rows += budget_rows(label, model, top)
        timings.append(timing_row(label, model, top))
        print(f"done {label}", file=sys.stderr)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {platform.python_implementation()} " \
              f"{platform.python_version()}"
    text = "\n\n".join([
        HEADING,
        (f"{stamp()}, {machine}; `python benchmarks/bench_blocks.py --write`. The transformers models "
        "(tiny configs of tests/models_hf.py: 2 blocks, hidden size 32, batch 2 x 16 tokens or 32x32 images) "
        "are profiled op by op by the export capture on this machine (`--repeats 3`, so their times are "
        "noisy); the others are files of tests/data/models. Held: the small shared tensors held for the "
        "whole step (planner/holding.py). Store-all: its activation peak (KiB). Floor: the least activation "
        "memory any strategy trains with, % of store-all's, and which strategy. One backward: the most one "
        "backward needs by itself (and where), which no schedule goes below. Largest block: the least peak "
        "of the menu of the block (between cut points) that needs the most, which no schedule of "
        "`hierarchical`'s class goes below."),
        markdown_table(["model", "layers", "shape", "held", "store-all (KiB)", "floor", "by", "hierarchical",
                        "one backward", "largest block"], floors),
        ("Overhead (solve time) of each strategy at a budget, % of store-all's peak; `-`: does not fit; "
         "best: what `auto` returns. milp runs in the default set on DAGs of up to 100 layers, for 0.5 s."),
        markdown_table(["model", "budget"] + list(SHOWN) + ["best"], rows),
        ("Seconds for `solve --strategy auto` at 50 % of store-all, and for `sweep` over 12 sizes "
         "(including the range search)."),
        markdown_table(["model", "layers", "auto (s)", "sweep 12 sizes (s)"], timings),
    ])
    publish(HEADING, text, write=args.write)


if __name__ == "__main__":
    main()
