"""Stages from ``torch.export`` (non-strict): real library code, as it comes.

:func:`export_stages` exports the user's module on the example with
``torch.export.export(..., strict=False)``: the model's own Python runs on
the example, decorators, ``**kwargs`` forwards, modules that are not
submodules, dict/dataclass/``ModelOutput`` results and all.  The graph it
records is ATen ops over the module's parameters and buffers (lifted to
graph inputs) and the example's tensors.  Then the nodes are sorted out as
:mod:`planner.torch.capture` says for every capture:

- a tensor node that depends on a model input and does not share its storage
  with an argument is a **stage** (``ops``); with ``blocks`` (``modules``) the
  nodes recorded inside one *block* (an item of an ``nn.ModuleList``,
  ``nn.Sequential`` or ``nn.ModuleDict``, the outermost one, such as
  ``transformer.h.0``; in a model without such containers, a child of the
  model) are one stage, named by the block's path, and the ops between
  blocks one stage each (a block that hands more than one tensor to the rest
  of the model is cut into its ops);
- views and tensors that depend on no input (a causal mask, rotary
  ``cos``/``sin``, a weight's transpose) are **folded**: recomputed by each
  stage that reads them;
- an op that draws random numbers (dropout, ``torch.rand``) is never folded:
  it runs inside one stage, which says so (``Stage.random``) so that its
  recomputation replays the RNG state of its first run;
- in-place ops run out of place (each stage owns its output), except on a
  buffer (BatchNorm's ``num_batches_tracked``), which the stage updates.

Parameters and buffers are the user's module's own tensors (by their names),
so training updates what the stages read.  torch is imported inside the
functions: ``pip install edgeplan[torch]``.
"""

import contextlib
import io
import logging

from planner.errors import ModelError
from planner.io import unique_names
from planner.torch.fx_trace import is_view, reaches, tensors_in, upstream
from planner.torch.inputs import require_torch

__all__ = ["ExportFailed", "export_stages", "pick_output"]


class ExportFailed(ModelError):
    """``torch.export`` itself failed on the model (another capture may still work)."""

_CONTAINERS = ("ModuleList", "ModuleDict", "Sequential")
_WRAPPER = "module."


def _fields(out):
    """``[(name, value)]`` of a dict, ``ModelOutput``, dataclass or named tuple result."""
    import dataclasses

    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        return list(out.items())
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return list(zip(out._fields, out))
    if isinstance(out, (tuple, list)):
        return [(str(k), v) for k, v in enumerate(out)]
    return []


def _describe_fields(fields, torch):
    names = [k for k, v in fields if isinstance(v, torch.Tensor)]
    return ", ".join(names) if names else "no tensor"


def pick_output(out, output, *, model_name):
    """The tensor the loss reads from the model's result ``out``.

    Parameters
    ----------
    out : object
        A tensor, dict, tuple, dataclass or ``ModelOutput``.
    output : str or None
        A field name or an index (``--output-field``); None: the tensor itself,
        else the ``logits`` field, else the one tensor field.
    model_name : str, keyword-only
        How messages name the model.

    Raises
    ------
    ModelError
        No such field, not a tensor, or no single tensor to choose.
    """
    torch = require_torch()
    if output is None and isinstance(out, torch.Tensor):
        return out
    fields = _fields(out)
    kind = type(out).__name__
    if output is not None:
        key = str(output)
        if isinstance(out, (tuple, list)) and not hasattr(out, "_fields") and not key.lstrip("-").isdigit():
            raise ModelError(f"--output-field {key!r}: {model_name} returns a {kind}: give an index (0, 1, ...)")
        found = dict(fields)
        if key not in found and key.lstrip("-").isdigit() and -len(fields) <= int(key) < len(fields):
            found[key] = fields[int(key)][1]
        value = found.get(key)
        if not isinstance(value, torch.Tensor):
            what = "has no field" if value is None else "field is not a tensor:"
            raise ModelError(
                f"--output-field {key!r}: {model_name}'s result ({kind}) {what} {key!r}; its tensors: "
                f"{_describe_fields(fields, torch)}"
            )
        return value
    named = dict(fields)
    if isinstance(named.get("logits"), torch.Tensor):
        return named["logits"]
    tensors = [v for _, v in fields if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:
        return tensors[0]
    raise ModelError(
        f"{model_name} returns a {kind} with {len(tensors) or 'no'} tensors "
        f"({_describe_fields(fields, torch)}) and no 'logits': name the one the loss reads with --output-field NAME"
    )


def _picked_module(torch, root, output):
    """The user's module under ``module``, returning the one tensor :func:`pick_output` chooses."""

    class Picked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = root

        def forward(self, *args, **kwargs):
            return pick_output(self.module(*args, **kwargs), output, model_name=type(root).__name__)

    return Picked()


def _first_line(exc):
    return (str(exc).strip().splitlines() or [""])[0]


def _export(torch, root, args, kwargs, output):
    """``torch.export.export(..., strict=False)`` of the picked output; failures in one line."""
    name = type(root).__name__
    try:
        with _quiet():
            return torch.export.export(_picked_module(torch, root, output), args, kwargs, strict=False)
    except ModelError:
        raise
    except Exception as exc:  # the model's own code or the exporter: one line naming it
        construct = _construct(exc)
        raise ExportFailed(
            f"cannot capture {name} with torch.export: {construct}: {type(exc).__name__}: "
            f"{_first_line(exc)[:200]} (use --stages ops with the fx tracer, or make this code "
            "independent of tensor values)"
        ) from None


@contextlib.contextmanager
def _quiet():
    """The exporter's log lines and graph dumps stay off the user's terminal."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _construct(exc):
    text = f"{type(exc).__name__} {exc}"
    if "data-dependent" in text or "GuardOnDataDependent" in text or "Could not guard" in text:
        return "control flow or a Python number taken from a tensor's values"
    if "pytree" in text.lower() or "not supported" in text:
        return "an input or output type the exporter does not flatten"
    return "the model's forward failed under capture"


def _module_path(node):
    """The innermost module the node was recorded in (wrapper prefix removed), and its type name."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, kind = list(stack.values())[-1]
    return _strip(path), getattr(kind, "__name__", str(kind)).rpartition(".")[2]


def _strip(path):
    return path[len(_WRAPPER):] if path.startswith(_WRAPPER) else ("" if path == "module" else path)


def _is_container(module):
    return type(module).__name__ in _CONTAINERS and type(module).__module__.startswith("torch.nn")


def _block_of(node, root, children_are_blocks):
    """The outermost container item among the modules the node was recorded in ('' if none).

    In a model without containers (``children_are_blocks``), the child of the root it is in.
    """
    stack = node.meta.get("nn_module_stack") or {}
    if children_are_blocks:
        paths = [_strip(path) for path, _ in stack.values()]
        return next((p for p in paths if p and "." not in p), "")
    for path, _ in stack.values():
        path = _strip(path)
        if not path:
            continue
        parent_path = path.rpartition(".")[0]
        try:
            parent = root.get_submodule(parent_path) if parent_path else root
        except AttributeError:
            continue
        if _is_container(parent):
            return path
    return ""


def _is_random(node, torch):
    return torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())


def _inplace_base(node):
    """For an in-place ATen op (``add_``): its out-of-place overload, else None."""
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return None
    alias = schema.arguments[0].alias_info
    if alias is None or not alias.is_write or schema.name.endswith("_out"):
        return None
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", "")
    if not name.endswith("_"):
        return None
    import torch

    plain = getattr(torch.ops.aten, name[:-1], None)
    return getattr(plain, target._overloadname, None) if plain is not None else None


class _Graph:
    """The exported graph with what each node is: input, tensor held by the module, constant, or computed."""

    def __init__(self, torch, ep, root, inputs):
        self.torch = torch
        self.graph = ep.graph
        self.root = root
        self.source = {}  # placeholder -> ("input", k) | ("tensor", t) | ("const", value)
        self.params = set()
        self.buffers = set()
        flat = list(inputs)
        specs = ep.graph_signature.input_specs
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        user = 0
        leaves = _example_leaves(inputs)
        for node, spec in zip(placeholders, specs):
            kind = spec.kind.name
            if kind == "USER_INPUT":
                value = leaves[user]
                user += 1
                if isinstance(value, torch.Tensor):
                    self.source[node] = ("input", next(k for k, t in enumerate(flat) if t is value))
                else:
                    self.source[node] = ("const", value)
                continue
            fqn = _strip(spec.target or "")
            tensor = _attr(root, fqn)
            if not isinstance(tensor, torch.Tensor):  # a lifted constant, not the module's own
                tensor = ep.constants.get(spec.target)
            if tensor is None:
                raise ModelError(f"cannot capture {type(root).__name__}: graph input {spec.target!r} is not found")
            self.source[node] = ("tensor", tensor)
            if kind == "PARAMETER":
                self.params.add(node)
            elif kind == "BUFFER" and tensor is _attr(root, fqn):
                self.buffers.add(node)


def _example_leaves(inputs):
    """The example's leaves in the order torch.export flattens ``(args, kwargs)``."""
    import torch.utils._pytree as pytree

    args, kwargs = inputs.call()
    return pytree.tree_leaves((args, kwargs))


def _attr(root, fqn):
    obj = root
    for part in fqn.split("."):
        if not part:
            return None
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _evaluate(g, inputs):
    """Every node's value on the example (no grad), with in-place ops run out of place."""
    torch = g.torch
    values = {}
    for node in g.graph.nodes:
        if node.op == "placeholder":
            kind, v = g.source[node]
            values[node] = inputs[v] if kind == "input" else v
        elif node.op == "call_function":
            args = torch.fx.node.map_arg(node.args, values.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, values.__getitem__)
            with torch.no_grad():
                values[node] = _target(node, g)(*args, **kwargs)
    return values


def _target(node, g):
    """What a call node runs: in-place ops out of place, except on a buffer."""
    plain = _inplace_base(node)
    if plain is None or (node.args and node.args[0] in g.buffers):
        return node.target
    return plain


def _classify(g, values):
    """``kinds[node]``: input, tensor (parameter, buffer, constant), const, fold, stage or effect."""
    torch = g.torch
    kinds, dep = {}, {}
    for node in g.graph.nodes:
        if node.op == "placeholder":
            kinds[node] = {"input": "input", "tensor": "tensor"}.get(g.source[node][0], "const")
            dep[node] = kinds[node] == "input"
            continue
        if node.op != "call_function":
            continue
        v = values.get(node)
        dep[node] = any(dep.get(a) for a in node.all_input_nodes)
        mutates_buffer = _inplace_base(node) is not None and node.args and node.args[0] in g.buffers
        if mutates_buffer:
            kinds[node] = "effect"
        elif not tensors_in(v, torch):
            if dep[node] and isinstance(v, (bool, int, float)):
                path, kind = _module_path(node)
                where = f"module {path!r} ({kind})" if path else f"the model ({type(g.root).__name__})"
                raise ModelError(
                    f"cannot capture a tensor's value used as a Python number (.item(), int(tensor)) in "
                    f"{where}: it would be frozen at the example's value; keep it a tensor"
                )
            kinds[node] = "const"
        elif not isinstance(v, torch.Tensor):
            kinds[node] = "fold"  # a tuple: its pieces are what stages read
        elif dep[node] and is_view(node, v, values, torch):
            kinds[node] = "fold"  # also a dropout of p = 0, which returns its input
        elif _is_random(node, torch):
            kinds[node] = "stage"
        elif not dep[node]:
            kinds[node] = "fold"
        else:
            kinds[node] = "stage"
    return kinds


def _check_inplace(g, kinds, values, root):
    """An in-place op runs out of place: right only when its result is what is read afterwards.

    Refused: a write into a view (``x[:, 0] = 0``: it would change the tensor
    viewed), a write whose result is unused, and one whose input is read again.
    """
    order = {n: k for k, n in enumerate(g.graph.nodes)}
    for node in g.graph.nodes:
        if node.op != "call_function" or kinds.get(node) == "effect" or _inplace_base(node) is None:
            continue
        base = node.args[0]
        op = node.target.overloadpacket.__name__
        value = values.get(base)
        if isinstance(value, g.torch.Tensor) and base.op == "call_function" and is_view(base, value, values, g.torch):
            problem = f"an in-place write into a view (x[...] = ..., {op})"
        elif not node.users:
            problem = f"an in-place write whose result is not used ({op}(...), node {node.name!r})"
        elif any(u is not node and order[u] > order[node] for u in base.users):
            problem = f"an in-place {op} whose input is read again afterwards"
        else:
            continue
        path, kind = _module_path(node)
        where = f"module {path!r} ({kind})" if path else f"the model ({type(root).__name__})"
        raise ModelError(f"cannot capture {problem} in {where}: assign the result to a new tensor instead")


class _StageFn:
    """``fn(*tensors)``: one stage's ATen ops over its input tensors and the module's tensors.

    ``steps`` is ``[(node, target, args, kwargs)]`` in graph order; a graph
    node among the arguments is an earlier step's value or an input (``slots``,
    in the order ``fn`` takes them), anything else is used as it is (the
    module's parameters and buffers, constants).  The nodes are turned into
    positions once, here: a call walks plain tuples, lists and dicts, which
    ``torch.compile`` traces into one graph (it cannot trace ``fx``'s
    ``map_arg``, and ran such a stage eager).
    """

    def __init__(self, steps, out, slots):
        self.steps = steps
        self.out = out
        self.slots = slots
        at = {node: k for k, node in enumerate(slots)}
        program = []
        for node, target, args, kwargs in steps:
            args = _positions(args, at)
            flat = not kwargs and not any(isinstance(a, (tuple, list, dict, slice)) for a in args)
            program.append((target, args, _positions(kwargs, at), flat))
            at[node] = len(slots) + len(program) - 1
        self.program = tuple(program)
        self.result = at[out]

    def __call__(self, *tensors):
        env = list(tensors)
        for target, args, kwargs, flat in self.program:
            if flat:  # most ops: positions and constants, no nesting to walk
                env.append(target(*[env[a.k] if a.__class__ is _At else a for a in args]))
            else:
                env.append(target(*_values(args, env), **_values(kwargs, env)))
        return env[self.result]


class _At:
    """The value at position ``k`` of a stage's values (its inputs, then its steps')."""

    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k


def _positions(arg, at):
    """``arg`` with each graph node replaced by its :class:`_At` position, in plain tuples, lists and dicts."""
    from torch import fx

    return _replace(arg, fx.Node, lambda node: _At(at[node]))


def _values(arg, env):
    """``arg`` with each :class:`_At` replaced by its value in ``env``."""
    return _replace(arg, _At, lambda a: env[a.k])


def _replace(arg, kind, fn):
    """``arg`` with each ``kind`` instance ``x`` in it replaced by ``fn(x)``, through tuples, lists, dicts and slices."""
    if isinstance(arg, kind):
        return fn(arg)
    if isinstance(arg, tuple):
        return tuple(_replace(a, kind, fn) for a in arg)
    if isinstance(arg, list):
        return [_replace(a, kind, fn) for a in arg]
    if isinstance(arg, dict):
        return {k: _replace(v, kind, fn) for k, v in arg.items()}
    if isinstance(arg, slice):
        return slice(_replace(arg.start, kind, fn), _replace(arg.stop, kind, fn), _replace(arg.step, kind, fn))
    return arg


class _Split(Exception):
    """A stage would read a node inside another block that is not that block's output."""


def _stage_steps(g, kinds, values, out, members, index, positions, extra, index_outs):
    """The steps of the stage ``out`` (``members``: stage nodes run inside it), its producers."""
    need, producers, order = set(), [], {}
    stack = [out] + list(extra)
    holders = {}
    while stack:
        n = stack.pop()
        if n in need:
            continue
        need.add(n)
        for a in n.all_input_nodes:
            kind = kinds.get(a)
            if kind == "input" or (kind == "stage" and a not in members):
                key = -1 - positions[a] if kind == "input" else index[a]
                if key not in order:
                    order[key] = len(producers)
                    producers.append(key)
                holders[a] = key
            elif kind in ("stage", "fold", "effect"):
                stack.append(a)
            if kind == "stage" and a not in members and a not in index_outs:
                raise _Split(a)
    steps = []
    slots = {}
    params, buffers = [], []
    for n in g.graph.nodes:
        if n in holders:
            slots[n] = order[holders[n]]
        if n not in need or n.op != "call_function":
            continue
        args = g.torch.fx.node.map_arg(n.args, lambda a: _arg(g, kinds, values, a, params, buffers))
        kwargs = g.torch.fx.node.map_arg(n.kwargs, lambda a: _arg(g, kinds, values, a, params, buffers))
        steps.append((n, _target(n, g), args, kwargs))
    slot_nodes = sorted(slots, key=lambda n: slots[n])
    return steps, producers, slot_nodes, params, buffers


def _arg(g, kinds, values, a, params, buffers):
    kind = kinds.get(a)
    if kind == "tensor":
        t = g.source[a][1]
        if a in g.params and not any(t is p for p in params):
            params.append(t)
        if a in g.buffers and not any(t is b for b in buffers):
            buffers.append(t)
        return t
    if kind == "const":
        return values.get(a) if a.op != "placeholder" else g.source[a][1]
    return a  # filled in from the stage's environment


def export_stages(root, inputs, *, blocks, output=None):
    """The stages of ``root`` exported on ``inputs`` (``blocks``: modules granularity).

    Parameters
    ----------
    root : torch.nn.Module
    inputs : planner.torch.inputs.ExampleInputs
        The example's tensors, flat, and how the model takes them.
    blocks : bool, keyword-only
        One stage per block (``--stages modules``) instead of one per op.
    output : str or None, keyword-only
        What :func:`pick_output` takes.

    Returns
    -------
    list of Stage

    Raises
    ------
    ModelError
        One line naming what could not be captured.
    """
    torch = require_torch()
    from planner.torch.stages import Stage

    args, kwargs = inputs.call()
    _check_call(root, args, kwargs)
    state = {k: v.detach().clone() for k, v in root.state_dict().items()}
    rng = torch.random.get_rng_state()
    try:
        ep = _export(torch, root, args, kwargs, output)
        g = _Graph(torch, ep, root, inputs)
        values = _evaluate(g, inputs)
    finally:
        torch.random.set_rng_state(rng)
        with torch.no_grad():
            for k, v in root.state_dict().items():
                v.copy_(state[k])
    kinds = _classify(g, values)
    _check_inplace(g, kinds, values, root)
    result = next(n for n in g.graph.nodes if n.op == "output").args[0]
    if isinstance(result, (tuple, list)):
        result = result[0]
    if kinds.get(result) == "input":
        raise ModelError(f"{type(root).__name__} returns its input unchanged: there is nothing to profile")
    if kinds.get(result) in ("input", "tensor", "const") or not reaches(result, kinds, ("input",)):
        raise ModelError(f"the output of {type(root).__name__} does not depend on its inputs")
    kinds[result] = "stage"
    groups = _groups(g, kinds, root) if blocks else {}
    split = set()
    while True:
        stage_list = _make_stages(g, kinds, values, result, groups, split, Stage)
        if isinstance(stage_list, list):
            return stage_list
        if stage_list not in groups or stage_list in split:  # pragma: no cover - a bug, not the model
            raise ModelError(f"cannot cut {type(root).__name__} into stages at {stage_list!r}: use --stages ops")
        split.add(stage_list)  # a block that cannot be one stage: its ops, one stage each


def _check_call(root, args, kwargs):
    """The example fits ``root.forward``'s signature, or one line saying what is missing."""
    import inspect

    name = type(root).__name__
    try:
        signature = inspect.signature(root.forward)
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        params = signature.parameters.values()
        missing = [p.name for p in params if p.default is inspect.Parameter.empty
                   and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and p.name not in kwargs][len(args):]
        need = len([p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                    and p.default is inspect.Parameter.empty])
        if missing:
            raise ModelError(
                f"{name}.forward needs {need} inputs, the example gives {len(args) + len(kwargs)} "
                f"(missing {', '.join(missing)}): repeat --input, or use --example"
            ) from None
        raise ModelError(f"{name}.forward does not take the example's inputs: {exc}") from None


def _groups(g, kinds, root):
    """``block path -> stage nodes`` recorded inside it."""
    groups = {}
    children_are_blocks = not any(_is_container(m) and len(m) for m in root.modules())
    for n in g.graph.nodes:
        if kinds.get(n) == "stage":
            block = _block_of(n, root, children_are_blocks)
            if block:
                groups.setdefault(block, []).append(n)
    return groups


def _escaping(members, kinds):
    """Stage nodes of a block read outside it (through folds), or the model's result."""
    inside = set(members)
    found = []
    for n in members:
        stack, seen = list(n.users), set()
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            if u.op == "output" or (u not in inside and kinds.get(u) in ("stage", "effect")):
                found.append(n)
                break
            if u not in inside and kinds.get(u) == "fold":
                stack.extend(u.users)
    return found


def _make_stages(g, kinds, values, result, groups, split, Stage):
    """The stages, or the block that must be split (a stage would read a later one)."""
    owner = {}  # stage node -> (output node, block)
    for block, members in groups.items():
        if block in split:
            continue
        out = _escaping(members, kinds)
        if len(out) != 1:
            split.add(block)
            continue
        for n in members:
            owner[n] = (out[0], block)
    live = _live(result, kinds)
    order = {n: k for k, n in enumerate(g.graph.nodes)}
    outs = sorted({owner.get(n, (n, ""))[0] for n in g.graph.nodes if kinds.get(n) == "stage" and n in live},
                  key=order.__getitem__)
    index = {o: k for k, o in enumerate(outs)}
    for n, (o, _) in owner.items():
        index[n] = index.get(o, -1)
    positions = {n: g.source[n][1] for n in g.graph.nodes if kinds.get(n) == "input"}
    effects = _effects(g, kinds, outs, order)
    first_input = min(positions.values()) if positions else 0
    leaf_paths = {}  # a torch.nn leaf module computed by one stage names it (fc, conv1)
    for out in outs:
        path = _module_path(out)[0]
        if path and out not in owner and not list(g.root.get_submodule(path).children()):
            leaf_paths[path] = leaf_paths.get(path, 0) + 1
    stage_list, names = [], []
    for k, out in enumerate(outs):
        block = owner.get(out, (out, ""))[1]
        members = {n for n, (o, _) in owner.items() if o is out} | {out}
        try:
            steps, producers, slots, params, buffers = _stage_steps(
                g, kinds, values, out, members, index, positions, effects.get(out, ()), set(outs))
        except _Split as exc:
            return _owner_block(exc.args[0], owner) or block or out.name
        if any(p >= k for p in producers):
            return block or out.name
        if not producers:  # a random op of no input: it reads the first one, for the file's DAG
            producers, slots = [-1 - first_input], [None]
        path = block or _module_path(out)[0]
        names.append(block or (path if leaf_paths.get(path) == 1 else out.name))
        stage_list.append(Stage(
            name="", fn=_StageFn(steps, out, slots), inputs=tuple(producers), params=params, buffers=buffers,
            random=any(_is_random(n, g.torch) for n, *_ in steps), module=path,
        ))
    for stage, name in zip(stage_list, unique_names(names)):
        stage.name = name
    return stage_list


def _owner_block(node, owner):
    return owner.get(node, (None, ""))[1]


def _live(result, kinds):
    return upstream(result, kinds, ("stage", "fold", "effect"))


def _effects(g, kinds, outs, order):
    """Buffer updates (``num_batches_tracked += 1``): each runs in the first stage after it."""
    found = {}
    for n in g.graph.nodes:
        if kinds.get(n) != "effect":
            continue
        after = next((o for o in outs if order[o] > order[n]), None)
        if after is not None:
            found.setdefault(after, []).append(n)
    return found
