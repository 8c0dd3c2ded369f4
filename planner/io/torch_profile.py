"""Profile a PyTorch model into an ``edgeplan-model/1`` document.

A model is cut into *stages* (the layers of the model file): the children of
an ``nn.Sequential`` (or the items of a list of modules) form a chain, and
``torch.fx`` turns any traceable module into a DAG of ops.  Each stage is then
run on its real input, on the device, and measured exactly as
``shared/models/README.md`` defines the fields:

- ``output_bytes``: bytes of the stage's output tensor;
- ``saved_bytes``: bytes of the distinct storages autograd saves for the
  stage's backward (``torch.autograd.graph.saved_tensors_hooks``), parameters
  (and buffers such as BatchNorm's running statistics: fixed memory too)
  excluded, minus the input(s) and the output when they are among them;
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
- ``params_bytes``: bytes of the stage's parameters;
- ``forward`` / ``backward``: median wall time of a few runs, in ms.

Memory is read from the allocator itself: ``torch.profiler`` memory events on
the CPU, ``torch.cuda.max_memory_allocated`` on CUDA.  With ``estimate=True``
nothing runs: ``FakeTensorMode`` gives the sizes and ``FlopCounterMode`` the
FLOPs (time unit ``flop``; workspaces are 0).

Only the one TARGET named by the user is imported (see :func:`load_target`).
torch is imported inside the functions: ``pip install edgeplan[torch]``.
"""

import importlib
import importlib.util
import operator
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

from planner.io import unique_names
from planner.errors import ModelError
from planner.model import INPUT, MODEL_FORMAT, model_from_dict

__all__ = [
    "Stage",
    "parse_shape",
    "load_target",
    "build_stages",
    "profile_model",
    "profile_target",
    "require_torch",
    "allocation_trace",
]

STAGE_MODES = ("auto", "modules", "ops")
DTYPES = ("float32", "float64", "float16", "bfloat16")

# In-place operators and their out-of-place equivalents (ops mode).
_INPLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


def torch_device(name):
    """``torch.device(name)``, or :class:`ModelError` when it is unknown or absent here."""
    torch = require_torch()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"--device {name!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available here (this torch build or machine)")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"--device {name!r}: only cpu and cuda are supported")
    return dev


def require_torch():
    """Import torch, or raise :class:`ModelError` naming the extra to install."""
    try:
        import torch
    except ImportError:  # pragma: no cover - CI installs torch
        raise ModelError(
            "PyTorch is not installed: pip install edgeplan[torch] (the CPU build: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu)"
        ) from None
    return torch


@dataclass
class Stage:
    """One layer of the model file, as something PyTorch can run.

    Attributes
    ----------
    name : str
        The layer name.
    fn : callable
        ``fn(*tensors) -> tensor``: the stage's forward on its input tensors.
    inputs : tuple of int
        Producer stage indices, ``-1`` for the model input, in the order
        ``fn`` takes them.
    params : list of torch.nn.Parameter
        The parameters the stage reads (for ``params_bytes``).
    buffers : list of torch.Tensor
        Buffers it may update (BatchNorm running statistics).
    loss : bool
        A loss stage (the sink), called as ``fn(*tensors, target)``.
    """

    name: str
    fn: object
    inputs: tuple
    params: list = field(default_factory=list)
    buffers: list = field(default_factory=list)
    loss: bool = False


def parse_shape(text):
    """Parse SHAPE (``8,3,224,224``) into a tuple of positive ints.

    Raises
    ------
    ValueError
        With a message saying what is wrong.
    """
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    if not parts or any(not p for p in parts):
        raise ValueError(f"bad shape {text!r}: expected comma-separated sizes like 8,3,224,224")
    shape = []
    for p in parts:
        if not p.isdigit() or int(p) <= 0:
            raise ValueError(f"bad shape {text!r}: {p!r} is not a positive integer")
        shape.append(int(p))
    return tuple(shape)


def load_target(target):
    """Import TARGET and call its factory.

    Parameters
    ----------
    target : str
        ``path/to/file.py:factory`` or ``package.module:factory``.  The factory
        is called with no arguments and returns an ``nn.Module`` or a list of
        modules; an ``nn.Module`` object named directly is used as is.

    Returns
    -------
    torch.nn.Module or list of torch.nn.Module

    Raises
    ------
    ModelError
        Unparsable target, import failure, missing factory, factory failure,
        or a result that is not a module.

    Notes
    -----
    This runs the user's code: only the module that TARGET names is imported
    (and what it imports itself).  Nothing else is ever imported or executed.
    """
    torch = require_torch()
    if not isinstance(target, str) or ":" not in target:
        raise ModelError(
            f"bad TARGET {target!r}: expected path/to/file.py:factory or package.module:factory"
        )
    where, _, attr = target.rpartition(":")
    if not where or not attr.isidentifier():
        raise ModelError(
            f"bad TARGET {target!r}: expected path/to/file.py:factory or package.module:factory"
        )
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            if not os.path.isfile(where):
                raise ModelError(f"TARGET {target!r}: no such file {where!r}")
            modname = "edgeplan_target_" + str(abs(hash(os.path.abspath(where))))
            spec = importlib.util.spec_from_file_location(modname, where)
            if spec is None or spec.loader is None:
                raise ModelError(f"TARGET {target!r}: cannot import {where!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ModelError:
        raise
    except Exception as exc:  # user code: report any failure as bad input
        raise ModelError(
            f"TARGET {target!r}: importing {where!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(module, attr):
        raise ModelError(f"TARGET {target!r}: {where!r} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise ModelError(f"TARGET {target!r}: {attr!r} is neither a factory nor an nn.Module")
        try:
            obj = obj()
        except Exception as exc:
            raise ModelError(
                f"TARGET {target!r}: calling {attr}() failed: {type(exc).__name__}: {exc}"
            ) from None
    if isinstance(obj, (list, tuple)):
        if not obj or not all(isinstance(m, torch.nn.Module) for m in obj):
            raise ModelError(f"TARGET {target!r}: {attr}() must return an nn.Module or a list of modules")
        return list(obj)
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(
            f"TARGET {target!r}: {attr}() returned {type(obj).__name__}, not an nn.Module"
        )
    return obj


def _no_inplace(module):
    """Turn ``inplace=True`` off on a module that would write into its input."""
    if hasattr(module, "inplace") and getattr(module, "inplace") is True:
        module.inplace = False


def _chain_stages(children):
    names = []
    for key, child in children:
        cls = type(child).__name__
        names.append(f"L{key}_{cls}" if str(key).isdigit() else str(key))
    stages = []
    for i, ((_, child), name) in enumerate(zip(children, unique_names(names))):
        _no_inplace(child)
        stages.append(
            Stage(
                name=name,
                fn=child,
                inputs=(i - 1,) if i else (-1,),
                params=[p for p in child.parameters()],
                buffers=[b for b in child.buffers()],
            )
        )
    return stages


def build_stages(obj, stages="auto", example=None):
    """Cut a module into stages.

    Parameters
    ----------
    obj : torch.nn.Module or list of torch.nn.Module
    stages : {"auto", "modules", "ops"}
        ``modules``: the children of an ``nn.Sequential`` (or the list items)
        form a chain.  ``ops``: a DAG of ``torch.fx`` ops.  ``auto``: modules
        for a Sequential or a list, ops otherwise.
    example : torch.Tensor, optional
        An input, needed for ``ops`` (to tell tensor-valued nodes from
        constants such as ``x.size(0)``).

    Returns
    -------
    root : torch.nn.Module
        A module holding every parameter (for state snapshots).
    stages : list of Stage
        In a topological order; the last one is the sink.

    Raises
    ------
    ModelError
        A module that cannot be cut this way.

    Notes
    -----
    In-place modules (``inplace=True``) and in-place operators between stages
    are made out-of-place: each stage owns its output, as the model file says.
    """
    torch = require_torch()
    nn = torch.nn
    if stages not in STAGE_MODES:
        raise ModelError(f"--stages must be one of {', '.join(STAGE_MODES)}, got {stages!r}")
    if isinstance(obj, (list, tuple)):
        root = nn.ModuleList(obj)
        children = [(str(i), m) for i, m in enumerate(obj)]
        sequential = True
    else:
        root = obj
        sequential = isinstance(obj, nn.Sequential)
        children = list(obj.named_children()) if sequential else None
    if stages == "auto":
        stages = "modules" if sequential else "ops"
    if stages == "modules":
        if not sequential:
            raise ModelError(
                f"--stages modules needs an nn.Sequential or a list of modules, got "
                f"{type(obj).__name__}; use --stages ops (torch.fx) instead"
            )
        if not children:
            raise ModelError("the model has no stages (an empty nn.Sequential)")
        return root, _chain_stages(children)
    if isinstance(obj, (list, tuple)):
        obj = nn.Sequential(*obj)
        root = obj
    if example is None:
        raise ModelError("--stages ops needs an example input")
    return root, _fx_stages(obj, example)


def _fx_stages(module, example):
    torch = require_torch()
    import torch.fx as fx

    for sub in module.modules():
        _no_inplace(sub)
    try:
        gm = fx.symbolic_trace(module)
    except Exception as exc:
        raise ModelError(
            f"torch.fx cannot trace {type(module).__name__}: {type(exc).__name__}: {exc}; "
            "use an nn.Sequential and --stages modules"
        ) from None
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelError(
            f"--stages ops handles models with one input tensor; this one takes {len(placeholders)}"
        )
    outputs = [n for n in graph.nodes if n.op == "output"]
    result = outputs[0].args[0]
    if not isinstance(result, fx.Node):
        raise ModelError("--stages ops needs a model that returns one tensor (not a tuple or a dict)")

    # Run once to learn which nodes produce tensors.
    values = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            values[n] = value
            return value

    with torch.no_grad():
        try:
            _Recorder(gm).run(example)
        except Exception as exc:
            raise ModelError(
                f"running the traced model failed: {type(exc).__name__}: {exc}"
            ) from None

    def is_tensor(n):
        return isinstance(values.get(n), torch.Tensor)

    if not is_tensor(result):
        raise ModelError("--stages ops needs a model that returns one tensor (not a tuple or a dict)")

    # Layers: placeholder (the input) and tensor-valued call nodes that the result depends on.
    live = set()
    stack = [result]
    while stack:
        n = stack.pop()
        if n in live:
            continue
        live.add(n)
        stack.extend(n.all_input_nodes)

    order = [n for n in graph.nodes if n in live and n.op in ("call_module", "call_function", "call_method")]
    layer_nodes = []
    for n in order:
        value = values.get(n)
        if isinstance(value, torch.Tensor):
            layer_nodes.append(n)
        elif _holds_tensor(value, torch):
            raise ModelError(
                f"node {n.name!r} ({n.target}) returns several tensors; --stages ops handles "
                "ops with one tensor output: cut the model into an nn.Sequential and use "
                "--stages modules"
            )
    index = {n: i for i, n in enumerate(layer_nodes)}
    names = unique_names([n.name for n in layer_nodes])
    stages = []
    for n, name in zip(layer_nodes, names):
        producers = []

        def slot(a, _producers=producers):
            if a.op == "placeholder":
                key = -1
            elif a in index:
                key = index[a]
            else:
                return _Const(values[a])
            if key not in _producers:
                _producers.append(key)
            return _Slot(_producers.index(key))

        args = fx.node.map_arg(n.args, slot)
        kwargs = fx.node.map_arg(n.kwargs, slot)
        target = n.target
        params, buffers = [], []
        if n.op == "call_module":
            sub = gm.get_submodule(target)
            call = sub
            params = list(sub.parameters())
            buffers = list(sub.buffers())
        elif n.op == "call_function":
            call = _INPLACE_FUNCTIONS.get(target, target)
        else:
            method = target[:-1] if target.endswith("_") and not target.endswith("__") else target
            call = _MethodCall(method)
        for c in _consts(args) + _consts(kwargs):
            if isinstance(c, torch.nn.Parameter):
                params.append(c)
        stages.append(
            Stage(
                name=name,
                fn=_NodeFn(call, args, kwargs),
                inputs=tuple(producers),
                params=params,
                buffers=buffers,
            )
        )
    return stages


def _holds_tensor(value, torch):
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v, torch) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v, torch) for v in value.values())
    return False


@dataclass(frozen=True)
class _Slot:
    position: int


@dataclass(frozen=True, eq=False)
class _Const:
    value: object


def _consts(tree):
    found = []
    if isinstance(tree, _Const):
        found.append(tree.value)
    elif isinstance(tree, (list, tuple)):
        for t in tree:
            found.extend(_consts(t))
    elif isinstance(tree, dict):
        for t in tree.values():
            found.extend(_consts(t))
    return found


def _fill(tree, tensors):
    if isinstance(tree, _Slot):
        return tensors[tree.position]
    if isinstance(tree, _Const):
        return tree.value
    if isinstance(tree, tuple):
        return tuple(_fill(t, tensors) for t in tree)
    if isinstance(tree, list):
        return [_fill(t, tensors) for t in tree]
    if isinstance(tree, dict):
        return {k: _fill(v, tensors) for k, v in tree.items()}
    return tree


class _MethodCall:
    def __init__(self, name):
        self.name = name

    def __call__(self, obj, *args, **kwargs):
        return getattr(obj, self.name)(*args, **kwargs)


class _NodeFn:
    """``fn(*tensors)`` for one fx node: its arguments with the tensors filled in."""

    def __init__(self, call, args, kwargs):
        self.call = call
        self.args = args
        self.kwargs = kwargs

    def __call__(self, *tensors):
        return self.call(*_fill(self.args, tensors), **_fill(self.kwargs, tensors))


# ---------------------------------------------------------------- measuring


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


def _tensor_bytes(t):
    return t.numel() * t.element_size()


def _inputs_for(stage, outputs, x):
    return [x if p == -1 else outputs[p] for p in stage.inputs]


def _leaves(tensors, stage):
    """Detached copies (sharing storage) of a stage's inputs, as autograd leaves."""
    leaves = []
    for p, t in zip(stage.inputs, tensors):
        leaf = t.detach()
        if p != -1 and leaf.is_floating_point():
            leaf.requires_grad_(True)
        leaves.append(leaf)
    return leaves


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


def _measure_stage(stage, tensors, *, repeats, device, caller_holds_gradient=False):
    """Measure one stage on its real inputs; return (layer fields, output tensor)."""
    torch = require_torch()
    _ensure_grads(stage.params, torch)
    param_keys = {_storage_key(p) for p in list(stage.params) + list(stage.buffers)}
    fwd_times, bwd_times = [], []
    y = None
    for _ in range(max(1, repeats)):
        leaves = _leaves(tensors, stage)
        _sync(device, torch)
        t0 = time.perf_counter()
        y = stage.fn(*leaves)
        _sync(device, torch)
        t1 = time.perf_counter()
        _check_output(stage, y, torch)
        fwd_times.append((t1 - t0) * 1000.0)
        if y.requires_grad:
            g = torch.ones_like(y)
            _sync(device, torch)
            t2 = time.perf_counter()
            torch.autograd.backward([y], [g])
            _sync(device, torch)
            bwd_times.append((time.perf_counter() - t2) * 1000.0)
        del leaves
    output = y.detach()
    del y

    # What autograd saves.
    saved = []
    leaves = _leaves(tensors, stage)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t), t)[1], lambda t: t):
        y = stage.fn(*leaves)
    input_keys = {_storage_key(t) for t in leaves}
    out_key = _storage_key(y)
    distinct = {}
    for t in saved:
        key = _storage_key(t)
        if key in param_keys:
            continue
        distinct[key] = _storage_bytes(t)
    needs_inputs = any(k in distinct for k in input_keys)
    needs_output = out_key in distinct
    saved_bytes = sum(b for k, b in distinct.items() if k not in input_keys and k != out_key)
    del saved, y, leaves, distinct

    # Forward workspace: the peak during the forward minus what stays after it.
    leaves = _leaves(tensors, stage)
    y, peak, end = allocation_trace(lambda: stage.fn(*leaves), device)
    workspace_forward = max(0, peak - end)

    # Backward workspace on this fresh graph, run as a chained backward runs it:
    # the output gradient is created inside the backward and owned by the
    # engine, and the output is held only by the graph, so both are released
    # as soon as the stage's last op has used them.
    workspace_backward = 0
    if y.requires_grad and caller_holds_gradient:
        g = torch.ones_like(y)

        def run_backward():
            torch.autograd.backward([y], [g])
            return sum(_tensor_bytes(t.grad) for t in leaves if t.grad is not None)

        grads_bytes, peak, _ = allocation_trace(run_backward, device)
        workspace_backward = max(0, peak - grads_bytes)
        del y, g
    elif y.requires_grad:
        out_bytes = _tensor_bytes(y)
        seed = seed_function(torch)(y, None)
        del y

        def run_backward():
            seed.backward()
            return sum(_tensor_bytes(t.grad) for t in leaves if t.grad is not None)

        grads_bytes, peak, _ = allocation_trace(run_backward, device)
        workspace_backward = max(0, peak - out_bytes - grads_bytes)
        del seed
    else:
        del y
    del leaves
    fields = {
        "forward": round(statistics.median(fwd_times), 6),
        "backward": round(statistics.median(bwd_times), 6) if bwd_times else 0.0,
        "output_bytes": _tensor_bytes(output),
        "saved_bytes": int(saved_bytes),
        "needs_inputs": bool(needs_inputs),
        "needs_output": bool(needs_output),
        "workspace_forward": int(workspace_forward),
        "workspace_backward": int(workspace_backward),
        "params_bytes": _params_bytes(stage.params),
    }
    return fields, output


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


def _params_bytes(params):
    seen = {}
    for p in params:
        seen[id(p)] = _tensor_bytes(p)
    return int(sum(seen.values()))


def _estimate_stages(root, stages, shape, dtype, device):
    """Sizes from FakeTensorMode, FLOPs from FlopCounterMode: nothing runs."""
    torch = require_torch()
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.utils.stateless import _reparametrize_module
    from torch.utils.flop_counter import FlopCounterMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    results = []
    with mode:
        state = {}
        for k, v in list(root.named_parameters()) + list(root.named_buffers()):
            fake = mode.from_tensor(v.detach())
            if isinstance(v, torch.nn.Parameter):
                fake.requires_grad_(v.requires_grad)
            state[k] = fake
        fake_params = {id(v): state[k] for k, v in root.named_parameters()}
        fake_buffers = {id(v): state[k] for k, v in root.named_buffers()}
        x = torch.empty(shape, dtype=dtype, device=device)
        outputs = {}
        with _reparametrize_module(root, state):
            for i, stage in enumerate(stages):
                tensors = _inputs_for(stage, outputs, x)
                leaves = _leaves(tensors, stage)
                params = [fake_params.get(id(p), p) for p in stage.params]
                params += [fake_buffers.get(id(b), b) for b in stage.buffers]
                param_keys = {_storage_key(p) for p in params}
                saved = []
                with FlopCounterMode(display=False) as counter:
                    with torch.autograd.graph.saved_tensors_hooks(
                        lambda t: (saved.append(t), t)[1], lambda t: t
                    ):
                        y = stage.fn(*leaves)
                _check_output(stage, y, torch)
                fwd_flops = counter.get_total_flops()
                input_keys = {_storage_key(t) for t in leaves}
                out_key = _storage_key(y)
                distinct = {}
                for t in saved:
                    key = _storage_key(t)
                    if key not in param_keys:
                        distinct[key] = _storage_bytes(t)
                bwd_flops = 0
                if y.requires_grad:
                    with FlopCounterMode(display=False) as counter:
                        torch.autograd.backward([y], [torch.ones_like(y)])
                    bwd_flops = counter.get_total_flops()
                elements = y.numel()
                fields = {
                    "forward": float(fwd_flops if fwd_flops else elements),
                    "backward": float(bwd_flops if bwd_flops else 2 * elements),
                    "output_bytes": _tensor_bytes(y),
                    "saved_bytes": int(
                        sum(b for k, b in distinct.items() if k not in input_keys and k != out_key)
                    ),
                    "needs_inputs": any(k in distinct for k in input_keys),
                    "needs_output": out_key in distinct,
                    "workspace_forward": 0,
                    "workspace_backward": 0,
                    "params_bytes": _params_bytes(stage.params),
                }
                outputs[i] = y.detach()
                results.append(fields)
                del saved, distinct, leaves
    return results


def _layer_doc(stage, stages, fields):
    inputs = [INPUT if p == -1 else stages[p].name for p in stage.inputs]
    return {"name": stage.name, "inputs": inputs, **fields}


def prepare(obj, shape, *, dtype, stages, seed, device):
    """Move ``obj`` to the device and dtype in train mode, make the seeded input, cut the stages.

    Shared by :func:`profile_model` and the runtime's ``run_schedule``, so that
    both run the same stages on the same input.

    Returns
    -------
    (torch_dtype, device, input, root module, stages)

    Raises
    ------
    ModelError
        An unknown dtype, or a module that cannot be cut into stages.
    """
    torch = require_torch()
    if dtype not in DTYPES:
        raise ModelError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    dev = torch_device(device)
    modules = obj if isinstance(obj, (list, tuple)) else [obj]
    for m in modules:
        m.to(device=dev, dtype=torch_dtype)
        m.train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(device=dev, dtype=torch_dtype)
    root, stage_list = build_stages(obj, stages, example=x)
    return torch_dtype, dev, x, root, stage_list


def profile_model(
    obj,
    shape,
    *,
    dtype="float32",
    stages="auto",
    estimate=False,
    repeats=3,
    name="model",
    device="cpu",
    seed=0,
    caller_holds_gradient=False,
):
    """Profile a module (or list of modules) into an ``edgeplan-model/1`` document.

    Parameters
    ----------
    obj : torch.nn.Module or list of torch.nn.Module
    shape : tuple of int
        The input shape, batch included.
    dtype : str, keyword-only
        ``float32``, ``float64``, ``float16`` or ``bfloat16``; the module is
        converted to it.
    stages : {"auto", "modules", "ops"}, keyword-only
        See :func:`build_stages`.
    estimate : bool, keyword-only
        Count FLOPs on fake tensors instead of running (time unit ``flop``).
    repeats : int, keyword-only
        Timed runs per stage; the median is kept.
    name : str, keyword-only
        The model name.
    device : str, keyword-only
        ``cpu`` or ``cuda``.
    seed : int, keyword-only
        Seed for the random input.
    caller_holds_gradient : bool, keyword-only
        Measure ``workspace_backward`` with the output gradient and the output
        held by the caller for the whole backward (the convention the shared
        GPU model files were measured with) instead of released by the
        autograd engine as a chained backward releases them (the default).
        Kept for the fidelity benchmark; see docs/fidelity.md.

    Returns
    -------
    dict
        A validated ``edgeplan-model/1`` document.

    Raises
    ------
    ModelError
        A module that cannot be cut into stages, a stage that fails or does
        not return one tensor, a bad dtype.

    Notes
    -----
    Each stage runs ``repeats + 3`` times (timing, saved tensors, forward and
    backward memory); O(stages) profiler sessions.  Train mode is used
    (BatchNorm batch statistics, dropout on); the module's state (parameters,
    buffers, gradients) is restored afterwards.
    """
    torch = require_torch()
    torch_dtype, dev, x, root, stage_list = prepare(obj, shape, dtype=dtype, stages=stages, seed=seed, device=device)
    snapshot = {k: v.detach().clone() for k, v in root.state_dict().items()}
    old_grads = {id(p): p.grad for p in root.parameters()}
    try:
        if estimate:
            fields = _estimate_stages(root, stage_list, shape, torch_dtype, dev)
        else:
            fields = []
            outputs = {}
            for i, stage in enumerate(stage_list):
                tensors = _inputs_for(stage, outputs, x)
                try:
                    f, out = _measure_stage(
                        stage, tensors, repeats=repeats, device=dev,
                        caller_holds_gradient=caller_holds_gradient,
                    )
                except ModelError:
                    raise
                except RuntimeError as exc:
                    raise ModelError(
                        f"stage {stage.name!r} failed: {str(exc).splitlines()[0]}"
                    ) from None
                outputs[i] = out
                fields.append(f)
    finally:
        root.load_state_dict(snapshot)
        for p in root.parameters():
            p.grad = old_grads.get(id(p))
    _count_second_gradients(stage_list, fields)
    mode = "ops" if stage_list and not _is_chain(stage_list) else "modules"
    source = (
        f"edgeplan profile --estimate: torch {torch.__version__}, FakeTensorMode + FlopCounterMode "
        f"(FLOPs; ops it does not count cost one per output element forward, two backward), "
        f"input {list(shape)} {dtype}, {len(stage_list)} stages"
        if estimate
        else f"edgeplan profile: torch {torch.__version__} on {_device_name(dev)}, input "
        f"{list(shape)} {dtype}, {len(stage_list)} stages ({mode}), times: median of "
        f"{max(1, repeats)} runs"
    )
    doc = {
        "format": MODEL_FORMAT,
        "name": name,
        "time_unit": "flop" if estimate else "ms",
        "source": source,
        "input_bytes": _tensor_bytes(x),
        "layers": [_layer_doc(s, stage_list, f) for s, f in zip(stage_list, fields)],
    }
    model_from_dict(doc, source_name=f"profile of {name}")
    return doc


def _count_second_gradients(stage_list, fields):
    """Add to ``workspace_backward`` the fresh gradient a later consumer's backward makes.

    A layer read by several others gets one gradient contribution from each
    consumer's backward.  The first to run allocates the gradient (SPEC
    section 3 counts it once, in G); every later one makes a new tensor of the
    same size, which autograd (and the executor) adds into the held one only
    when that backward has finished: both exist during it.  Backwards run in
    decreasing layer order in every edgeplan schedule, so the first consumer
    is the one with the highest index; each other consumer's backward
    workspace grows by the producer's ``output_bytes``, unless the first is
    ``consumer + producer`` (then SPEC already counts that room, see below).
    See docs/fidelity.md ("the DAG gap").
    """
    consumers = {}
    for j, stage in enumerate(stage_list):
        for p in set(stage.inputs):
            if p >= 0:
                consumers.setdefault(p, []).append(j)
    for p, readers in consumers.items():
        readers = sorted(readers)
        last = stage_list[readers[-1]]
        for j in readers[:-1]:
            if _passes_gradient(last) and set(last.inputs) == {p, j} and (
                fields[j]["output_bytes"] == fields[p]["output_bytes"]
            ):
                # ``last`` is ``j + p``: its backward hands one tensor to both, which SPEC
                # counts twice until j's backward has run, exactly the fresh gradient's room.
                continue
            fields[j]["workspace_backward"] += fields[p]["output_bytes"]


def _passes_gradient(stage):
    """Whether the stage is a sum whose backward hands its output gradient to its inputs as is."""
    fn = stage.fn
    call = getattr(fn, "call", None)
    torch = require_torch()
    return call in (operator.add, torch.add) or getattr(call, "name", None) == "add"


def _is_chain(stage_list):
    return all(s.inputs == ((i - 1,) if i else (-1,)) for i, s in enumerate(stage_list))


def _device_name(dev):
    if dev.type == "cuda":  # pragma: no cover - no GPU in CI
        torch = require_torch()
        return torch.cuda.get_device_name(dev)
    import platform

    return f"CPU ({platform.machine()})"


def profile_target(target, shape, **options):
    """:func:`load_target` then :func:`profile_model`; the name defaults to the factory's."""
    obj = load_target(target)
    options.setdefault("name", target.rpartition(":")[2])
    return profile_model(obj, shape, **options)
