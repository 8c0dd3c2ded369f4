"""``torch.fx``, run concretely, and the stages made from its graph.

See :mod:`planner.torch.capture` for what becomes a stage, what is folded,
and what is refused.
"""

import functools
import inspect
import operator
from dataclasses import dataclass

from planner.errors import ModelError
from planner.io import unique_names
from planner.torch.inputs import require_torch

__all__ = ["fx_stages", "concrete_trace", "no_inplace", "node_call", "tensors_in", "is_view"]

_INPLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.ipow: operator.pow,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
}
_DATA_METHODS = ("item", "tolist", "numpy", "data_ptr")
_SHAPE_ATTRIBUTES = ("shape", "ndim", "dtype", "device", "is_cuda", "layout")
_SHAPE_METHODS = ("size", "dim", "numel", "nelement", "stride", "element_size", "is_contiguous",
                  "is_floating_point", "get_device", "ndimension")
_CONTAINERS = ("ModuleList", "ModuleDict", "Sequential")


def _where(module_path, module_type):
    return f"module {module_path!r} ({module_type})" if module_path else f"the model ({module_type})"


class _ConcreteValues:
    """The methods of the tracer's proxy: it turns into its concrete value where Python needs one.

    Mixed into a :class:`torch.fx.Proxy` by :func:`_tracer_class`; ``tracer.torch``
    is the torch module.
    """

    def _concrete(self, construct):
        value = self.tracer.values.get(self.node)
        if isinstance(value, self.tracer.torch.Tensor):
            self.tracer.refuse(construct)
        return value

    def __bool__(self):
        return bool(self._concrete("control flow on a tensor's values (if/while/and/or on a tensor)"))

    def __index__(self):
        return operator.index(self._concrete("a tensor's value used as an index"))

    def __int__(self):
        return int(self._concrete("a tensor's value used as a Python number (int(tensor))"))

    def __float__(self):
        return float(self._concrete("a tensor's value used as a Python number (float(tensor))"))

    def __len__(self):
        return len(self.tracer.values.get(self.node))

    def __getattr__(self, k):
        if k in _SHAPE_ATTRIBUTES:
            value = self.tracer.values.get(self.node)
            if isinstance(value, self.tracer.torch.Tensor):
                return getattr(value, k)  # a constant for the profiled shapes
        return super().__getattr__(k)

    def __setitem__(self, key, value):
        self.tracer.refuse("an in-place write x[...] = ... (assign a new tensor instead)")


class _Scopes:
    """The tracer's place in the module tree: which modules are stages, and what messages name.

    ``scopes[-1]`` is the ``(path, type name)`` of the module being traced; a
    module called while :class:`_Evaluation` computes a value is run, not traced.
    """

    def __init__(self, root, blocks):
        super().__init__()
        self.root_module = root
        self.blocks = blocks
        self.scopes = [("", type(root).__name__)]

    def refuse(self, construct):
        path, kind = self.scopes[-1]
        raise ModelError(f"cannot trace {construct} in {_where(path, kind)}")

    def is_leaf_module(self, m, qualified_name):
        if not self.blocks:
            return super().is_leaf_module(m, qualified_name)
        return _is_block(self.root_module, m, qualified_name)

    def call_module(self, m, forward, args, kwargs):
        if self.evaluating:  # a module run for its value, inside the tracer's patches
            return forward(*args, **kwargs)
        self.scopes.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if not hasattr(exc, "edgeplan_scope"):
                try:
                    exc.edgeplan_scope = self.scopes[-1]
                except AttributeError:  # pragma: no cover - an exception without a __dict__
                    pass
            raise
        finally:
            self.scopes.pop()


class _Evaluation:
    """The tracer evaluates every node on the example as it records it: ``values[node]``.

    Class attributes set by :func:`_tracer_class`: ``torch``, ``fx`` and
    ``proxy_class``.
    """

    def __init__(self, root, inputs, blocks):
        super().__init__(root, blocks)
        self.values = {}
        self.evaluating = False
        forward = inspect.signature(root.forward).parameters
        self.input_names = {}
        for k, name in enumerate(list(forward)[: len(inputs)]):
            self.input_names[name] = (k, inputs[k])

    def proxy(self, node):
        return self.proxy_class(node, self)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind == "get_attr":  # also the tensors fx stores on the root (_tensor_constant0)
            self.evaluating = True
            try:
                self.values[node] = _attr(self.root_module, target)
            finally:
                self.evaluating = False
        return node

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self.evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def iter(self, obj):
        value = self.values.get(obj.node)
        return (obj[i] for i in range(len(value)))

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        map_aggregate = self.fx.node.map_aggregate
        if kind == "call_method" and target in _SHAPE_METHODS:
            value = self._value(args[0])
            if isinstance(value, self.torch.Tensor):  # x.size(), x.dim(): constants, no node
                rest = map_aggregate(args[1:], self._value)
                return getattr(value, target)(*rest, **map_aggregate(kwargs, self._value))
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self.values[proxy.node] = self._evaluate(proxy.node, kind, target, args, kwargs)
        return proxy

    def _evaluate(self, node, kind, target, args, kwargs):
        if kind == "placeholder":
            if target in self.input_names:
                return self.input_names[target][1]
            return args[0] if args else None
        if kind == "output":
            return None
        if kind == "call_method" and target in _DATA_METHODS:
            self.refuse(f"a tensor's value used as a Python number (.{target}())")
        vals = self.fx.node.map_aggregate(args, self._value)
        kw = self.fx.node.map_aggregate(kwargs, self._value)
        self.evaluating = True
        try:
            return _run_node(node, kind, target, vals, kw, self.root_module, self.torch)
        finally:
            self.evaluating = False

    def _value(self, a):
        if isinstance(a, self.fx.Proxy):
            return self.values[a.node]
        if isinstance(a, self.fx.Node):
            return self.values[a]
        return a


@functools.cache
def _tracer_class(torch, fx):
    """A :class:`torch.fx.Tracer` that evaluates every node on the example as it records it.

    Built on first use, so that this module imports without torch.
    """
    proxy = type("ConcreteProxy", (_ConcreteValues, fx.Proxy), {"__module__": __name__})
    namespace = {"__module__": __name__, "torch": torch, "fx": fx, "proxy_class": proxy}
    return type("ConcreteTracer", (_Evaluation, _Scopes, fx.Tracer), namespace)


def _is_block(root, m, qualified_name):
    """``--stages modules``: ``m`` is a child of the root or an item of a container right under it."""
    if type(m).__name__ in _CONTAINERS and type(m).__module__.startswith("torch.nn"):
        return False
    parent = root
    for part in qualified_name.split(".")[:-1]:
        parent = getattr(parent, part)
        if type(parent).__name__ not in _CONTAINERS:
            return False
    return True


def _run_node(node, kind, target, vals, kwargs, root, torch):
    """A node's value on the example (no grad; in-place ops run out of place)."""
    if kind == "get_attr":
        return _attr(root, target)
    call = node_call(node, root)
    with torch.no_grad():
        return call(*vals, **_out_of_place_kwargs(kwargs))


def _attr(root, target):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _out_of_place_kwargs(kwargs):
    if kwargs.get("inplace") is True:
        kwargs = dict(kwargs, inplace=False)
    return kwargs


class _MethodCall:
    def __init__(self, name):
        self.name = name

    def __call__(self, obj, *args, **kwargs):
        return getattr(obj, self.name)(*args, **kwargs)


def _is_inplace(node):
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or node.target is operator.setitem or (
            node.kwargs.get("inplace") is True
        ) or getattr(node.target, "__name__", "").endswith("_") and not getattr(
            node.target, "__name__", ""
        ).endswith("__")
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    return False


def node_call(node, root):
    """The callable a node runs, in-place ops replaced by their out-of-place forms."""
    torch = require_torch()
    if node.op == "call_module":
        return root.get_submodule(node.target)
    if node.op == "call_method":
        name = node.target
        if name.endswith("_") and not name.endswith("__"):
            name = name[:-1]
        return _MethodCall(name)
    target = _INPLACE_FUNCTIONS.get(node.target, node.target)
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.endswith("__") and target is not operator.setitem:
        plain = getattr(torch, name[:-1], None) or getattr(torch.nn.functional, name[:-1], None)
        if plain is not None:
            target = plain
    return _Call(target)


class _Call:
    def __init__(self, target):
        self.target = target

    def __call__(self, *args, **kwargs):
        return self.target(*args, **_out_of_place_kwargs(kwargs))


def concrete_trace(root, inputs, *, blocks):
    """Trace ``root`` on ``inputs``: ``(graph, values, scope of each node)``.

    Raises
    ------
    ModelError
        What torch.fx rejects, or what the concrete tracer refuses, in one line.
    """
    torch = require_torch()
    import torch.fx as fx

    for sub in root.modules():
        no_inplace(sub)
    tracer = _tracer_class(torch, fx)(root, inputs, blocks)
    names = list(inspect.signature(root.forward).parameters.items())
    if len(inputs) > len(names) and not any(p.kind is inspect.Parameter.VAR_POSITIONAL for _, p in names):
        raise ModelError(f"the example has {len(inputs)} inputs, {type(root).__name__}.forward takes {len(names)}")
    concrete = {
        n: p.default for n, p in names[len(inputs):] if p.default is not inspect.Parameter.empty
    }
    missing = [n for n, p in names[len(inputs):] if p.default is inspect.Parameter.empty
               and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if missing:
        raise ModelError(
            f"{type(root).__name__}.forward needs {len(names) - len(concrete)} inputs, the example gives "
            f"{len(inputs)} (missing {', '.join(missing)}): repeat --input, or use --example"
        )
    try:
        graph = tracer.trace(root, concrete_args=concrete or None)
    except ModelError:
        raise
    except Exception as exc:  # torch.fx or the model's own code on the example
        path, kind = getattr(exc, "edgeplan_scope", tracer.scopes[-1])
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(
            f"tracing {_where(path, kind)} on the example failed: {type(exc).__name__}: {first}"
        ) from None
    for name in set(tracer.tensor_attrs.values()):  # fx's copies of tensor constants on the root
        if name.startswith("_tensor_constant") and name in root.__dict__:
            delattr(root, name)
    return graph, tracer.values


def no_inplace(module):
    """Turn ``inplace=True`` off on a module that would write into its input."""
    if hasattr(module, "inplace") and getattr(module, "inplace") is True:
        module.inplace = False


def tensors_in(value, torch):
    """The tensors in ``value``: itself, or those in a list, tuple or dict (one level each)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v, torch)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v, torch)]
    return []


def _storage(t):
    return t.untyped_storage().data_ptr(), t.device


def _classify(graph, values, torch):
    """``kind[node]``: input, const, fold or stage (see :mod:`planner.torch.capture`)."""
    kinds, dep = {}, {}
    for n in graph.nodes:
        v = values.get(n)
        if n.op == "output":
            continue
        tensors = tensors_in(v, torch)
        if n.op == "placeholder":
            kinds[n] = "input" if isinstance(v, torch.Tensor) else "const"
            dep[n] = kinds[n] == "input"
            continue
        if n.op == "get_attr" or not tensors:
            kinds[n], dep[n] = "const", False
            continue
        dep[n] = any(dep.get(a) for a in n.all_input_nodes)
        if not dep[n] or not isinstance(v, torch.Tensor):
            kinds[n] = "fold"
        elif is_view(n, v, values, torch):
            kinds[n] = "fold"
        else:
            kinds[n] = "stage"
    return kinds


def is_view(node, value, values, torch):
    """``value`` shares its storage with a tensor among the node's arguments.

    For a piece of a tuple (``getitem``), the arguments of the op that made the
    tuple: a ``split`` piece is a view, an output of a module returning two new
    tensors is not.
    """
    sources = node.all_input_nodes
    if node.op == "call_function" and node.target is operator.getitem and sources:
        container = sources[0]
        if not isinstance(values.get(container), torch.Tensor):
            sources = container.all_input_nodes
    bases = set()
    for a in sources:
        bases.update(_storage(t) for t in tensors_in(values.get(a), torch) if t.untyped_storage().nbytes())
    return value.untyped_storage().nbytes() > 0 and _storage(value) in bases


def _check_graph(graph, values, kinds, torch, root):
    """The model's result node; refuse in-place writes whose result is unused and non-tensor results."""
    for n in graph.nodes:
        if _is_inplace(n) and not n.users and kinds.get(n) != "const":
            what = "x[...] = ..." if n.target is operator.setitem else f"{getattr(n.target, '__name__', n.target)}(...)"
            raise ModelError(
                f"cannot trace an in-place write whose result is not used ({what}, node {n.name!r}) "
                f"in {_scope_of(n, root)}: assign the result instead"
            )
    out = next(n for n in graph.nodes if n.op == "output")
    result = out.args[0]
    if not hasattr(result, "op") or not isinstance(values.get(result), torch.Tensor):
        got = type(values.get(result) if hasattr(result, "op") else result).__name__
        raise ModelError(
            f"cannot trace a model that returns {got}, not one tensor ({type(root).__name__}.forward): "
            "return the output the loss reads"
        )
    if kinds[result] in ("input", "const") or (
        kinds[result] == "fold" and not reaches(result, kinds, ("input", "stage"), through=lambda k: k != "const")
    ):
        raise ModelError(f"the output of {type(root).__name__} does not depend on its inputs")
    return result


def reaches(node, kinds, wanted, *, through=lambda kind: True):
    """Whether ``node`` depends on a node whose kind is in ``wanted`` (following inputs whose kind passes ``through``)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if kinds.get(n) in wanted:
            return True
        stack.extend(a for a in n.all_input_nodes if through(kinds.get(a)))
    return False


def _scope_of(node, root):
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        return _where(path, getattr(kind, "__name__", str(kind)))
    return _where("", type(root).__name__)


def upstream(result, kinds, through):
    """``result`` and the nodes it depends on through nodes whose kind is in ``through``."""
    live, stack = set(), [result]
    while stack:
        n = stack.pop()
        if n in live:
            continue
        live.add(n)
        stack.extend(a for a in n.all_input_nodes if kinds.get(a) in through)
    return live


def _live_stages(result, kinds):
    """Stage nodes the result depends on (through folded nodes)."""
    return upstream(result, kinds, ("stage", "fold"))


def fx_stages(root, inputs, *, blocks):
    """The stages of ``root`` traced on ``inputs`` (``blocks``: modules granularity).

    Returns
    -------
    list of Stage
    """
    torch = require_torch()
    from planner.torch.stages import Stage

    state = {k: v.detach().clone() for k, v in root.state_dict().items()}
    try:
        graph, values = concrete_trace(root, inputs, blocks=blocks)
    finally:
        with torch.no_grad():
            for k, v in root.state_dict().items():
                v.copy_(state[k])
    kinds = _classify(graph, values, torch)
    result = _check_graph(graph, values, kinds, torch, root)
    kinds[result] = "stage"
    live = _live_stages(result, kinds)
    nodes = [n for n in graph.nodes if kinds.get(n) == "stage" and n in live]
    index = {n: i for i, n in enumerate(nodes)}
    positions = {n: _input_position(n, inputs, values) for n in graph.nodes if kinds.get(n) == "input"}
    names = unique_names([_stage_name(n) for n in nodes])
    stage_list = []
    for n, name in zip(nodes, names):
        builder = _ExprBuilder(root, kinds, values, index, positions, own=n)
        expr = builder.node_expr(n)
        params, buffers = builder.params_and_buffers(torch)
        stage_list.append(Stage(name=name, fn=_StageFn(expr), inputs=tuple(builder.producers),
                                params=params, buffers=buffers))
    return stage_list


def _input_position(node, inputs, values):
    v = values[node]
    return next(k for k, t in enumerate(inputs) if t is v)


def _stage_name(node):
    if node.op == "call_function" and node.target is operator.getitem and hasattr(node.args[0], "name"):
        return f"{node.args[0].name}_{node.args[1]}"
    return node.name


@dataclass(frozen=True)
class _Slot:
    position: int


@dataclass(frozen=True, eq=False)
class _Const:
    value: object


@dataclass(frozen=True, eq=False)
class _Expr:
    call: object
    args: tuple
    kwargs: dict


class _ExprBuilder:
    """The expression of one stage: its node over its producers, folded nodes inlined."""

    def __init__(self, root, kinds, values, index, positions, own):
        self.root, self.kinds, self.values = root, kinds, values
        self.index, self.positions, self.own = index, positions, own
        self.producers = []
        self.memo = {}
        self.modules = []
        self.consts = []

    def node_expr(self, n):
        import torch.fx as fx

        if n in self.memo:
            return self.memo[n]
        if n.op == "call_module":
            self.modules.append(self.root.get_submodule(n.target))
        args = fx.node.map_arg(n.args, self.arg)
        kwargs = fx.node.map_arg(n.kwargs, self.arg)
        expr = _Expr(node_call(n, self.root), args, kwargs)
        self.memo[n] = expr
        return expr

    def arg(self, a):
        kind = self.kinds.get(a)
        if kind == "input" or (kind == "stage" and a is not self.own):
            key = -1 - self.positions[a] if kind == "input" else self.index[a]
            if key not in self.producers:
                self.producers.append(key)
            return _Slot(self.producers.index(key))
        if kind == "fold" or kind == "stage":
            return self.node_expr(a)
        value = self.values.get(a)
        self.consts.append(value)
        return _Const(value)

    def params_and_buffers(self, torch):
        params, buffers, seen = [], [], set()
        for m in self.modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
            buffers.extend(m.buffers())
        real = {id(b) for b in self.root.buffers()}
        for c in self.consts:
            for t in tensors_in(c, torch):
                if isinstance(t, torch.nn.Parameter):
                    if id(t) not in seen:
                        seen.add(id(t))
                        params.append(t)
                elif id(t) in real:  # not a folded constant (a buffer's stride-0 expand)
                    buffers.append(t)
        return params, buffers


def _fill(tree, tensors, memo):
    if isinstance(tree, _Slot):
        return tensors[tree.position]
    if isinstance(tree, _Const):
        return tree.value
    if isinstance(tree, _Expr):
        key = id(tree)
        if key not in memo:
            memo[key] = tree.call(*_fill(tree.args, tensors, memo), **_fill(tree.kwargs, tensors, memo))
        return memo[key]
    if isinstance(tree, tuple):
        return tuple(_fill(t, tensors, memo) for t in tree)
    if isinstance(tree, list):
        return [_fill(t, tensors, memo) for t in tree]
    if isinstance(tree, dict):
        return {k: _fill(v, tensors, memo) for k, v in tree.items()}
    if isinstance(tree, slice):
        return slice(_fill(tree.start, tensors, memo), _fill(tree.stop, tensors, memo), _fill(tree.step, tensors, memo))
    return tree


class _StageFn:
    """``fn(*tensors)`` for one stage: its node's expression with the tensors filled in."""

    def __init__(self, expr):
        self.expr = expr

    def __call__(self, *tensors):
        return _fill(self.expr, tensors, {})
