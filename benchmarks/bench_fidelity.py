"""How close edgeplan's predicted peaks are to real PyTorch training steps.

Part 1 (GPU files): predicted ``peak_bytes`` (minus ``input_bytes``) of
``store-all`` and ``sequential --segments s`` for ``shared/models/vgg16.json``
and ``resnet18.json`` against the H200 measurements of plain autograd and
``checkpoint_sequential(..., use_reentrant=False)`` in ``*.measured.json``.

Part 2 (CPU, measured here): a ResNet-18-shaped chain and a VGG-like chain
(``tests/models_torch.py``) are profiled by ``edgeplan profile`` twice, with
``workspace_backward`` measured with the output gradient held by the caller
(the convention of the GPU files) and released by the autograd engine (the
profiler's default); each prediction is compared with the allocator peak of
the real step: plain autograd and ``checkpoint_sequential`` (input requires
grad, as in the GPU files), and edgeplan's runtime executing the same
schedule (``planner.torch.verify``).

Run: ``python benchmarks/bench_fidelity.py [--quick]`` (a few minutes on 2 cores).
"""

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from planner import solvers  # noqa: E402
from planner.model import load_model, model_from_dict  # noqa: E402

SHARED = os.environ.get("EDGEPLAN_SHARED_MODELS", os.path.join(ROOT, "..", "shared", "models"))


def pytorch_frees(model, ops, segments):
    """``ops`` with each checkpointed segment's input held until its first layer's backward.

    PyTorch's non-reentrant checkpoint keeps the segment's input in the
    checkpoint frame (``saved_args``) until every node of the segment's graph
    that saved something is gone, i.e. until the backward of the segment's
    first layer; ``insert_frees`` frees it right after the recomputed forward
    of that layer when its backward does not read its input (ReLU, Flatten).
    This moves that free after the backward.  This is the change proposed for
    ``planner/solvers/sequential.py`` (see docs/fidelity.md).
    """
    from planner.lowering import RECOMPUTE
    from planner.schedule import OpKind
    from planner.solvers.sequential import sequential_segments

    ops = list(ops)
    for start, _, mode in sequential_segments(len(model), segments):
        if mode != RECOMPUTE or start == 0:
            continue
        boundary = start - 1
        refwd = max(
            k for k, o in enumerate(ops) if o.kind is OpKind.FORWARD and o.layer == start and o.save
        )
        back = next(k for k, o in enumerate(ops) if o.kind is OpKind.BACKWARD and o.layer == start)
        moved = [k for k in range(refwd, back) if ops[k].kind is OpKind.FREE and ops[k].layer == boundary]
        if moved:
            op = ops.pop(moved[0])
            ops.insert(back, op)  # back shifted by one: right after the backward
    return ops


def predicted_faithful(model, segments):
    """Peak of ``sequential`` with :func:`pytorch_frees` (store-all unchanged)."""
    from planner.simulate import replay

    sol = predicted(model, segments)
    if segments == 0:
        return sol.result.peak_bytes
    return replay(model, pytorch_frees(model, sol.ops, segments)).peak_bytes


def predicted(model, segments):
    if segments == 0:
        sol = solvers.solve(model, None, "store-all")
    else:
        sol = solvers.solve(model, None, "sequential", segments=segments)
    return sol


def gpu_files():
    rows = []
    for name in ("vgg16", "resnet18"):
        path = os.path.join(SHARED, f"{name}.json")
        mpath = os.path.join(SHARED, f"{name}.measured.json")
        if not (os.path.exists(path) and os.path.exists(mpath)):
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        model = load_model(path)
        with open(mpath) as f:
            measured = json.load(f)["measured"]
        for entry in measured:
            s = entry["segments"]
            p = predicted(model, s).result.peak_bytes - model.input_bytes
            f = predicted_faithful(model, s) - model.input_bytes
            rows.append((name, s, p, f, entry["peak_bytes"]))
    return rows


def cpu_rows(quick):
    import torch
    from torch.utils.checkpoint import checkpoint_sequential

    from planner.torch.measure import allocation_trace

    from planner.torch.profile import profile_model
    from planner.torch.verify import verify
    from tests.models_torch import resnet_chain, small_cnn

    cases = [("resnet-like", resnet_chain, (4, 3, 96, 96), (0, 2, 3, 4, 8))]
    if not quick:
        cases.append(("vgg-like", small_cnn, (16, 3, 16, 16), (0, 2, 3, 5, 8)))
    cpu = torch.device("cpu")
    rows = []
    for label, factory, shape, counts in cases:
        models = {}
        for convention, held in (("caller", True), ("engine", False)):
            doc = profile_model(factory(), shape, repeats=1, name=label, caller_holds_gradient=held)
            models[convention] = model_from_dict(doc)
        for s in counts:
            net = factory()
            net.train()
            for p in net.parameters():
                p.grad = torch.zeros_like(p)
            x = torch.randn(shape).requires_grad_(True)

            def step():
                y = net(x) if s == 0 else checkpoint_sequential(net, s, x, use_reentrant=False)
                y.float().sum().backward()

            _, real, _ = allocation_trace(step, cpu)
            preds = {}
            for convention, model in models.items():
                preds[convention] = predicted(model, s).result.peak_bytes - model.input_bytes
            preds["faithful"] = predicted_faithful(models["engine"], s) - models["engine"].input_bytes
            sol = predicted(models["engine"], s)
            names = [layer.name for layer in models["engine"].layers]
            r = verify(factory(), shape, sol.ops, names=names, predicted=sol.result.peak_bytes)
            runtime = r.measured_peak_bytes - models["engine"].input_bytes
            rows.append((label, s, preds["caller"], preds["engine"], preds["faithful"], real, runtime,
                         r.grads_match))
    return rows


def summary(label, errs):
    errs = sorted(errs)
    p90 = errs[min(len(errs) - 1, int(round(0.9 * (len(errs) - 1))))]
    print(f"\n{label}: |error| median {statistics.median(errs):.2%}, p90 {p90:.2%}, max {max(errs):.2%}")


def pct(x):
    return f"{x:+.2%}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the ResNet-like chain on the CPU")
    parser.add_argument("--no-cpu", action="store_true", help="only the GPU files")
    args = parser.parse_args()

    rows = gpu_files()
    print("## GPU files (H200): predicted - input_bytes vs measured\n")
    print("| model | segments | predicted | with PyTorch boundary frees | measured | error | error (boundary frees) |")
    print("|---|---|---|---|---|---|---|")
    for name, s, p, f, m in rows:
        print(f"| {name} | {s or 'store-all'} | {p:,} | {f:,} | {m:,} | {pct(p / m - 1)} | {pct(f / m - 1)} |")
    if rows:
        summary("as is", [abs(p / m - 1) for _, _, p, _, m in rows])
        summary("boundary frees", [abs(f / m - 1) for _, _, _, f, m in rows])
    if args.no_cpu:
        return
    print("\n## CPU: predicted vs checkpoint_sequential / plain autograd (allocator peak)\n")
    print(
        "| model | segments | predicted, caller holds grad | predicted, engine releases "
        "| + boundary frees | measured torch | error: caller | engine | + boundary frees "
        "| edgeplan runtime (vs its prediction) | grads match |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    errs = {"caller": [], "engine": [], "faithful": []}
    for label, s, pc, pe, pf, real, runtime, ok in cpu_rows(args.quick):
        for key, value in (("caller", pc), ("engine", pe), ("faithful", pf)):
            errs[key].append(abs(value / real - 1))
        print(
            f"| {label} | {s or 'store-all'} | {pc:,} | {pe:,} | {pf:,} | {real:,} | {pct(pc / real - 1)} "
            f"| {pct(pe / real - 1)} | {pct(pf / real - 1)} | {runtime:,} ({pct(runtime / pe - 1)}) | {ok} |"
        )
    for key, label in (
        ("caller", "caller holds grad"),
        ("engine", "engine releases"),
        ("faithful", "engine releases + boundary frees"),
    ):
        summary(label, errs[key])


if __name__ == "__main__":
    main()
