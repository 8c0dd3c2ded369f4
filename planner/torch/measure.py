"""Measuring stages: the allocator's peaks, what autograd saves, times, FLOPs.

Each stage runs on its real inputs, on the device, and is measured exactly as
docs/format.md defines the fields:

- ``output_bytes``: bytes of the storage the stage's output keeps alive (its
  numel x element size, or more when it is a view of a larger buffer);
- ``saved_bytes``: bytes of the distinct storages autograd saves for the
  stage's backward (``torch.autograd.graph.saved_tensors_hooks``), parameters,
  buffers and the loss target (held by the caller) excluded, minus the
  input(s) and the output when they are among them;
- ``needs_inputs`` / ``needs_output``: whether an input / the output storage
  is among them;
- ``workspace_forward``: peak memory during the forward minus what remains
  allocated after it;
- ``workspace_backward``: peak memory during a backward on a fresh graph
  (saved tensors released as it passes) above what was allocated before it,
  minus the input gradients.  The backward runs as it runs inside a whole
  model's backward: the output gradient (counted as allocated before it, as
  the simulator counts it) is owned by the autograd engine and the output is
  held only by the graph, so both go as soon as the stage's last op has used
  them (see docs/fidelity.md; ``caller_holds_gradient=True`` gives the older
  convention where the caller holds both for the whole backward);
- ``params_bytes``: bytes of the parameters the stage reads that no earlier
  stage reads (tied weights count once);
- ``forward`` / ``backward``: median wall time of a few runs, in ms.

Memory is read from the allocator itself: ``torch.profiler`` memory events on
the CPU, ``torch.cuda.max_memory_allocated`` on CUDA.  :func:`estimate_stages`
runs nothing: ``FakeTensorMode`` gives the sizes and ``FlopCounterMode`` the
FLOPs (workspaces are 0).
"""

import dataclasses
import os
import statistics
import sys
import time

from planner.errors import ModelError, OptionError
from planner.torch.inputs import require_torch

__all__ = [
    "call_cost",
    "without_call_cost",
    "compile_backend",
    "compiled_stages",
    "allocation_trace",
    "seed_function",
    "measure_stage",
    "estimate_stages",
    "stage_inputs",
    "params_bytes",
    "tensor_bytes",
]


def allocation_trace(fn, device, *, events=False):
    """Run ``fn()`` and measure the memory it allocates.

    Parameters
    ----------
    fn : callable
        Called once with no argument.
    device : torch.device
    events : bool, keyword-only
        Also return the allocator's level after each event (CPU only).

    Returns
    -------
    tuple
        ``(result, peak, end)``: ``fn``'s result, the highest allocated
        bytes above the level at the start, and the level at the end; with
        ``events=True`` a fourth item lists ``(time_ns, bytes_now)`` after each
        allocator event, on ``time.time_ns()``'s clock.

    Notes
    -----
    On CUDA this reads ``torch.cuda.max_memory_allocated``; on the CPU the
    allocation and free events of ``torch.profiler`` (``profile_memory=True``),
    summed in time order.  Both are the allocator's own numbers.  Blocks
    allocated before the call and freed during it are not reported by the
    profiler, so a run that frees older memory reads as 0 there, never below.
    The first profiler session of a process costs a few seconds; later ones
    about a millisecond.  O(events).
    """
    torch = require_torch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        found = (
            result,
            torch.cuda.max_memory_allocated(device) - before,
            torch.cuda.memory_allocated(device) - before,
        )
        return found + ([],) if events else found
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _stderr_muted():  # kineto prints a line to fd 2 at every start and stop
        prof.__enter__()
    try:
        result = fn()
    finally:
        with _stderr_muted():
            prof.__exit__(None, None, None)
    found = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and _is_cpu_event(e)
    ]
    found.sort(key=lambda e: e.start_ns())
    now = peak = 0
    trace = []
    for e in found:
        now += e.nbytes()
        if now > peak:
            peak = now
        if events:
            trace.append((e.start_ns(), now))
    return (result, peak, now, trace) if events else (result, peak, now)


class _stderr_muted:
    """Send file descriptor 2 to the null device for a moment (C++ log lines)."""

    def __enter__(self):
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        except OSError:  # pragma: no cover - no fd 2
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        return False


def _is_cpu_event(event):
    return str(event.device_type()).endswith("CPU")


def _storage_key(t):
    return t.untyped_storage()._cdata


def _storage_bytes(t):
    return t.untyped_storage().nbytes()


def tensor_bytes(t):
    """``numel x element_size``."""
    return t.numel() * t.element_size()


def stage_inputs(stage, outputs, inputs):
    """The tensors a stage reads: ``outputs[p]`` for ``p >= 0``, model input ``-1 - p`` otherwise."""
    return [outputs[p] if p >= 0 else inputs[-1 - p] for p in stage.inputs]


def _leaves(tensors, stage):
    """Detached copies (sharing storage) of a stage's inputs; stage outputs require grad."""
    leaves = []
    for p, t in zip(stage.inputs, tensors):
        leaf = t.detach()
        if p >= 0 and leaf.is_floating_point():
            leaf.requires_grad_(True)
        leaves.append(leaf)
    return leaves


def _call(stage, leaves, target):
    return stage.fn(*leaves, target) if stage.loss else stage.fn(*leaves)


def _check_output(stage, y, torch):
    if not isinstance(y, torch.Tensor):
        raise ModelError(
            f"stage {stage.name!r} returned {type(y).__name__}, not a tensor: every stage "
            "must return one tensor"
        )


def _ensure_grads(params, torch):
    """Allocate parameter gradients up front: they are fixed memory, not activations."""
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def _sync(device, torch):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(stage, tensors, target, *, device, torch):
    """One forward and one backward of ``stage``, timed: ``(forward_ms, backward_ms or None, output)``."""
    leaves = _leaves(tensors, stage)
    _sync(device, torch)
    t0 = time.perf_counter()
    y = _call(stage, leaves, target)
    _sync(device, torch)
    forward = (time.perf_counter() - t0) * 1000.0
    _check_output(stage, y, torch)
    backward = None
    if y.requires_grad:
        g = torch.ones_like(y)
        _sync(device, torch)
        t2 = time.perf_counter()
        torch.autograd.backward([y], [g])
        _sync(device, torch)
        backward = (time.perf_counter() - t2) * 1000.0
    return forward, backward, y.detach()


def robust_time(samples):
    """``(median, spread)`` of timing samples (ms); spread = interquartile range / median (0 if alone).

    The median of samples taken in interleaved rounds (:func:`time_stages`) is
    what a stage costs when load on a busy machine comes in bursts: a burst
    lands on a few rounds of many stages rather than on every sample of one.
    """
    if not samples:
        return 0.0, 0.0
    middle = statistics.median(samples)
    if len(samples) < 2 or middle <= 0:
        return round(middle, 6), 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return round(middle, 6), (q3 - q1) / middle


def time_stages(stage_list, tensors, targets, *, rounds, device):
    """Forward and backward samples (ms) of every stage, ``rounds`` interleaved rounds.

    Each round times every stage once, in order, on its real inputs
    (``tensors[i]``; ``targets[i]`` for a loss stage, else None), after one
    untimed warm-up round.  Returns two lists of sample lists, one per stage
    (a stage whose output needs no gradient has no backward samples).
    """
    torch = require_torch()
    forward = [[] for _ in stage_list]
    backward = [[] for _ in stage_list]
    for r in range(rounds + 1):
        for i, stage in enumerate(stage_list):
            f, b, _ = _time_once(stage, tensors[i], targets[i], device=device, torch=torch)
            if r:  # round 0 warms caches and the allocator up
                forward[i].append(f)
                if b is not None:
                    backward[i].append(b)
    return forward, backward


def call_cost(*, device, rounds=30):
    """Milliseconds that timing a stage's backward costs beyond the stage: the median of ``rounds`` runs.

    An empty stage's backward (one multiplication of one number), timed as
    :func:`time_stages` times a backward: it is the ``backward()`` call
    that each timed backward makes (the autograd engine's start), which a
    training step makes once, not once per layer.
    :func:`planner.torch.profile.profile_model` takes it off every stage's
    backward time, so that the layers' times add up to the step's.  The
    forwards keep theirs: a step calls every layer's forward.
    """
    torch = require_torch()
    from planner.torch.stages import Stage

    empty = Stage(name="empty", fn=lambda t: t * 1.0, inputs=(0,))
    x = [torch.ones(1, device=device)]
    runs = [_time_once(empty, x, None, device=device, torch=torch) for _ in range(rounds + 1)][1:]
    return statistics.median(b for _, b, _ in runs)


def without_call_cost(backward_ms, cost_ms):
    """A backward time less the ``backward()`` call's cost, never below a tenth of itself."""
    return round(max(backward_ms - cost_ms, 0.1 * backward_ms), 6)


def _saved(stage, tensors, target, excluded, torch):
    """``(saved_bytes, needs_inputs, needs_output)`` from the saved-tensor hooks."""
    saved = []
    leaves = _leaves(tensors, stage)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t), t)[1], lambda t: t):
        y = _call(stage, leaves, target)
    return _saved_fields(saved, leaves, y, excluded)


def _saved_fields(saved, leaves, output, excluded):
    """``(saved_bytes, needs_inputs, needs_output)`` of the tensors autograd saved for a stage.

    Distinct storages count once; those in ``excluded`` (parameters, buffers,
    the target) are not activations; an input's or the output's storage (a
    view of either included) is ``needs_inputs`` / ``needs_output``, not
    saved data.  The measured and the estimated profiles share this rule.
    """
    input_keys = {_storage_key(t) for t in leaves}
    out_key = _storage_key(output)
    distinct = {}
    for t in saved:
        key = _storage_key(t)
        if key not in excluded:
            distinct[key] = _storage_bytes(t)
    needs_inputs = any(k in distinct for k in input_keys)
    needs_output = out_key in distinct
    saved_bytes = sum(b for k, b in distinct.items() if k not in input_keys and k != out_key)
    return int(saved_bytes), bool(needs_inputs), bool(needs_output)


def _workspaces(stage, tensors, target, *, device, caller_holds_gradient, torch):
    """``(workspace_forward, workspace_backward)`` of the stage on a fresh graph.

    One function, so that no frame but this one holds the output: in the
    default convention the graph alone must hold it during the backward.
    """
    # Forward workspace: the peak during the forward minus what stays after it.
    leaves = _leaves(tensors, stage)
    y, peak, end = allocation_trace(lambda: _call(stage, leaves, target), device)
    workspace_forward = max(0, peak - end)
    if not y.requires_grad:
        return workspace_forward, 0
    if caller_holds_gradient:
        g = torch.ones_like(y)

        def run_held():
            torch.autograd.backward([y], [g])
            return sum(tensor_bytes(t.grad) for t in leaves if t.grad is not None)

        grads_bytes, peak, _ = allocation_trace(run_held, device)
        return workspace_forward, max(0, peak - grads_bytes)
    # Run as a chained backward runs it: the output gradient is created inside
    # the backward and owned by the engine, and the output is held only by the
    # graph, so both are released as soon as the stage's last op has used them.
    out_bytes = tensor_bytes(y)
    seed = seed_function(torch)(y, None)
    del y

    def run_backward():
        seed.backward()
        return sum(tensor_bytes(t.grad) for t in leaves if t.grad is not None)

    grads_bytes, peak, _ = allocation_trace(run_backward, device)
    return workspace_forward, max(0, peak - out_bytes - grads_bytes)


def _output_bytes(output, tensors):
    """What the output keeps alive: its whole storage (F.mse_loss returns a 0-d tensor over an
    output-sized buffer), unless that storage is an input's (a view: counted by its producer)."""
    if any(_storage_key(output) == _storage_key(t) for t in tensors):
        return tensor_bytes(output)
    return max(tensor_bytes(output), _storage_bytes(output))


def measure_stage(stage, tensors, *, device, target=None, caller_holds_gradient=False):
    """Measure one stage on its real inputs; return (layer fields, output tensor).

    Its times are one run's; :func:`time_stages` takes the robust ones.

    ``params_bytes`` is left out: it depends on the stages before (see
    :func:`params_bytes`).  A loss stage is called with ``target``.
    """
    torch = require_torch()
    _ensure_grads(stage.params, torch)
    excluded = {_storage_key(p) for p in list(stage.params) + list(stage.buffers)}
    if target is not None:
        excluded.add(_storage_key(target))
    forward, backward, output = _time_once(stage, tensors, target, device=device, torch=torch)
    saved_bytes, needs_inputs, needs_output = _saved(stage, tensors, target, excluded, torch)

    workspace_forward, workspace_backward = _workspaces(
        stage, tensors, target, device=device, caller_holds_gradient=caller_holds_gradient, torch=torch
    )
    fields = {
        "forward": forward,
        "backward": backward or 0.0,
        "output_bytes": _output_bytes(output, tensors),
        "saved_bytes": saved_bytes,
        "needs_inputs": needs_inputs,
        "needs_output": needs_output,
        "workspace_forward": int(workspace_forward),
        "workspace_backward": int(workspace_backward),
    }
    return fields, output


def compile_backend(compile, device=None):
    """The ``torch.compile`` backend that ``compile`` names (True: inductor), checked to run here.

    Parameters
    ----------
    compile : bool or str
        True (torch.compile's default backend, inductor) or a backend name
        (``"aot_eager"``: torch.compile's capture and autograd split with
        eager kernels, which needs no C++ compiler).
    device : torch.device or None
        Where the stages run: inductor on the CPU needs a C++ compiler.

    Returns
    -------
    str
        The backend's name.

    Raises
    ------
    ModelError
        ``compile`` is neither a bool nor a string.
    OptionError
        An unknown backend, or one that cannot run here (inductor on the CPU
        without a working C++ compiler).
    """
    if not isinstance(compile, (bool, str)) or compile is False:
        raise ModelError(f"compile must be True or a torch.compile backend name, got {compile!r}")
    torch = require_torch()
    import torch._dynamo

    name = "inductor" if compile is True else compile
    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise OptionError(f"compile: unknown torch.compile backend {name!r} (one of: {', '.join(known)})")
    if not torch._dynamo.is_dynamo_supported():
        raise OptionError(f"compile: torch.compile does not run on this Python ({sys.version.split()[0]})")
    if name == "inductor" and (device is None or torch.device(device).type == "cpu"):
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as exc:  # InvalidCxxCompiler, or whatever a broken toolchain raises
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OptionError(
                f"compile: torch.compile's inductor backend needs a C++ compiler on the CPU: {first} "
                "(install one, e.g. g++, or compile with the aot_eager backend)"
            ) from None
    return name


def compiled_stages(stage_list, backend):
    """The stages, each function compiled by ``torch.compile`` with ``backend`` (a name from :func:`compile_backend`).

    The one compile path: ``profile --compile`` measures these stages and
    ``ScheduledModule(..., compile=)`` runs them.  Each stage compiles on
    its first call, for fixed shapes (``dynamic=False``); inductor draws
    random numbers as eager does (``fallback_random``), so that a compiled
    dropout keeps plain training's masks.  :func:`planner.fit` compiles once:
    the ScheduledModule runs the stages its profile compiled (``captured``).
    """
    torch = require_torch()
    # inductor draws random numbers as eager does: dropout masks are plain training's
    options = {"options": {"fallback_random": True}} if backend == "inductor" else {"backend": backend}
    return [dataclasses.replace(stage, fn=torch.compile(_own_frame(stage.fn), dynamic=False, **options))
            for stage in stage_list]


def _own_frame(fn):
    """``fn`` called from a function whose code object is its own.

    Dynamo keeps a code object's compiled graphs together, at most 8 (its
    ``recompile_limit``), and runs the code eager past them.  ``torch.nn``
    modules compiled as they are share one code object (torch.compile's
    wrapper), so a chain of convolutions, BatchNorms and dropouts, each in
    grad mode and without grad, ran eager from its ninth variant on.
    """

    def stage(*args):
        return fn(*args)

    stage.__code__ = stage.__code__.replace()  # a copy: a code object of its own
    return stage


_SEED = {}


def seed_function(torch):
    """``seed(y, provider=None) -> scalar`` whose backward hands ``y`` a gradient nobody else holds.

    The gradient is ``provider()`` (ones when None), called when the backward
    reaches it, so that the autograd engine owns it and frees it as soon as
    ``y``'s producer has used it, as it does for the gradient that flows into
    a layer from its consumer.
    """
    if "apply" not in _SEED:

        class _Seed(torch.autograd.Function):
            @staticmethod
            def forward(ctx, y, provider):
                ctx.meta = (y.shape, y.dtype, y.device)
                ctx.provider = provider
                return y.new_zeros(())

            @staticmethod
            def backward(ctx, _):
                provider, ctx.provider = ctx.provider, None
                if provider is None:
                    shape, dtype, device = ctx.meta
                    return torch.ones(shape, dtype=dtype, device=device), None
                return provider(), None

        _SEED["apply"] = _Seed.apply
    return _SEED["apply"]




def params_bytes(params, seen):
    """Bytes of ``params`` not in ``seen`` (ids), which it updates: tied weights count once."""
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += tensor_bytes(p)
    return int(total)


def _fake_state(root, mode):
    """``(state, fakes)``: the fake of each parameter and buffer, by name and by ``id`` of the real one.

    Each is ``mode.from_tensor`` of the real tensor itself, which the mode
    remembers: a captured stage that holds the real tensor (an exported op's
    argument) gets the same fake, with the same storage, as the module
    reparametrized with ``state``, so that :func:`_estimate_one` sees a saved
    weight as the parameter it is (not saved data), as the measured path does.
    """
    named = list(root.named_parameters()) + list(root.named_buffers())
    state = {k: mode.from_tensor(v) for k, v in named}
    fakes = {id(v): state[k] for k, v in named}
    return state, fakes


def _estimate_one(stage, tensors, target, fakes, torch):
    from torch.utils.flop_counter import FlopCounterMode

    leaves = _leaves(tensors, stage)
    # Autograd saves what an op was given: a captured stage's real parameter
    # (converted to a fake below autograd), a module's fake one, or a fake view.
    excluded = {_storage_key(t) for p in list(stage.params) + list(stage.buffers) for t in (p, fakes.get(id(p), p))}
    if target is not None:
        excluded.add(_storage_key(target))
    saved = []
    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t), t)[1], lambda t: t):
            y = _call(stage, leaves, target)
    _check_output(stage, y, torch)
    fwd_flops = counter.get_total_flops()
    saved_bytes, needs_inputs, needs_output = _saved_fields(saved, leaves, y, excluded)
    bwd_flops = 0
    if y.requires_grad:
        with FlopCounterMode(display=False) as counter:
            torch.autograd.backward([y], [torch.ones_like(y)])
        bwd_flops = counter.get_total_flops()
    elements = y.numel()
    fields = {
        "forward": float(fwd_flops if fwd_flops else elements),
        "backward": float(bwd_flops if bwd_flops else 2 * elements),
        "output_bytes": _output_bytes(y, tensors),
        "saved_bytes": saved_bytes,
        "needs_inputs": needs_inputs,
        "needs_output": needs_output,
        "workspace_forward": 0,
        "workspace_backward": 0,
    }
    return fields, y.detach()


def estimate_stages(root, stages, inputs, target=None):
    """Sizes from FakeTensorMode, FLOPs from FlopCounterMode: nothing runs.

    Returns the layer fields of each stage (``params_bytes`` left out): the
    sizes :func:`measure_stage` measures, by the same rule
    (:func:`_saved_fields`, :func:`_output_bytes`).
    """
    torch = require_torch()
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.utils.stateless import _reparametrize_module

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    results = []
    with mode:
        state, fakes = _fake_state(root, mode)
        xs = tuple(mode.from_tensor(t) for t in inputs)
        fake_target = None if target is None else mode.from_tensor(target)
        outputs = {}
        with _reparametrize_module(root, state):
            for i, stage in enumerate(stages):
                tensors = stage_inputs(stage, outputs, xs)
                fields, outputs[i] = _estimate_one(stage, tensors, fake_target, fakes, torch)
                results.append(fields)
    return results
