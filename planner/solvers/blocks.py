"""``hierarchical``: blocks with menus of exact options, chosen by a dynamic program over the blocks.

In the spirit of Rockmate (Zhao et al. 2023) and HiRemate: a real op graph is
long (hundreds of ops) but is a *chain of blocks*: between two blocks only one
tensor crosses.  Each block is small enough for the exact methods, which give
it a menu of Pareto-optimal ways to run it (how much it keeps between its
forward and its backward, how much it peaks, how much it recomputes); a
dynamic program over the chain of blocks, rotor's recurrence (Beaumont et al.
2019) with one choice per option, picks one option per block and which block
outputs to keep as checkpoints.

Blocks are the stretches between the model's cut points (layers that no edge
jumps over, :func:`planner.lowering.splitting_vertices`), merged so that there
are at most :data:`MAX_BLOCKS`; where the layers carry the module path the
capture records (``Layer.module``), also whole modules (:func:`groupings`),
and the better plan wins.  The registry holds small shared tensors
(:mod:`planner.holding`) before this solver runs, which is what gives a
transformer's op graph its cut points.  A model without cut points is one block:
the answer is then the best option of the menu.
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from planner import extras
from planner.errors import InfeasibleError
from planner.lowering import insert_frees, splitting_vertices, store_all_ops
from planner.model import Layer, Model
from planner.schedule import OpKind, Op, backward, forward
from planner.simulate import simulate

__all__ = [
    "hierarchical", "Block", "Option", "model_blocks", "module_blocks", "module_key", "groupings", "block_menu",
    "block_floors", "MAX_BLOCKS", "LEVELS",
]

MAX_BLOCKS = 64
LEVELS = 1000
# Budgets (fractions of the way from the block's least peak to its store-all
# peak) at which the exact methods are asked for a block option.
_MENU_FRACTIONS = (0.0, 0.1, 0.25, 0.4, 0.6, 0.8)
_SMALL_BLOCK = 2  # layers; smaller blocks get no budgets asked
# The first MILP_MENUS distinct blocks of up to MILP_BLOCK_LAYERS layers also
# ask milp (where scipy is installed): its least peak alone, and at
# _MILP_FRACTIONS of the budgets followed by the rest of the model (where it
# finds options that keep less than reforward's and chen-greedy's).  Each
# HiGHS run stops after MILP_BLOCK_NODES branch-and-bound nodes (its work, not
# the clock: the same menu on a quiet or a busy machine) with the best schedule
# found; MILP_BLOCK_SECONDS only caps a call that would run far longer than
# that work takes (its longest run on the benchmarked transformers models:
# about 2 s on a quiet 2-core machine).
MILP_BLOCK_LAYERS = 14
MILP_BLOCK_NODES = 10
MILP_BLOCK_SECONDS = 60.0
MILP_MENUS = 6
_MILP_FRACTIONS = (0.1, 0.4)
_KEEP_SETS = 12  # how many keep-set options a block gets at most
_PROGRAM_OPTIONS = 300  # options of all blocks together the program takes, beyond _MIN_OPTIONS a block
_MIN_OPTIONS = 8
_RETRIES = 5
_INF = math.inf


@dataclass(frozen=True)
class Option:
    """One way to run a block: its forward-phase ops, then (later) its backward-phase ops.

    Sizes are bytes, in the block's own model (its input counted as the model
    input): ``fwd_peak`` the peak of the forward phase, ``kept`` what stays
    after it (the block's output included, its input not), ``bwd_peak`` the
    peak of the backward phase; ``fwd_keep`` and ``bwd_keep`` the same peaks
    when the block's input stays in memory throughout (someone after needs
    it); ``holds_input``: the block's input is still needed after its forward
    phase; ``holds_output``: its output is needed by its own backward phase;
    ``compute`` both phases' time.  Ops use the block's local layer indices
    and carry no frees.
    """

    fwd_peak: int
    kept: int
    bwd_peak: int
    compute: float
    fwd_ops: tuple
    bwd_ops: tuple
    source: str
    fwd_keep: int = 0
    bwd_keep: int = 0
    holds_input: bool = True
    holds_output: bool = True


@dataclass(frozen=True)
class Block:
    """Layers ``start..stop-1`` of the model; only layer ``stop - 1``'s output leaves it."""

    start: int
    stop: int
    model: Model  # the block alone: its input is the previous block's output
    in_bytes: int  # the block's input (the previous block's output, or the model input)
    out_bytes: int
    nosave_peak: int  # peak of forwarding the block without saving anything (input included)
    forward_time: float
    context: Model  # the block between a producer of its input and a reader of its output
    last: bool


def _cut_segments(model):
    """``(start, stop)`` of the stretches between the model's cut points, covering ``0..n``."""
    segments = []
    start = 0
    for c in splitting_vertices(model, input_edges=False):
        segments.append((start, c + 1))
        start = c + 1
    return segments


def _merged(segments, n, max_blocks):
    """``segments`` merged in order to at most about ``max_blocks`` of similar lengths."""
    if len(segments) <= max_blocks:
        return segments
    target = math.ceil(n / max_blocks)
    merged = []
    start = 0
    for _, hi in segments:
        if hi - start >= target or hi == n:
            merged.append((start, hi))
            start = hi
    return merged


def model_blocks(model, max_blocks=MAX_BLOCKS):
    """The blocks of ``model``: stretches between cut points, merged to at most ``max_blocks``.

    Returns a list of ``(start, stop)`` covering ``0..n``.
    """
    return _merged(_cut_segments(model), len(model), max_blocks)


def module_key(path, level):
    """The module a layer of module ``path`` belongs to at ``level``: the path up to its ``level``-th index.

    Container items are named by their index (``transformer.h.0``,
    ``resnet.encoder.stages.1.layers.0``): level 1 is the outermost item (a
    decoder or encoder block, a ResNet stage), level 2 the item inside it (a
    ResNet stage's residual block), and so on; a path with fewer indices
    stops at its last one.  None for a path with no index (embeddings, the
    head, the loss).
    """
    parts = path.split(".") if path else []
    found = [k for k, part in enumerate(parts) if part.isdigit()]
    if not found:
        return None
    return ".".join(parts[: found[min(level, len(found)) - 1] + 1])


def module_levels(model):
    """How many levels of container items the layers' module paths go down (0: no module field)."""
    return max((sum(p.isdigit() for p in layer.module.split(".")) for layer in model.layers if layer.module),
               default=0)


def module_blocks(model, level, max_blocks=MAX_BLOCKS):
    """The blocks of ``model`` by its module structure at ``level`` (see :func:`module_key`).

    The stretches between cut points are joined while consecutive ones hold
    layers of the same module, so a block is a whole module (a decoder
    block, a ResNet stage) wherever the module ends at a cut point; a
    stretch with no module of the level (the embedding, the head) stays a
    block of its own.  Returns a list of ``(start, stop)`` covering ``0..n``.
    """
    layers = model.layers
    groups = []  # [start, stop, keys]
    for lo, hi in _cut_segments(model):
        keys = {module_key(layers[i].module, level) for i in range(lo, hi)} - {None}
        if groups and keys & groups[-1][2]:
            groups[-1][1] = hi
            groups[-1][2] |= keys
        else:
            groups.append([lo, hi, keys])
    return _merged([(lo, hi) for lo, hi, _ in groups], len(model), max_blocks)


def groupings(model, max_blocks=MAX_BLOCKS):
    """The block partitions ``hierarchical`` plans with: ``{name: [(start, stop), ...]}``, all different.

    ``cuts``: every stretch between cut points (:func:`model_blocks`), the
    graph's own partition; ``modules-1``, ``modules-2``, ...: by the module
    structure the capture recorded (:func:`module_blocks`), at each level it
    has, where that differs.
    """
    found = {"cuts": model_blocks(model, max_blocks)}
    for level in range(1, module_levels(model) + 1):
        blocks = module_blocks(model, level, max_blocks)
        if blocks not in found.values():
            found[f"modules-{level}"] = blocks
    return found


def _block(model, start, stop):
    layers = model.layers
    in_bytes = model.input_bytes if start == 0 else layers[start - 1].output_bytes
    local = []
    for i in range(start, stop):
        layer = layers[i]
        reads_prev = start > 0 and (start - 1) in layer.inputs
        local.append(dataclasses.replace(
            layer, inputs=tuple(j - start for j in layer.inputs if j >= start), uses_input=layer.uses_input or reads_prev,
        ))
    sub = Model(name=f"{model.name}[{start}:{stop}]", input_bytes=in_bytes, layers=tuple(local))
    last = stop == len(model)
    return Block(
        context=_context(sub, first=start == 0, last=last),
        last=last,
        start=start,
        stop=stop,
        model=sub,
        in_bytes=in_bytes,
        out_bytes=layers[stop - 1].output_bytes,
        nosave_peak=_nosave_peak(sub),
        forward_time=math.fsum(x.forward for x in local),
    )


def _nosave_peak(sub):
    """Peak of forwarding every layer of ``sub`` without save, each output freed after its last reader."""
    layers = sub.layers
    last = list(range(len(layers)))
    for j, layer in enumerate(layers):
        for i in layer.inputs:
            last[i] = max(last[i], j)
    ending = [[] for _ in layers]
    for i, j in enumerate(last):
        if i != len(layers) - 1:
            ending[j].append(i)
    memory = sub.input_bytes
    peak = memory
    for j, layer in enumerate(layers):
        memory += layer.output_bytes
        peak = max(peak, memory + layer.workspace_forward)
        for i in ending[j]:
            memory -= layers[i].output_bytes
    return peak


def _context(sub, *, first, last):
    """``sub`` between a layer that makes its input and one that reads its output, as in the whole model.

    The block's input becomes the output of a layer ``P`` (its gradient then
    counts from the first backward that reads it, fresh gradients included),
    except for the first block, whose input is the model input; a layer ``Z``
    of size 0 reads the block's output (its backward makes the gradient of the
    output, which the next block's backward makes in the whole model), except
    for the last block, which holds the model's sink.  Both cost no time.
    """
    layers = list(sub.layers)
    off = 0 if first else 1
    shifted = [
        dataclasses.replace(x, inputs=tuple(i + off for i in x.inputs), uses_input=False)
        if not first else x
        for x in layers
    ]
    if not first:
        readers = [k for k, x in enumerate(layers) if x.uses_input]
        shifted = [
            dataclasses.replace(x, inputs=((0,) if k in readers else ()) + x.inputs)
            for k, x in enumerate(shifted)
        ]
        head = Layer(name="<input>", inputs=(), forward=0.0, backward=0.0, output_bytes=sub.input_bytes,
                     needs_inputs=False, uses_input=True)
        shifted = [head] + shifted
    if not last:
        shifted.append(Layer(name="<next>", inputs=(len(shifted) - 1,), forward=0.0, backward=0.0,
                             output_bytes=0, needs_inputs=False))
    return Model(name=sub.name, input_bytes=sub.input_bytes if first else 0, layers=tuple(shifted))


def _option(block, ops, source, split=None):
    """The :class:`Option` of a complete schedule ``ops`` of a block's model, measured in its context.

    Its forward phase is ``ops[:split]``, by default every op before the first backward.
    """
    ops = [op for op in ops if op.kind is not OpKind.FREE]
    if split is None:
        split = next(k for k, op in enumerate(ops) if op.kind is OpKind.BACKWARD)
    ctx = block.context
    off = 0 if block.start == 0 else 1
    body = _shifted(ops, off)
    head = [] if off == 0 else [forward(0, True)]
    tail = [] if off == 0 else [backward(0)]
    z = len(ctx.layers) - 1
    nxt = [] if block.last else [forward(z, True), backward(z)]
    full = head + body[:split] + nxt + body[split:] + tail
    lowered = insert_frees(ctx, full)
    sim = simulate(ctx, lowered, timeline=True)
    if not sim.valid:  # pragma: no cover - the exact methods emit valid schedules
        return None
    if block.last:
        first = next(k for k, op in enumerate(lowered) if op.kind is OpKind.BACKWARD)
    else:  # the forward phase ends before Z's forward
        first = next(k for k, op in enumerate(lowered) if op.kind is OpKind.FORWARD and op.layer == z)
    held, saved = set(), set()
    for op in lowered[:first]:
        if op.kind is OpKind.FORWARD:
            held.add(op.layer)
            if op.save:
                saved.add(op.layer)
        elif op.kind is OpKind.FREE:
            held.discard(op.layer)
    holds_input = not off or 0 in held
    if off:
        held.discard(0)  # the block's input is not the block's to keep
    layers = ctx.layers
    kept = sum(layers[i].output_bytes for i in held) + sum(layers[i].saved_bytes for i in saved)
    timeline = sim.timeline
    # the same memory with the block's input kept to the end (a caller needs it)
    freed = next((k for k, op in enumerate(lowered) if op.kind is OpKind.FREE and op.layer == 0), None)
    keep = list(timeline)
    if off and freed is not None:
        for k in range(freed, len(keep)):
            keep[k] += block.in_bytes
    out = z - 1 if not block.last else len(layers) - 1
    out_freed = next((k for k, op in enumerate(lowered) if op.kind is OpKind.FREE and op.layer == out), None)
    first_backward = next(k for k, op in enumerate(lowered) if op.kind is OpKind.BACKWARD)
    holds_output = block.last or out_freed is None or out_freed > first_backward
    return Option(
        fwd_peak=max(timeline[:first]),
        kept=kept,
        bwd_peak=max(timeline[first:]),
        compute=sim.compute,
        fwd_ops=tuple(ops[:split]),
        bwd_ops=tuple(ops[split:]),
        source=source,
        fwd_keep=max(keep[:first]),
        bwd_keep=max(keep[first:]),
        holds_input=holds_input,
        holds_output=holds_output,
    )


def _exact_methods(sub):
    """The solvers asked for options: (name, fn(model, budget) -> ops)."""
    from planner.solvers.chen import chen_greedy
    from planner.solvers.reforward import reforward

    methods = [("reforward", reforward), ("chen-greedy", chen_greedy)]
    if sub.is_chain:
        from planner.solvers.dp import dp

        methods.append(("dp", dp))
    return methods


def block_menu(block, milp=True):
    """Pareto-optimal options of a :class:`Block`: store-all, then the exact methods at several budgets.

    Two families of budgets: on the block alone, from its least peak to its
    store-all peak (options that peak less); and on the block followed by a
    layer whose forward needs as much workspace as the block keeps in
    store-all, standing for the rest of the model (options that keep less
    between their forward and their backward, the memory the blocks after
    them run in).  With ``milp``, a block of at most
    :data:`MILP_BLOCK_LAYERS` layers also gets milp's answers (the best of
    :data:`MILP_BLOCK_NODES` nodes) at two budgets of the second family
    (:func:`_milp_option`) and at the least peak milp finds for it alone,
    when below reforward's (:func:`_milp_least`);
    a block that is not the last also gets its keep sets
    (:func:`_keep_sets`).  Returns a list of :class:`Option`, none
    dominated by another in (``max(fwd_peak, bwd_peak)``, ``kept``,
    ``compute``).
    """
    from planner.solvers.reforward import reforward

    sub = block.model
    plain = store_all_ops(sub)
    options = [_option(block, plain, "store-all")]
    low_ops, _ = reforward(sub, budget=None)
    options.append(_option(block, low_ops, "reforward"))
    # the budgets the methods are asked for are the block's own peaks (alone)
    top = _measure(sub, plain)[0]
    bottom = _measure(sub, low_ops)[0]
    if len(sub) <= _SMALL_BLOCK:
        # a block of one or two layers has few schedules: store-all, its least
        # peak, and forwarding it without save (the program's own choice)
        return _pareto([o for o in options if o is not None])
    asks = [(sub, int(bottom + f * (top - bottom))) for f in _MENU_FRACTIONS]
    if not block.last:
        rest = options[0].kept
        after = _followed(sub, rest)
        asks += [(after, sub.input_bytes + rest + int(f * rest)) for f in _MENU_FRACTIONS]
    milp_asks = set()
    if milp and not block.last and len(sub) <= MILP_BLOCK_LAYERS:
        milp_asks = {asks[-len(_MENU_FRACTIONS) + k] for k, f in enumerate(_MENU_FRACTIONS) if f in _MILP_FRACTIONS}
    for target, budget in asks:
        starts = []
        for name, fn in _exact_methods(target):
            try:
                ops, _ = fn(target, budget=budget)
            except InfeasibleError:
                continue
            starts.append((name, ops))
        if (target, budget) in milp_asks:
            starts.extend(_milp_option(target, budget, starts))
        for name, ops in starts:
            ops = [op for op in ops if op.kind is not OpKind.FREE]
            split = next(k for k, op in enumerate(ops) if op.layer == len(sub) or op.kind is OpKind.BACKWARD)
            found = _option(block, [op for op in ops if op.layer < len(sub)], name, split)
            if found is not None:
                options.append(found)
    if milp and len(sub) <= MILP_BLOCK_LAYERS:
        for name, ops in _milp_least(sub, bottom):
            options.append(_option(block, ops, name))
    if not block.last:
        for ops, split in _keep_sets(sub):
            options.append(_option(block, ops, "keep-set", split))
    return _pareto([o for o in options if o is not None])


def _keep_sets(sub):
    """``[(ops, split)]``: schedules of ``sub`` that keep a set of layers and recompute the rest once.

    The forward phase runs every layer, saving those of the set; the backward
    phase forwards the others again with save, then runs every backward; or
    forwards each run of consecutive others again just before the backward
    of its last layer (:func:`_by_runs`), which peaks less.
    The sets are the layers that cost the least time per byte they keep:
    for each ``k``, the ``k`` layers of the best ratio (the block's output
    always kept).
    """
    layers = sub.layers
    n = len(layers)
    read = [layer.needs_output for layer in layers]
    for layer in layers:
        if layer.needs_inputs:
            for i in layer.inputs:
                read[i] = True
    keeps = [layers[i].saved_bytes + (layers[i].output_bytes if read[i] else 0) for i in range(n - 1)]
    order = sorted(range(n - 1), key=lambda i: (-(layers[i].forward / keeps[i]) if keeps[i] else -math.inf, i))
    counts = sorted({round(k * (n - 1) / _KEEP_SETS) for k in range(_KEEP_SETS)}) if n - 1 > _KEEP_SETS \
        else range(n - 1)
    found = []
    for count in counts:
        kept = set(order[:count]) | {n - 1}
        fwd = [forward(i, i in kept) for i in range(n)]
        again = [forward(i, True) for i in range(n) if i not in kept]
        found.append((fwd + again + [backward(i) for i in reversed(range(n))], n))
        found.append((fwd + _by_runs(n, kept), n))
    return found


def _by_runs(n, kept):
    """Backward-phase ops: each run of consecutive layers not in ``kept`` forwarded again before its backwards."""
    ops = []
    i = n - 1
    while i >= 0:
        if i in kept:
            ops.append(backward(i))
            i -= 1
            continue
        start = i
        while start > 0 and start - 1 not in kept:
            start -= 1
        ops.extend(forward(j, True) for j in range(start, i + 1))
        ops.extend(backward(j) for j in range(i, start - 1, -1))
        i = start - 1
    return ops


def _milp_least(sub, bottom):
    """``[("milp", ops)]``: a schedule of ``sub`` at the least peak milp finds, when below ``bottom``; else []."""
    from planner.solvers.milp import milp

    try:
        milp(sub, budget=1, time_limit=MILP_BLOCK_SECONDS, node_limit=MILP_BLOCK_NODES)
    except InfeasibleError as exc:
        least = exc.least_bytes
    else:  # pragma: no cover - no block fits in one byte
        return []
    if least is None or least >= bottom:
        return []
    return _milp_option(sub, least, [])


def _milp_option(target, budget, starts):
    """``[("milp", ops)]``: milp's best schedule of ``target`` at ``budget``, warm-started; [] when none.

    HiGHS stops after :data:`MILP_BLOCK_NODES` nodes, proven or not: its
    work decides the answer, not the clock, so the menu does not depend on
    how busy the machine is.
    """
    from planner.solvers.milp import milp

    try:
        ops, _ = milp(target, budget=budget, time_limit=MILP_BLOCK_SECONDS, node_limit=MILP_BLOCK_NODES,
                      warm_starts=starts)
    except InfeasibleError:
        return []
    return [("milp", ops)]


def block_floors(model):
    """``[((start, stop), bytes)]``: per block between cut points, the least peak of its menu in the model.

    Running the block forward and backward with one option of its menu, the
    model input (and the block's input and its output's gradient) held: no
    schedule of ``hierarchical``'s class goes below the largest of them.
    """
    found = []
    for start, stop in model_blocks(model):
        block = _block(model, start, stop)
        least = min(max(o.fwd_peak, o.bwd_peak) for o in block_menu(block))
        found.append(((start, stop), least + (0 if start == 0 else model.input_bytes)))
    return found


def _followed(sub, workspace):
    """``sub`` followed by a layer of no size or time reading its last output, whose forward needs ``workspace``."""
    z = Layer(name="<rest>", inputs=(len(sub) - 1,), forward=0.0, backward=0.0, output_bytes=0,
              needs_inputs=False, workspace_forward=workspace)
    return Model(name=sub.name, input_bytes=sub.input_bytes, layers=sub.layers + (z,))


def _pareto(options):
    def key(o):
        return (max(o.fwd_peak, o.bwd_peak), max(o.fwd_keep, o.bwd_keep), o.kept, o.holds_input, o.holds_output,
                o.compute)

    unique = {}
    for o in options:
        unique.setdefault(key(o), o)
    keys = sorted(unique)
    kept = []
    for k in keys:
        if not any(all(a <= b for a, b in zip(p, k)) for p in kept):
            kept.append(k)
    return [unique[k] for k in kept]


def _thinned(menu, cap):
    """At most ``cap`` options of a Pareto ``menu``: the least compute, the least peak, the least kept, and evenly between.

    The program's time grows with the options of all blocks; a model of many
    blocks keeps fewer per block (:data:`_PROGRAM_OPTIONS` in all).
    """
    if len(menu) <= cap:
        return menu
    ends = {
        min(range(len(menu)), key=lambda k: (menu[k].compute, k)),
        min(range(len(menu)), key=lambda k: (max(menu[k].fwd_peak, menu[k].bwd_peak), k)),
        min(range(len(menu)), key=lambda k: (menu[k].kept, k)),
    }
    rest = [k for k in range(len(menu)) if k not in ends]
    room = cap - len(ends)
    picked = ends | {rest[round(j * (len(rest) - 1) / max(1, room - 1))] for j in range(room)}
    return [menu[k] for k in sorted(picked)]


def _menu_key(sub):
    return (sub.input_bytes, tuple(
        (x.inputs, x.uses_input, x.output_bytes, x.saved_bytes, x.needs_inputs,
         x.needs_output, x.workspace_forward, x.workspace_backward)
        for x in sub.layers
    ))


class _Plan:
    """The blocks of a model with their menus, and the dynamic program over them."""

    def __init__(self, model, cache, blocks=None):
        self.model = model
        self.blocks = [_block(model, a, b) for a, b in (model_blocks(model) if blocks is None else blocks)]
        self.menus = []
        for block in self.blocks:
            # blocks of the same structure and sizes (a transformer's layers,
            # whose profiled times differ a little) share the ops of one menu,
            # each measured with its own times
            key = _menu_key(block.context)
            if key not in cache:
                # the first MILP_MENUS distinct blocks (in the model's order) ask milp
                asked = cache.setdefault("milp menus", [0])
                cache[key] = block_menu(block, milp=asked[0] < MILP_MENUS and not extras.missing("scipy"))
                asked[0] += _SMALL_BLOCK < len(block.model) <= MILP_BLOCK_LAYERS and not block.last
                self.menus.append(cache[key])
            else:  # same sizes, so the same peaks: only the compute changes
                layers = block.model.layers
                same = [
                    dataclasses.replace(o, compute=math.fsum(
                        layers[op.layer].forward if op.kind is OpKind.FORWARD else layers[op.layer].backward
                        for op in o.fwd_ops + o.bwd_ops
                    ))
                    for o in cache[key]
                ]
                self.menus.append(_pareto(same))
        cap = max(_MIN_OPTIONS, _PROGRAM_OPTIONS // len(self.blocks))
        self.menus = [_thinned(menu, cap) for menu in self.menus]

    def _needs(self, unit):
        """The program's quantities in units of ``unit`` bytes, each size rounded up.

        ``a_in[s]``: block s's input; ``delta[s]``: the gradient of its output
        (0 for the last block, whose gradient the loss makes); ``nosave[s]``:
        the peak of its forward without save; ``needs[s][o]``: option o's
        ``(forward peak, backward peak, shift, compute, keeps output)`` for
        ``keep`` 0 and 1 (``needs[s][o][keep]``): with ``keep`` the block's
        input stays in memory to the end (a caller needs it); shift is what
        stays while the blocks after it run: its input if it or the caller
        needs it, and what it keeps beyond its output.
        """
        k = len(self.blocks)
        up = lambda x: -(-int(x) // unit)  # noqa: E731
        self.delta = [up(b.out_bytes) if s < k - 1 else 0 for s, b in enumerate(self.blocks)]
        self.a_in = [up(b.in_bytes) for b in self.blocks]
        table = []
        for s, (block, menu) in enumerate(zip(self.blocks, self.menus)):
            rows = []
            for o in menu:
                extra = up(o.kept - block.out_bytes)
                rows.append(tuple(
                    (up(o.fwd_keep if keep else o.fwd_peak), up(o.bwd_keep if keep else o.bwd_peak),
                     (self.a_in[s] if keep or o.holds_input else 0) + extra, o.compute, int(o.holds_output))
                    for keep in (0, 1)
                ))
            table.append(rows)
        self.needs = table
        self.nosave = [up(b.nosave_peak) for b in self.blocks]
        self.unit = unit

    def solve_table(self, levels, unit):
        """Fill ``opt[keep, s, t]`` (least compute per available memory level) and the choices.

        Returns the row of the whole model (the model input is always kept).
        """
        self._needs(unit)
        k = len(self.blocks)
        size = levels + 1
        opt = np.full((2, k, k, size), _INF)
        choice = np.full((2, k, k, size), -1, dtype=np.int64)
        columns = np.arange(size)
        forward_time = [b.forward_time for b in self.blocks]
        for length in range(1, k + 1):
            for s in range(0, k - length + 1):
                t = s + length - 1
                delta = self.delta[t]
                for keep in (0, 1):
                    best = opt[keep, s, t]
                    pick = choice[keep, s, t]
                    for o, rows in enumerate(self.needs[s]):
                        fwd, bwd, shift, cost, keeps_out = rows[keep]
                        if s == t:
                            thr = max(fwd + delta, bwd)
                            if thr < size:
                                cand = np.full(size, _INF)
                                cand[thr:] = cost
                                better = cand < best
                                best[better] = cand[better]
                                pick[better] = o
                            continue
                        thr = max(fwd + delta, bwd, shift)
                        if thr >= size:
                            continue
                        cand = np.full(size, _INF)
                        cand[thr:] = cost + opt[keeps_out, s + 1, t, thr - shift: size - shift]
                        better = cand < best
                        best[better] = cand[better]
                        pick[better] = o
                    if s < t and self.a_in[s] < size:
                        # forward s..s2-1 without save (a row per s2 = s+1..t), then s2..t, then s..s2-1
                        a = self.a_in[s]
                        lows, times = [], []
                        thr = self.nosave[s] + delta
                        ftime = 0.0
                        for s2 in range(s + 1, t + 1):
                            ftime += forward_time[s2 - 1]
                            if s2 - 1 > s:
                                thr = max(thr, a + self.nosave[s2 - 1] + delta)
                            lows.append(max(thr, a))
                            times.append(ftime)
                        right = np.full((t - s, size), _INF)
                        right[:, a:] = opt[0, s + 1: t + 1, t, : size - a]
                        cand = right + opt[keep, s, s:t, :] + np.array(times)[:, None]
                        cand[columns[None, :] < np.array(lows)[:, None]] = _INF
                        row = np.argmin(cand, axis=0)
                        value = cand[row, columns]
                        better = value < best
                        best[better] = value[better]
                        pick[better] = 100000 + s + 1 + row[better]
        self.opt, self.choice = opt, choice
        return opt[1, 0, k - 1]

    def ops(self, level):
        """Forward/backward ops of the model for the table's answer at ``level``."""
        result = []
        self._emit(0, len(self.blocks) - 1, level, 1, result)
        return result

    def _emit(self, s, t, m, keep, out):
        code = int(self.choice[keep, s, t, m])
        if code < 0:  # pragma: no cover - only called where the table is finite
            raise AssertionError("no choice")
        if code >= 100000:
            s2 = code - 100000
            for b in self.blocks[s:s2]:
                out.extend(forward(i, False) for i in range(b.start, b.stop))
            self._emit(s2, t, m - self.a_in[s], 0, out)
            self._emit(s, s2 - 1, m, keep, out)
            return
        block = self.blocks[s]
        option = self.menus[s][code]
        out.extend(_shifted(option.fwd_ops, block.start))
        if s < t:
            _, _, shift, _, keeps_out = self.needs[s][code][keep]
            self._emit(s + 1, t, m - shift, keeps_out, out)
        out.extend(_shifted(option.bwd_ops, block.start))


def _shifted(ops, start):
    return [Op(op.kind, op.layer + start, op.save) for op in ops]


def _measure(model, ops):
    sim = simulate(model, insert_frees(model, ops))
    return sim.peak_bytes, sim.compute


def _least(plan, model, top):
    """The least-memory schedule of the plan: (peak, compute, ops), on a grid fixed by the model alone."""
    unit = max(1, -(-top // LEVELS))
    row = plan.solve_table(2 * LEVELS, unit)
    finite = np.flatnonzero(np.isfinite(row))
    best = None
    for level in finite[:3]:  # the lowest levels; a coarse one may replay lower
        ops = plan.ops(int(level))
        peak, compute = _measure(model, ops)
        if best is None or (peak, compute) < best[:2]:
            best = (peak, compute, ops)
    return best


def hierarchical(model, *, budget=None, shared=None):
    """Least-compute schedule from one option per block, chosen by a dynamic program over the blocks.

    Parameters
    ----------
    model : planner.model.Model
        Any model; its cut points make the blocks (one block when it has
        none), and its layers' module paths other partitions (:func:`groupings`).
    budget : int or None, keyword-only
        Activation budget in bytes; None: store-all.
    shared : dict or None, keyword-only
        Kept across calls on the same model (``sweep``): the block menus and
        the least-memory schedule are computed once.

    Returns
    -------
    ops : list of Op
        Forward and backward ops; the registry inserts the frees.
    params : dict
        ``blocks`` (how many), ``options`` (menu sizes summed over the
        blocks), ``grouping`` (the partition of the plan: ``cuts``,
        ``modules-1``, ...).

    Raises
    ------
    InfeasibleError
        Below the peak of the plan's least-memory schedule (``least_bytes``),
        which does not depend on the budget asked.

    Notes
    -----
    The block menus come from the exact methods on each block alone
    (store-all, reforward's least peak, and reforward, chen-greedy and, on
    chain blocks, dp, at six budgets between the block's least and
    store-all peaks, and at six more with the block followed by a layer
    standing for the rest of the model; keep sets (:func:`_keep_sets`); milp's
    best schedules within :data:`MILP_BLOCK_NODES` nodes at two of the latter budgets on the first
    :data:`MILP_MENUS` distinct blocks of at most :data:`MILP_BLOCK_LAYERS`
    layers), each measured by the simulator in the block's context, kept
    when Pareto-optimal; blocks of one structure (a transformer's layers)
    share one menu.  Each partition of :func:`groupings` gets its plan; the
    least memory is the least of theirs, and at a budget the least compute
    wins (the first partition on ties).  The dynamic program is rotor's
    over the k blocks with memory on a grid of about :data:`LEVELS` levels,
    with one more bit, whether the first block's input must stay to the end:
    for blocks s..t with the input of s and the gradient of t's output held,
    either run block s's forward with an option o, solve s+1..t (keeping s's
    output if o's backward reads it), then o's backward; or forward blocks
    s..s'-1 without saving, solve s'..t, then s..s'-1.  Its costs round
    every size up, so its schedules fit (``tests/test_hierarchical.py``
    checks that they never count less than the simulator); the schedule is
    replayed and the program's memory searched between what fits and what
    does not.  O(k^3 levels) for the program, a few replays.  Schedules of
    the plan are persistent at the block level and each block runs one
    option of its menu: the class that
    ``tests/test_hierarchical.py`` searches exhaustively.

    References
    ----------
    X. Zhao, T. Le Hellard, L. Eyraud-Dubois, J. Gusak, O. Beaumont.
    "Rockmate: an Efficient, Fast, Automatic and Generic Tool for
    Re-materialization in PyTorch", ICML 2023.  O. Beaumont, L. Eyraud-Dubois,
    J. Hermann, A. Joly, A. Shilova. "Optimal checkpointing for heterogeneous
    chains", arXiv:1911.13214, 2019.
    """
    plain = store_all_ops(model)
    top, base_compute = _measure(model, plain)
    if budget is None or top <= budget:
        return plain, {"blocks": 0, "options": 0}
    shared = {} if shared is None else shared
    cache = shared.setdefault("menus", {})
    plans = shared.get("plans")
    if plans is None or plans[0][1].model is not model:
        plans = []
        for name, blocks in groupings(model).items():
            plan = _Plan(model, cache, blocks)
            least = _least(plan, model, top)
            if least is None or least[0] >= top:
                least = (top, base_compute, plain)
            plans.append((name, plan, least))
        shared["plans"] = plans
    least_peak = min(least[0] for _, _, least in plans)
    if budget < least_peak:
        raise InfeasibleError(
            f"hierarchical needs at least {least_peak} bytes of activation memory, "
            f"more than the budget of {budget} bytes",
            least_bytes=least_peak,
        )
    best = None
    for name, plan, least in plans:  # the first grouping wins ties
        found = _at_budget(plan, model, budget, least)
        if found is not None and (best is None or found[:2] < best[0][:2]):
            best = (found, name, plan)
    (_, _, ops), name, plan = best
    return ops, {"blocks": len(plan.blocks), "options": sum(len(m) for m in plan.menus), "grouping": name}


def _at_budget(plan, model, budget, least):
    """``(compute, peak, ops)``: the plan's least-compute schedule within ``budget``, or None."""
    least_peak, least_compute, least_ops = least
    best = (least_compute, least_peak, least_ops) if least_peak <= budget else None
    unit = max(1, -(-budget // LEVELS))
    # The program's sizes are rounded up and count what a block's context may
    # hold, so its answer at the budget usually peaks below it: search the
    # program's memory between what fits and what does not.
    fits, fails = None, None
    target = budget
    for _ in range(_RETRIES):
        levels = min(int(target // unit), 2 * LEVELS)
        row = plan.solve_table(levels, unit)
        if not np.isfinite(row[-1]):
            break
        ops = plan.ops(levels)
        peak, compute = _measure(model, ops)
        if peak <= budget:
            fits = target
            if best is None or (compute, peak) < best[:2]:
                best = (compute, peak, ops)
            if budget - peak < unit or levels == 2 * LEVELS:
                break
            step = target + (budget - peak)
        else:
            fails = target
            step = target - (peak - budget)
        if fits is not None and fails is not None:
            step = (fits + fails) // 2
        if step in (fits, fails) or step <= 0:
            break
        target = step
    return best
