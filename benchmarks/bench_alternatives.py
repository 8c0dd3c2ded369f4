"""edgeplan against the alternatives users have, at equal measured memory, in one run.

Contenders, each measured the same way in a process of its own (one thread,
the CPU allocator's peak of a training step above what was allocated before
it, with the parameter gradients already allocated; the median step time of
``--steps`` steps after two warm-up steps, in the process's CPU time: on a
machine shared with other jobs, wall time counts their load too, and one
thread's CPU time does not):

- ``eager``: plain autograd, everything kept;
- ``hf-gc``: Hugging Face's ``gradient_checkpointing_enable()`` (transformers
  models only), non-reentrant;
- ``ckpt-block``: ``torch.utils.checkpoint`` around each block (the children
  of the model's longest ``ModuleList`` or ``Sequential``);
- ``compile-B``: ``torch.compile`` with
  ``torch._functorch.config.activation_memory_budget = B``, B in 0.3/0.5/0.7;
- ``edgeplan@C``: :func:`planner.fit` planned for contender C's measured peak
  (the memory C used, given to ``fit`` as the whole step's memory), eager, and
  ``edgeplan-compiled@C`` the same with its stages compiled
  (``fit(..., compile=backend)``: ``profile --compile`` and
  ``ScheduledModule(compile=...)``, each stage compiled once);
- ``edgeplan@least``, ``edgeplan-compiled@least``: ``fit`` at the least memory
  its plan works with (found by the eager, resp. the compiled, profile).

torch.compile and compiled edgeplan use one backend: inductor where a C++
compiler works, else ``aot_eager`` (``--backend`` names one).

Eager edgeplan cuts the model as ``fit`` does by default (``stages="auto"``:
op by op, unless the model is a chain of modules); compiled edgeplan cuts it
into modules (one layer per block and one per
op between blocks), so that inductor fuses each block's ops and compiles a few
graphs, not one per op.

A step is ``loss_fn(model(**batch), target).backward()`` (the edgeplan rows
run the loss as the model file's last layer).  Every row prints its measured
peak and step time, its time over eager's, and for edgeplan the overhead the
plan predicted beside the measured one.

Run: ``python benchmarks/bench_alternatives.py [--models gpt2,bert] [--compile-models gpt2] [--quick]
[--no-compile] [--backend aot_eager] [--no-write]`` (torch.compile takes minutes a model on a 2-core CPU).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._docs import markdown_table, publish, stamp  # noqa: E402

HEADING = "## Against the alternatives at equal memory (bench_alternatives.py)"
BUDGETS = (0.3, 0.5, 0.7)
HF = ("gpt2", "bert", "llama", "vit", "resnet")
STAGES = "auto"  # eager edgeplan: fit's default cut
COMPILED_STAGES = "modules"  # compiled edgeplan: one layer per block (and the ops between blocks)


# ----------------------------------------------------------------- the models

def _hf(name):
    """A transformers model of benchmark size (random weights, no hub), its batch and target."""
    import torch
    import transformers

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batch, seq, hidden, vocab, layers = 4, 128, 128, 2000, 4

    def tokens():
        return torch.randint(0, vocab, (batch, seq), generator=g)

    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=hidden, n_layer=layers, n_head=4,
                                      bos_token_id=0, eos_token_id=0, use_cache=False)
        return transformers.GPT2LMHeadModel(cfg), {"input_ids": tokens()}, tokens()
    if name == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=seq)
        return transformers.LlamaForCausalLM(cfg), {"input_ids": tokens()}, tokens()
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=4, intermediate_size=4 * hidden,
                                      max_position_embeddings=seq, num_labels=3)
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[1:, seq // 2:] = 0
        return (transformers.BertForSequenceClassification(cfg), {"input_ids": tokens(), "attention_mask": mask},
                torch.randint(0, 3, (batch,), generator=g))
    images = torch.randn(batch, 3, 64, 64, generator=g)
    labels = torch.randint(0, 3, (batch,), generator=g)
    if name == "vit":
        cfg = transformers.ViTConfig(image_size=64, patch_size=8, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=4, intermediate_size=4 * hidden, num_labels=3)
        return transformers.ViTForImageClassification(cfg), {"pixel_values": images}, labels
    if name == "resnet":
        cfg = transformers.ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 2, 2],
                                        layer_type="basic", num_labels=3)
        return transformers.ResNetForImageClassification(cfg), {"pixel_values": images}, labels
    raise SystemExit(f"unknown model {name!r}")


def _plain(name):
    """The ordinary models of tests/models_torch.py: a GPT-like model and a ResNet (``torch-resnet``)."""
    from tests import models_torch

    factory = {"small_gpt": "small_gpt", "torch-resnet": "resnet"}.get(name)
    if factory is None:
        raise SystemExit(f"unknown model {name!r}")
    x, target = getattr(models_torch, f"{factory}_example")()
    return getattr(models_torch, factory)(), {"x": x}, target


def build(name):
    return _hf(name) if name in HF else _plain(name)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _loss(out, target):
    import torch

    logits = _logits(out)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


# ------------------------------------------------------------ one contender

def _call(model, kwargs):
    if list(kwargs) == ["x"]:
        return model(kwargs["x"])
    return model(**kwargs)


def _blocks(model):
    import torch

    lists = [m for m in model.modules() if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential))]
    return max(lists, key=len) if lists else []


def _checkpoint_blocks(model):
    import functools

    from torch.utils.checkpoint import checkpoint

    for block in _blocks(model):
        forward = block.forward

        def wrapped(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = functools.update_wrapper(wrapped, forward)


def _contender_step(model, kwargs, target, contender, backend):
    import torch

    if contender == "hf-gc":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif contender == "ckpt-block":
        _checkpoint_blocks(model)
    elif contender.startswith("compile-"):
        import torch._functorch.config

        torch._functorch.config.activation_memory_budget = float(contender.split("-")[1])
        compiled = torch.compile(model, backend=backend)
        return lambda: _loss(_call(compiled, kwargs), target).backward(), None
    return lambda: _loss(_call(model, kwargs), target).backward(), None


def _edgeplan_step(model, kwargs, target, memory, compiled):
    from planner import fit

    example = (kwargs, target) if list(kwargs) != ["x"] else (kwargs["x"], target)
    wrapped = fit(model, example, memory=memory, loss="cross_entropy", compile=compiled,
                  stages=COMPILED_STAGES if compiled else STAGES)
    result = wrapped.plan
    if list(kwargs) == ["x"]:
        step = lambda: wrapped(kwargs["x"], target=target).backward()  # noqa: E731
    else:
        step = lambda: wrapped(**kwargs, target=target).backward()  # noqa: E731
    return step, {"predicted_overhead": result.simulation.overhead, "predicted_peak": result.simulation.peak_bytes,
                  "strategy": result.strategy}


def _least_memory(model, kwargs, target, compiled):
    from planner import fit
    from planner.errors import InfeasibleError

    example = (kwargs, target) if list(kwargs) != ["x"] else (kwargs["x"], target)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        fit(model, example, memory=2 * params + 1, loss="cross_entropy", compile=compiled,
            stages=COMPILED_STAGES if compiled else STAGES)
    except InfeasibleError as exc:  # the least activation memory; the parameters and gradients come on top
        return 2 * params + exc.least_bytes
    raise SystemExit("fit accepted 1 byte of activation memory")


def child(spec):
    """Measure one contender in this process: prints one JSON line."""
    import torch

    from planner.torch.measure import allocation_trace

    torch.set_num_threads(1)
    model, kwargs, target = build(spec["model"])
    model.train()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    extra = None
    started = time.perf_counter()
    if spec["contender"].startswith("edgeplan"):
        memory = spec["memory"]
        if memory == "least":
            memory = _least_memory(build(spec["model"])[0], kwargs, target, spec.get("compiled", False))
        step, extra = _edgeplan_step(model, kwargs, target, memory, spec.get("compiled", False))
        extra["memory"] = memory
    else:
        step, extra = _contender_step(model, kwargs, target, spec["contender"], spec.get("backend"))
    for _ in range(2):  # warm-up (compilation) and the parameter gradients' first allocation
        step()
    setup = time.perf_counter() - started
    for p in model.parameters():
        if p.grad is not None:
            p.grad.zero_()
    _, peak, _ = allocation_trace(step, torch.device("cpu"))
    times, walls = [], []
    for _ in range(spec["steps"]):
        t0, w0 = time.process_time(), time.perf_counter()
        step()
        times.append((time.process_time() - t0) * 1000.0)
        walls.append((time.perf_counter() - w0) * 1000.0)
    print(json.dumps({"peak": peak, "ms": statistics.median(times), "wall_ms": statistics.median(walls),
                      "params": params, "setup_s": setup,
                      **(extra or {})}))


def run_child(spec):
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:160]}
    return json.loads(lines[-1])


# ------------------------------------------------------------------ the table

def _mb(b):
    return f"{b / 1e6:.2f}"


def measure_model(name, *, steps, backend, compiled_at=None):
    """The rows of one model: its contenders, then edgeplan at each one's memory and at its least.

    ``backend``: the torch.compile backend of the compiled contenders and of
    compiled edgeplan (None: neither runs); ``compiled_at``: the contenders
    (and ``least``) at whose memory compiled edgeplan runs (None: all).
    """
    contenders = ["eager"] + (["hf-gc"] if name in HF else []) + ["ckpt-block"]
    if backend:
        contenders += [f"compile-{b}" for b in BUDGETS]
    rows, found = [], {}
    for c in contenders:
        found[c] = run_child({"model": name, "contender": c, "steps": steps, "backend": backend})
        print(f"  {name} {c}: {found[c]}", file=sys.stderr)
    eager = found["eager"]
    for c in contenders:
        r = found[c]
        rows.append([name, c, "-" if "error" in r else _mb(r["peak"]), "-" if "error" in r else f"{r['ms']:.1f}",
                     "-" if "error" in r or "error" in eager else f"{r['ms'] / eager['ms']:.2f}x", "", "",
                     r.get("error", "")])
    for c in contenders[1:] + ["least"]:
        base = found.get(c)
        if base is not None and "error" in base:
            continue
        memory = "least" if c == "least" else 2 * base["params"] + base["peak"]
        compile_rows = [False] + ([backend] if backend and (compiled_at is None or c in compiled_at) else [])
        for as_compiled in compile_rows:
            label = f"edgeplan{'-compiled' if as_compiled else ''}@{c}"
            r = run_child({"model": name, "contender": label, "memory": memory, "steps": steps,
                           "compiled": as_compiled})
            print(f"  {name} {label}: {r}", file=sys.stderr)
            found[label] = r
            if "error" in r:
                rows.append([name, label, "-", "-", "-", "", "", r["error"]])
                continue
            vs = "" if base is None else f"{r['ms'] / base['ms']:.2f}x of {c}"
            predicted = r.get("predicted_overhead")
            # the overhead is measured against eager; a compiled plan's prediction is against its compiled stages
            measured = "-" if as_compiled else f"{100 * (r['ms'] / eager['ms'] - 1):.1f}%"
            rows.append([name, label, _mb(r["peak"]), f"{r['ms']:.1f}", f"{r['ms'] / eager['ms']:.2f}x",
                         "-" if predicted is None else f"{100 * predicted:.1f}%", measured, vs])
    return rows, found


def _against(found, rival, ours):
    """``peak MB, ms | peak MB, ms, time ratio`` of edgeplan's row ``ours`` against contender ``rival``."""
    a, b = found.get(rival, {"error": "not run"}), found.get(ours, {"error": "not run"})
    left = "-" if "error" in a else f"{_mb(a['peak'])} MB, {a['ms']:.1f} ms"
    if "error" in b:
        return [left, "does not fit" if "least memory" in b["error"] else "-", "-"]
    ratio = "-" if "error" in a else f"{b['ms'] / a['ms']:.2f}x"
    return [left, f"{_mb(b['peak'])} MB, {b['ms']:.1f} ms", ratio]


def summary_rows(name, found):
    """The issue's two comparisons: at HF gradient checkpointing's memory, and compiled at budget 0.5's."""
    least, gc = found.get("edgeplan@least", {}), found.get("hf-gc", {})
    below = "-"
    if "peak" in least and "peak" in gc:
        below = f"{100 * (1 - least['peak'] / gc['peak']):.0f}%"
    return [name, *_against(found, "hf-gc", "edgeplan@hf-gc"), below,
            *_against(found, "compile-0.5", "edgeplan-compiled@compile-0.5")]


def _backend(requested):
    """The torch.compile backend to run: ``requested``, else inductor where a C++ compiler works, else aot_eager."""
    from planner.errors import OptionError
    from planner.torch.measure import compile_backend

    if requested:
        return compile_backend(requested)
    try:
        return compile_backend(True)
    except OptionError:
        return "aot_eager"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(HF + ("small_gpt", "torch-resnet")))
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="gpt2 and small_gpt, 3 steps, no compile")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile and compiled edgeplan")
    parser.add_argument("--backend", help=("torch.compile backend (default: inductor if a C++ compiler works, "
                                           "else aot_eager)"))
    parser.add_argument("--compile-models", help="run the compiled contenders on these models only (default: all)")
    parser.add_argument("--compiled-at", help=("run compiled edgeplan at these contenders' memory only, e.g. "
                                               "compile-0.5,least (default: every contender and least)"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    import torch

    models = ["gpt2", "small_gpt"] if args.quick else args.models.split(",")
    steps = 3 if args.quick else args.steps
    backend = None if args.quick or args.no_compile else _backend(args.backend)
    compile_on = set(args.compile_models.split(",")) if args.compile_models else set(models)
    compiled_at = set(args.compiled_at.split(",")) if args.compiled_at else None
    rows, summary = [], []
    for name in models:
        found_rows, found = measure_model(name, steps=steps, backend=backend if name in compile_on else None,
                                          compiled_at=compiled_at)
        rows += found_rows
        if name in HF:
            summary.append(summary_rows(name, found))
    header = ["model", "run", "peak MB", "step ms (CPU)", "vs eager", "predicted overhead", "measured overhead", "notes"]
    sums = ["model", "hf-gc", "edgeplan@hf-gc", "time vs hf-gc", "edgeplan@least below hf-gc",
            f"compile-0.5 ({backend})", "edgeplan-compiled@compile-0.5", "time vs compile-0.5"]
    command = " ".join(["python benchmarks/bench_alternatives.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join([
        HEADING, "",
        f"`{command.strip()}` ({stamp()}, torch {torch.__version__}, {platform.machine()} CPU "
        f"({os.cpu_count()} cores shared with other jobs), one thread, each run in its own process; "
        f"compiled runs use torch.compile's {backend or 'no'} backend; peak = the CPU allocator's peak of one step "
        f"above what was allocated before it, parameter gradients allocated; step = the process's CPU time, median "
        f"of {steps} steps after 2 warm-up steps: one thread's CPU time, not wall time, which the other jobs' load "
        f"inflates). `edgeplan@C` is `planner.fit` given the memory contender C measured (its peak plus the "
        f"parameters and their gradients); `vs` compares it with C in the same run.  Eager edgeplan cuts the model "
        f"as `fit` does by default (`stages={STAGES!r}`: op by op, unless it is a chain of modules), compiled "
        f"edgeplan into modules (one layer per block).  A compiled plan predicts its "
        f"overhead over its compiled stages, so its measured overhead against eager is left out.",
        "",
        markdown_table(sums, summary),
        "",
        markdown_table(header, rows),
    ])
    publish(HEADING, text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
