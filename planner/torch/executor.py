"""Train with an edgeplan schedule inside an ordinary PyTorch training loop.

:class:`ScheduledModule` wraps the user's ``nn.Module`` with a schedule and the
model file it was planned for::

    wrapped = ScheduledModule(net, "net.json", "net-schedule.json")
    for x, y in data:
        out = wrapped(x)                 # the schedule's forward part
        loss_fn(out, y).backward()       # the rest of the schedule
        optimizer.step(); optimizer.zero_grad()

Calling it runs the schedule's ops up to the sink's backward (the forward
part) and returns the sink's output, or the loss when the model file's sink is
the loss (``wrapped(x, target=y)``).  The returned tensor enters autograd
through a node whose backward takes the gradient that reaches it and queues
the rest of the ops, run by the autograd engine at the end of the same
``backward()`` call, when the user's loss graph has been released.  Parameter
gradients accumulate into ``.grad`` as usual, so the user's optimizer,
gradient accumulation over micro-batches and frozen parameters work as they
do under plain autograd.  ``model.eval()`` or ``torch.no_grad()`` run the
plain forward of the stages.

How the ops run (the same rules as ``edgeplan verify``, which runs on this
code).  A schedule that is plain autograd's (every layer one forward, with
save, no paging: store-all) runs as plain autograd: the stages in its order,
each reading its producers' outputs with their graph, and the caller's
``backward()`` runs every backward (see :func:`_plain_order`).  Otherwise:

- ``forward L save=true``: L runs on its inputs entered into autograd as
  leaves that require grad (a producer's output; where a backward does not
  read them, the leaves let go of the data after the forward), or, in a plan
  that pages, through a node that holds no tensor and hands the input
  gradients back; only the graph's gradient edge is kept, not the output, so
  that ``free`` really drops the output;
- ``forward L save=false``: L runs under ``torch.no_grad()``;
- ``backward L``: the autograd engine from L's gradient edge with L's output
  gradient (in a segment, see below, made inside the backward so that the
  engine owns it and frees it as soon as it is used); the input gradients go
  to their producers (summed when a producer has several consumers);
- ``free L``: drops L's output;
- a run of backward ops with only frees between them, where each stage's
  producer is the next one backwarded, is one autograd segment: at its
  forward the consumer read the producer's output with its graph (no entry
  node), and one ``backward()`` call runs the run's backwards in the
  schedule's order, as plain autograd does (see :func:`_segments`); a plan
  that pages records has no segments (with them, paging the record of the
  sink's producer measured 4% over the prediction);
- ``pageout L`` / ``pagein L`` (SPEC section 5): L's output's raw bytes to a
  file in a temporary directory (CPU) or to pinned host memory (CUDA), and
  back into a new tensor that takes the output's place, on a background
  thread beside compute (:class:`planner.torch.pager.Pager`); the directory
  goes when the step ends, also on an error or an interrupt.
- ``pageout_saved L`` / ``drop_saved L`` / ``pagein_saved L`` (docs/format.md,
  "Paging backward records"): L's forward with save ran under
  ``torch.autograd.graph.saved_tensors_hooks`` that put each saved tensor in
  a slot (:class:`_Record`); its saved tensors other than the held outputs
  it reads (which its backward reads from the step again) go to one file on
  the copy engine, the slots are emptied once written, and read back into
  new tensors that L's backward waits for.

A recomputed stage that draws random numbers (``Stage.random``, or, without
that flag, a stage whose first forward moved the RNG state) starts from the
RNG state of its first forward (kept as bytes, outside the allocator), so
dropout masks match; no other stage keeps a snapshot.  A recomputed stage's
buffers (BatchNorm running statistics) are put back to what they were before its first forward
and, after it, to what the first forward left, so they are updated once per
step.  A recomputation puts the RNG state back as it found it, so the step
leaves it where a plain step does.

The sink's output is the caller's once returned: the executor keeps no
reference to it, so a loss outside the model frees it as plain autograd does.
"""

import os
import warnings

from planner.errors import ModelError, ScheduleError
from planner.model import Model, load_model
from planner.schedule import RECORD_KINDS, OpKind, Schedule, load_schedule
from planner.torch.capture import OWN_LOSS, build_stages, document_output
from planner.torch.inputs import ExampleInputs, flat_inputs, require_torch
from planner.torch.loss import make_loss, model_loss
from planner.torch.measure import compile_backend, compiled_stages, seed_function
from planner.torch.pager import Pager

torch = require_torch()
nn = torch.nn

__all__ = ["ScheduledModule", "StepRunner", "plain_forward", "compile_mismatch"]


class _Plan:
    """What a schedule's ops need, computed once: the split point, recomputed stages, early frees.

    It keeps the stages it was computed for (``stages``).  ``layers`` (the
    model file's) says what each backward reads; without them the step never
    runs as plain autograd (see :func:`_plain_order`).
    """

    def __init__(self, stages, ops, layers=None):
        self.stages = stages
        self.ops = tuple(ops)
        self.sink = len(stages) - 1
        self.split = next(
            (n for n, op in enumerate(self.ops) if op.kind is OpKind.BACKWARD), len(self.ops)
        )
        counts = {}
        for op in self.ops:
            if op.kind is OpKind.FORWARD:
                counts[op.layer] = counts.get(op.layer, 0) + 1
        self.recomputed = frozenset(i for i, c in counts.items() if c > 1)
        # Whether a recomputed stage draws random numbers: Stage.random when capture
        # says, else learnt at its first run (did the RNG state move?).
        self.random = {
            i: bool(stages[i].random) for i in self.recomputed if getattr(stages[i], "random", None) is not None
        }
        # Stages whose record is paged: their forward with save packs what it saves (_Record).
        self.paged_records = frozenset(op.layer for op in self.ops if op.kind is OpKind.PAGEOUT_SAVED)
        for n, op in enumerate(self.ops):  # SPEC section 3: the loss reads the sink's output
            if op.layer != self.sink or op.kind not in (OpKind.FREE, OpKind.BACKWARD):
                continue
            if op.kind is OpKind.FREE:
                raise ScheduleError(
                    f"op #{n} (free {stages[self.sink].name}): the sink's output is read by the "
                    "loss until the sink's backward",
                    index=n,
                    layer=stages[self.sink].name,
                )
            break
        self.reads, self.members, self.frees, self.unseeded = _segments(stages, self.ops)
        # The stages whose backward call runs other stages' backwards (a segment's
        # top and its members) are seeded through a node that makes the gradient
        # inside the call; any other backward call takes its gradient as it is.
        self.seeded = frozenset(
            self.ops[k].layer for top, more in self.members.items() for k in (top, *more)
        )
        # A saved stage reads its producers' outputs through plain autograd
        # leaves (see _enter), except in a plan that pages: a leaf's
        # AccumulateGrad node holds it for as long as the graph lives.
        self.paged = any(op.kind in (OpKind.PAGEOUT, OpKind.PAGEIN, *RECORD_KINDS) for op in self.ops)
        self.leaves = layers is not None and not self.paged
        # A stage whose backward reads its inputs keeps them in memory until its
        # backward (SPEC section 3: no free while it is saved); any other lets
        # go of its leaves' data once its forward has run.
        self.keeps_inputs = frozenset(() if layers is None else (i for i, l in enumerate(layers) if l.needs_inputs))
        self.plain = None if layers is None else _plain_order(stages, self.ops, layers)
        self.checked = set()  # stages whose output size was checked against the model file, for:
        self.checked_for = None  # the shapes and dtypes of the inputs they were checked with
        self.last_read = {}  # producer -> the last stage (in the plain order) that reads it
        for i in self.plain or ():
            for p in stages[i].inputs:
                if p >= 0:
                    self.last_read[p] = i
        # A free of L among the frees that directly follow L's backward is done
        # as autograd does it: the output goes as soon as the backward used it.
        self.early_free = {}
        for n, op in enumerate(self.ops):
            if op.kind is not OpKind.BACKWARD:
                continue
            k = n + 1
            while k < len(self.ops) and self.ops[k].kind is OpKind.FREE:
                if self.ops[k].layer == op.layer:
                    self.early_free[n] = k
                    break
                k += 1


def _plain_order(stages, ops, layers):
    """The forward ops' layers when the schedule is what plain autograd runs, else None.

    That is a schedule where every layer runs one forward, with save, nothing
    pages, and each output is freed where autograd lets it go: after the
    last forward that reads it, or, when a backward reads it (a consumer's
    ``needs_inputs``, its own ``needs_output``), after the last of those
    backwards, with nothing but frees in between.  Its forwards all come
    before its first backward (each layer leads to the sink, whose backward
    is the first).  The step then runs the stages as plain autograd does,
    each reading its producers' outputs with their graph, and the caller's
    ``backward()`` runs every backward in one call
    (:meth:`StepRunner.forward_part`): no op of the executor's own runs, and
    memory is the schedule's.  A schedule that holds an output longer
    (``chen-greedy`` with memory to spare) runs op by op, as planned.
    """
    forwards = [op for op in ops if op.kind is OpKind.FORWARD]
    if not all(op.save for op in forwards) or sorted(op.layer for op in forwards) != list(range(len(stages))):
        return None
    if any(op.kind not in (OpKind.FORWARD, OpKind.BACKWARD, OpKind.FREE) for op in ops):
        return None
    at = {}
    for n, op in enumerate(ops):
        at[op.kind, op.layer] = n
    consumers = {}
    for c, stage in enumerate(stages):
        for p in stage.inputs:
            if p >= 0:
                consumers.setdefault(p, set()).add(c)
    for i in range(len(stages) - 1):  # the sink's output is the caller's
        readers = consumers.get(i, ())
        due = [at[OpKind.FORWARD, c] for c in readers]
        due += [at[OpKind.BACKWARD, c] for c in readers if layers[c].needs_inputs]
        due += [at[OpKind.BACKWARD, i]] if layers[i].needs_output else []
        free = at.get((OpKind.FREE, i))
        if free is None or any(ops[k].kind is not OpKind.FREE for k in range(max(due, default=0) + 1, free)):
            return None
    return tuple(op.layer for op in forwards)


def _segments(stages, ops):
    """Which saved stages run their backwards in one ``backward()`` call.

    Returns ``(reads, members, frees, unseeded)``: ``reads[n]``, the producer
    whose output the forward-save op ``n`` reads directly, with its autograd
    graph, instead of through an entry node; ``members[k]``, the backward ops
    (indices) that run inside the call of the backward op ``k``, the
    segment's top; ``frees[k]``, the free ops among them, done before that
    call; ``unseeded``, the forward-save ops whose stage needs no seed of its
    own (a member whose only consumer is the stage above it).

    A segment is a run of backward ops with nothing but frees between them.
    A stage reads a producer directly when the producer's output still
    carries the graph of its saved forward and the producer's backward comes
    right after the stage's, so that the call runs the backwards in the
    schedule's order, and when the stage is the producer's only consumer
    whose backward is not done before the segment starts: the producer's node
    then gets its whole gradient before it runs, and the gradients of its
    earlier consumers are added in place into the one the segment sends it,
    as SPEC section 3 counts them.  The frees are done before the call: what
    a backward still reads is held by the graph, and autograd frees it as
    soon as that backward has run, where the schedule frees it.  One call
    over a segment is what plain autograd runs.
    """
    consumers = {}
    for c, stage in enumerate(stages):
        for p in stage.inputs:
            consumers.setdefault(p, []).append(c)
    live, candidates, last, feeds = {}, {}, {}, {}
    for n, op in enumerate(ops):
        if op.kind is OpKind.FORWARD and op.save:
            candidates[n] = {p for p in stages[op.layer].inputs if p in live}
            live[op.layer] = last[op.layer] = n
        elif op.kind in (OpKind.FREE, OpKind.BACKWARD):
            live.pop(op.layer, None)
            if op.kind is OpKind.BACKWARD and op.layer in last:
                feeds[n] = last[op.layer]  # the forward-save op whose saved data it uses
    backs = [k for k, op in enumerate(ops) if op.kind is OpKind.BACKWARD]
    back_at = {ops[k].layer: k for k in backs}
    reads, members, frees, unseeded = {}, {}, {}, set()
    top = None
    for k, nxt in zip(backs, backs[1:] + [None]):
        top = k if top is None else top
        i, p = ops[k].layer, None if nxt is None else ops[nxt].layer
        joined = (
            nxt is not None
            and all(ops[j].kind is OpKind.FREE for j in range(k + 1, nxt))
            and p in candidates.get(feeds.get(k), ())
            and all(back_at.get(c, -1) < top for c in consumers[p] if c != i)
        )
        if not joined:
            top = None
            continue
        reads[feeds[k]] = p
        members.setdefault(top, []).append(nxt)
        frees.setdefault(top, []).extend(j for j in range(k + 1, nxt))
        if len(consumers[p]) == 1:
            unseeded.add(feeds[nxt])
    return reads, members, frees, unseeded


def _rng_bytes(device):
    """The RNG state(s) as bytearrays (host memory, not the allocator's)."""
    state = [bytearray(torch.get_rng_state().numpy().tobytes())]
    if device.type == "cuda":
        state.append(bytearray(torch.cuda.get_rng_state(device).numpy().tobytes()))
    return state


def _set_rng(state, device):
    torch.set_rng_state(torch.frombuffer(state[0], dtype=torch.uint8))
    if device.type == "cuda":
        torch.cuda.set_rng_state(torch.frombuffer(state[1], dtype=torch.uint8), device)


class _Entry(torch.autograd.Function):
    """An autograd entry point that hands the gradient reaching it to a callable.

    ``_Entry.apply(t, anchor, receive)`` is ``t`` (detached) entered into
    autograd: its backward calls ``receive(grad)`` and passes nothing on.  In
    a plan that pages, a stage run with save reads its inputs through it
    (``receive`` appends to a gradient box), instead of through leaves that
    require grad (see :func:`_enter`): a paged-in output is a new tensor, and
    the stages that read it must not hold the one paged out.  A model input
    that requires grad enters through it too, and so does the sink's output
    on its way to the user (``receive`` queues the rest of the schedule, see
    :meth:`StepRunner.attach`).  The node holds no tensor, and lets go of
    ``receive`` once it has called it; ``anchor`` (a scalar that requires grad)
    only makes its output require grad.
    """

    @staticmethod
    def forward(ctx, t, anchor, receive):
        ctx.receive = receive
        return t.detach()

    @staticmethod
    def backward(ctx, grad):
        receive, ctx.receive = ctx.receive, None
        receive(grad)
        return None, None, None


class StepRunner:
    """One training step of a schedule on stages: the forward part, then the backward part.

    Parameters
    ----------
    stages : list of Stage
    plan : _Plan
    inputs : tuple of torch.Tensor
        The model inputs (``-1 - k`` in ``Stage.inputs`` is ``inputs[k]``).
    target : torch.Tensor or None
        Passed to a loss stage.
    anchor : torch.Tensor
        A scalar that requires grad (see :class:`_Entry`).
    device : torch.device
    expected_bytes : list of int or None
        Each layer's ``output_bytes`` from the model file, checked at the
        stage's first forward.
    on_op : callable or None
        Called with the op's index after each op.
    """

    def __init__(self, stages, plan, inputs, target, *, anchor, device, expected_bytes=None, on_op=None):
        self.stages = stages
        self.plan = plan
        self.inputs = inputs
        self.target = target
        self.anchor = anchor
        self.device = device
        self.expected_bytes = expected_bytes
        self.on_op = on_op
        self.outputs = {}  # A
        self.saved = {}  # S: (boxes, gradient edge, gradient box, producer read directly)
        self.live = {}  # saved stages' outputs with their autograd graph (see _merges)
        self.ran = set()  # saved stages whose backward ran inside a consumer's backward call
        self.segments = on_op is None and not plan.paged_records  # per-op hooks see every backward op run on its own
        self.skip = set()  # free ops done early
        self.grads = {}  # G
        self.input_grads = {}  # gradients of model inputs that require grad
        self.first_rng = {}  # recomputed stages: RNG state before the first forward
        self.first_buffers = {}  # recomputed stages: buffers before the first forward
        self.done = set()
        self.meta = {}  # (shape, dtype) of each output, from its first forward
        self.sink_grad = None
        self.sink_output = None
        self.count = 0
        self.one = _one(device)
        self.pager = Pager(device)  # P: paged outputs and the copy engine (SPEC section 5)
        self.records = {}  # stages whose record is paged: their _Record (PS and what S holds of them)

    # ------------------------------------------------------------ the two parts

    def forward_part(self):
        """Run the ops before the first backward; return the sink's output (detached).

        A schedule that is plain autograd's (``_Plan.plain``) runs as plain
        autograd, unless ``on_op`` wants to see each op: the sink's output
        comes back with its graph, and :meth:`attach` passes it on as it is.
        """
        if self.plan.plain is not None and self.on_op is None:
            return self._plain_part()
        try:
            self._run(0, self.plan.split)
        except BaseException:
            self.pager.close()
            raise
        sink = self.plan.sink
        if sink not in self.saved:
            raise ScheduleError(
                f"the schedule's forward part does not compute the sink {self.stages[sink].name!r} "
                "with save",
                layer=self.stages[sink].name,
            )
        # The sink's output is the caller's from here: a loss outside the model
        # reads it and lets it go as plain autograd does; its backward reads
        # what its own graph saved.  (SPEC section 3 counts it until the sink's
        # backward: what a loss outside the model saves, a log-softmax of the
        # logits' size, takes its place.)
        y, self.sink_output = self.sink_output, None
        self.outputs.pop(sink, None)
        self.live.pop(sink, None)
        return y

    def attach(self, y):
        """``y`` as a tensor whose backward runs the rest of the schedule."""
        if self.plan.plain is not None and self.on_op is None:
            return y  # its graph is the rest of the schedule
        return _Entry.apply(y, self.anchor, self._receive_sink_grad)

    def _plain_part(self):
        """The stages in the schedule's order, as plain autograd runs them; the sink's output with its graph.

        An output nobody reads any more is dropped at once: what a backward
        reads, its graph holds, until that backward has run.
        """
        order, last_read = self.plan.plain, self.plan.last_read
        outputs = {}
        for i in order:
            stage = self.stages[i]
            try:
                args = [self.inputs[-1 - p] if p < 0 else outputs[p] for p in stage.inputs]
            except KeyError:
                raise ScheduleError(f"forward {stage.name}: an input is not in memory", layer=stage.name) from None
            y = _call(stage, args, self.target)
            del args
            if not isinstance(y, torch.Tensor):
                raise ModelError(f"stage {stage.name!r} did not return a tensor")
            self._check_bytes(i, y)
            outputs[i] = y
            for p in stage.inputs:
                if last_read.get(p) == i:
                    del outputs[p]
        self.count = len(self.plan.ops)
        self.inputs = self.target = None  # the graph holds what the backwards read
        return outputs.pop(self.plan.sink)

    def _receive_sink_grad(self, grad):
        self.sink_grad = grad
        del grad
        # Run after this backward call has released the user's loss graph
        # and its own reference to the gradient.
        torch.autograd.Variable._execution_engine.queue_callback(self.finish)

    def finish(self):
        """Run the ops from the first backward on (the sink's gradient is ``sink_grad``)."""
        try:
            with torch.enable_grad():
                self._run(self.plan.split, len(self.plan.ops))
        finally:
            self.pager.close()
        pending = [(self.inputs[k], g) for k, g in sorted(self.input_grads.items())]
        self.input_grads.clear()
        # The step holds nothing of the caller's after it (ScheduledModule.last_step keeps it).
        self.inputs = self.target = None
        self.first_buffers.clear()
        if pending:
            torch.autograd.backward([t for t, _ in pending], [g for _, g in pending])
        del pending
        if self.saved:
            names = ", ".join(self.stages[i].name for i in sorted(self.saved))
            raise ScheduleError(f"the schedule ends with saved data that no backward used: {names}")

    # ------------------------------------------------------------ ops

    def _run(self, start, end):
        ops = self.plan.ops
        skip = self.skip
        paged = self.plan.paged
        for n in range(start, end):
            op = ops[n]
            if op.kind is OpKind.FREE:
                # The sink's output is the caller's (see forward_part).
                self.live.pop(op.layer, None)
                if paged:
                    self.pager.settle(op.layer)  # an output being written is released when written
                if op.layer != self.plan.sink and n not in skip and self.outputs.pop(op.layer, None) is None:
                    raise self._missing(n, op, "its output is not in memory")
            elif op.kind is OpKind.FORWARD:
                self._forward(n, op)
            elif op.kind is OpKind.BACKWARD:
                early = self.plan.early_free.get(n)
                if early is not None and op.layer in self.outputs:
                    skip.add(early)
                self._backward(n, op, early is not None)
            elif op.kind is OpKind.PAGEOUT:
                self._pageout(n, op)
            elif op.kind is OpKind.PAGEIN:
                self._pagein(n, op)
            else:
                self._record_op(n, op)
            self.count += 1
            if self.on_op is not None:
                self.on_op(n)

    def _missing(self, n, op, what):
        name = self.stages[op.layer].name
        return ScheduleError(f"op #{n} ({op.kind.value} {name}): {what}", index=n, layer=name)

    def _value(self, p):
        if p < 0:
            return self.inputs[-1 - p]
        if self.plan.paged:
            self.pager.settle(p)  # a paged-in output is read once its pagein is done
        return self.outputs[p]

    def _forward(self, n, op):
        i = op.layer
        stage = self.stages[i]
        try:
            tensors = [self._value(p) for p in stage.inputs]
        except KeyError:
            raise self._missing(n, op, "an input is not in memory") from None
        if i in self.outputs:
            raise self._missing(n, op, "its output is already in memory")
        first = i not in self.done
        restore = None
        learn = False
        if first and i in self.plan.recomputed:
            random = self.plan.random.get(i)
            if random is not False:
                self.first_rng[i] = _rng_bytes(self.device)
                learn = random is None
            if stage.buffers:
                self.first_buffers[i] = [b.detach().clone() for b in stage.buffers]
        elif not first:
            restore = self._enter_recompute(i, stage)
        try:
            if op.save:
                self._forward_saved(n, i, stage, tensors)
            else:
                grad = torch.is_grad_enabled()
                torch._C._set_grad_enabled(False)  # torch.no_grad(), without its Python context object
                try:
                    self.outputs[i] = _call(stage, tensors, self.target)
                finally:
                    torch._C._set_grad_enabled(grad)
        finally:
            if restore is not None:
                self._leave_recompute(stage, restore)
        del tensors
        if learn:
            self.plan.random[i] = _rng_bytes(self.device) != self.first_rng[i]
            if not self.plan.random[i]:
                del self.first_rng[i]
        if first:
            self.done.add(i)
            y = self.outputs[i]
            self.meta[i] = (y.shape, y.dtype)
            self._check_bytes(i, y)
            del y

    def _enter_recompute(self, i, stage):
        rng = _rng_bytes(self.device) if i in self.first_rng else None
        if rng is not None:
            _set_rng(self.first_rng[i], self.device)
        after = [b.detach().clone() for b in stage.buffers] if stage.buffers else None
        if after is not None:
            _copy_into(stage.buffers, self.first_buffers.get(i, after))
        return rng, after

    def _leave_recompute(self, stage, restore):
        rng, after = restore
        if rng is not None:
            _set_rng(rng, self.device)
        if after is not None:
            _copy_into(stage.buffers, after)

    def _forward_saved(self, n, i, stage, tensors):
        p = self.plan.reads.get(n) if self.segments else None
        # A producer whose output needs no gradient (it has no graph) is read as it is.
        direct = {} if p is None else {p: self.live.get(p, self.outputs[p])}
        leaves = self.plan.leaves
        boxes, entries = _enter(stage, tensors, self.anchor, direct, leaves)
        del direct
        if i in self.plan.paged_records:
            record = self.records[i] = _Record(self, i)
            with torch.autograd.graph.saved_tensors_hooks(record.pack, record.unpack):
                y = _call(stage, entries, self.target)
        else:
            y = _call(stage, entries, self.target)
        del entries
        if leaves and i not in self.plan.keeps_inputs:
            _release(boxes)
        gbox = []
        if not y.requires_grad or (self.segments and n in self.plan.unseeded):
            root = None
        elif self.segments and i in self.plan.seeded:
            root = seed_function(torch)(y, gbox.pop)
        else:  # the call takes the gradient as it is, and holds it until its end, as SPEC counts it
            root = torch.autograd.graph.get_gradient_edge(y)
        self.saved[i] = (boxes, root, gbox)
        self.outputs[i] = y.detach()
        if y.requires_grad:
            self.live[i] = y
        if i == self.plan.sink:
            self.sink_output = self.outputs[i]

    def _pageout(self, n, op):
        i = op.layer
        if i not in self.outputs:
            raise self._missing(n, op, "its output is not in memory")
        if i in self.pager.copies:
            raise self._missing(n, op, "its output is already paged out")
        self.pager.pageout(i, self.outputs[i])

    def _pagein(self, n, op):
        # The copy comes back as the output itself: the stages that read it
        # enter it into autograd as they enter any held output (a detached
        # tensor, see _enter), and a backward reads its own saved graph.
        i = op.layer
        if i not in self.pager.copies:
            raise self._missing(n, op, "its output is not paged out")
        if i in self.outputs:
            raise self._missing(n, op, "its output is already in memory")
        self.outputs[i] = self.pager.pagein(i)

    def _record_op(self, n, op):
        """``pageout_saved``, ``drop_saved``, ``pagein_saved`` (docs/format.md, "Paging backward records")."""
        i = op.layer
        record = self.records.get(i)
        if record is None or i not in self.saved:
            raise self._missing(n, op, "its saved data is not in memory")
        problem = record.step(op.kind)
        if problem is not None:
            raise self._missing(n, op, problem)

    def _check_bytes(self, i, y):
        """Raise ModelError unless ``y`` is as big as the model file says (once per stage and plan)."""
        if self.expected_bytes is None or i in self.plan.checked:
            return
        got = y.numel() * y.element_size() if isinstance(y, torch.Tensor) else None
        if got != self.expected_bytes[i]:
            raise ModelError(
                f"layer {self.stages[i].name!r}: output of {got} bytes here, the model file says "
                f"{self.expected_bytes[i]}: the model file was profiled for another input shape or dtype"
            )
        self.plan.checked.add(i)

    def _backward(self, n, op, free_after):
        i = op.layer
        if i not in self.saved:
            raise self._missing(n, op, "its saved data is not in memory")
        record = self.records.get(i)
        if record is not None and not record.in_memory:
            raise self._missing(n, op, "its saved data is paged out (pagein_saved it first)")
        boxes, root, gbox = self.saved.pop(i)
        if self.plan.paged:
            self.pager.drop(i)  # SPEC section 5: nothing reads L's output after L's backward
        self.live.pop(i, None)
        if i in self.ran:  # its backward ran in its consumer's call
            self.ran.discard(i)
            if free_after:
                self.outputs.pop(i, None)
            if record is not None:
                del self.records[i]
                self.pager.drop(("record", i))
            self._hand_back(self.stages[i], boxes)
            return
        if i == self.plan.sink:
            g, self.sink_grad = self.sink_grad, None
        else:
            g = self.grads.pop(i, None)
        if g is None and root is not None:
            shape, dtype = self.meta[i]
            g = torch.zeros(shape, dtype=dtype, device=self.device)
        gbox.append(g)
        del g
        if record is not None:
            record.resolve()  # before this call frees the outputs it reads
        if free_after:
            self.outputs.pop(i, None)
        roots, boxes_used = self._segment(n, root, gbox)
        if roots:
            # torch.autograd.backward's own engine call, without its Python checks:
            # a seed takes any scalar (it makes its own gradient), an edge its gradient.
            one = self.one
            grads = tuple(one if r is not root or isinstance(r, torch.Tensor) else gbox.pop() for r in roots)
            _engine_run_backward(tuple(roots), grads, False, False, (), allow_unreachable=True, accumulate_grad=True)
            del grads
        for box in boxes_used:
            box.clear()
        del root, gbox, roots, boxes_used
        if record is not None:
            del self.records[i]
            self.pager.drop(("record", i))
        self._hand_back(self.stages[i], boxes)

    def _segment(self, n, root, gbox):
        """The seeds of the backward call of op ``n``: its stage's, and the held gradients of its segment's members.

        A member (a stage read directly, see :func:`_segments`) gets the
        gradients its segment's stages send it through the graph and, through
        its own seed, the sum of the gradients of its consumers done before,
        as autograd sums them.  The frees between the segment's backward ops
        are done before the call (the graph holds what a backward reads).
        """
        roots = [] if root is None else [root]
        boxes_used = [gbox]
        if not self.segments:
            return roots, boxes_used
        for k in self.plan.members.get(n, ()):
            p = self.plan.ops[k].layer
            self.ran.add(p)
            if p in self.records:
                self.records[p].resolve()
            _, root_p, gbox_p = self.saved[p]
            g = self.grads.pop(p, None)
            if g is not None:  # its earlier consumers' gradients (it has a seed: see _segments)
                gbox_p.append(g)
                roots.append(root_p)
                boxes_used.append(gbox_p)
            del g, root_p
        for f in self.plan.frees.get(n, ()):
            x = self.plan.ops[f].layer
            self.live.pop(x, None)
            if x == self.plan.sink or self.outputs.pop(x, None) is not None:
                self.skip.add(f)
        return roots, boxes_used

    def _hand_back(self, stage, boxes):
        """Move each input gradient to its producer (summed over consumers)."""
        for p, box in zip(stage.inputs, boxes):
            if isinstance(box, torch.Tensor):  # a leaf (see _enter)
                g, box.grad = box.grad, None
            else:
                g = box[0] if box else None
                box.clear()
            if g is None:
                continue
            store = self.input_grads if p < 0 else self.grads
            key = -1 - p if p < 0 else p
            if key not in store:
                store[key] = g
            elif self._shared(store[key]):
                store[key] = store[key] + g
            else:
                store[key].add_(g)
            del g

    def _shared(self, g):
        """Whether another held gradient is the same storage (a backward that passed its gradient through)."""
        ptr = g.untyped_storage().data_ptr()
        return sum(
            1 for v in (*self.grads.values(), *self.input_grads.values())
            if v.untyped_storage().data_ptr() == ptr
        ) > 1


class _Record:
    """What a stage's forward with save keeps for its backward, packed so that it can be paged.

    ``pack`` and ``unpack`` are ``torch.autograd.graph.saved_tensors_hooks``: each
    saved tensor goes into a slot (a one-element list the graph holds), except
    parameters, which stay where they are.  At ``pageout_saved`` a slot whose
    tensor is one of the step's held outputs (an input of the stage, or its own
    output: what the model file's ``needs_inputs`` and ``needs_output`` count)
    becomes a reference to that output, put back from the step before the
    backward call (:meth:`resolve`), and the rest (the model file's ``saved_bytes``) are written out on
    the copy engine; ``drop_saved`` empties every slot once the write is done;
    ``pagein_saved`` reads them back into new tensors, which the backward
    waits for (``unpack`` settles the transfer).
    """

    def __init__(self, step, i):
        self.step_runner = step
        self.i = i
        self.slots = []  # [tensor] or [None] once dropped
        self.refs = {}  # slot index -> producer (-1 - k: model input k) whose output it is
        self.paged = False  # in PS
        self.in_memory = True  # in S

    def pack(self, t):
        if isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad):
            return t
        slot = [t]
        self.slots.append(slot)
        return slot

    def unpack(self, packed):
        if not isinstance(packed, list):
            return packed
        self.step_runner.pager.settle(("record", self.i))
        return packed[0]

    def resolve(self):
        """Put the held outputs back in the slots that read them, before a backward call.

        A segment's call frees the outputs between its backward ops before it
        runs (see ``StepRunner._segment``): a slot that read the step's output
        at unpack time found it gone.
        """
        for k, p in self.refs.items():
            self.slots[k][0] = self.step_runner._value(p)

    def step(self, kind):
        """Run a record op; the reason it cannot run, or None."""
        pager = self.step_runner.pager
        if kind is OpKind.PAGEOUT_SAVED:
            if not self.in_memory:
                return "its saved data is not in memory"
            if self.paged:
                return "its saved data is already paged out"
            self.refs = self._held_outputs()
            pager.pageout_record(self.i, [s[0] for k, s in enumerate(self.slots) if k not in self.refs])
            self.paged = True
        elif kind is OpKind.DROP_SAVED:
            if not (self.in_memory and self.paged):
                return "its saved data is not paged out (pageout_saved it first)"
            pager.settle(("record", self.i))  # a record being written is released when written
            for slot in self.slots:
                slot[0] = None
            self.in_memory = False
        else:
            if not self.paged or self.in_memory:
                return "its saved data is not paged out" if not self.paged else "its saved data is already in memory"
            tensors = iter(pager.pagein_record(self.i))
            for k, slot in enumerate(self.slots):
                if k not in self.refs:
                    slot[0] = next(tensors)
            self.in_memory = True
        return None

    def _held_outputs(self):
        """``{slot: producer}`` for the slots that hold a tensor the step holds as an output."""
        step = self.step_runner
        stage = step.stages[self.i]
        held = [(p, step.inputs[-1 - p] if p < 0 else step.outputs.get(p)) for p in stage.inputs]
        held.append((self.i, step.outputs.get(self.i)))
        refs = {}
        for k, (t,) in enumerate(self.slots):
            for p, out in held:
                if out is not None and _same_view(t, out):
                    refs[k] = p
                    break
        return refs


def _same_view(t, out):
    return (
        t.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
        and t.storage_offset() == out.storage_offset()
        and t.shape == out.shape
        and t.stride() == out.stride()
        and t.dtype == out.dtype
    )


def _call(stage, tensors, target):
    if getattr(stage, "loss", False):
        return stage.fn(*tensors, target)
    return stage.fn(*tensors)


def _copy_into(targets, values):
    # Through .data: the graph of a saved forward holds BatchNorm's running
    # statistics, and an in-place copy must not bump their version counter.
    for t, v in zip(targets, values):
        t.data.copy_(v)


def _one(device):
    """A scalar one on ``device``, the gradient handed to a seed (which makes its own), made once."""
    one = _ONES.get(device)
    if one is None:
        one = _ONES[device] = torch.ones((), device=device)
    return one


_ONES = {}
_engine_run_backward = torch.autograd.graph._engine_run_backward


def _release(boxes):
    """Let the leaves among ``boxes`` go of their producers' outputs (a backward that does not read them).

    Each leaf's data becomes a one-element stand-in of the same shape and
    dtype (stride 0), which is all its ``AccumulateGrad`` node reads.
    """
    for leaf in boxes:
        if isinstance(leaf, torch.Tensor):
            key = (leaf.dtype, leaf.device)
            base = _STAND_INS.get(key)
            if base is None:
                base = _STAND_INS[key] = torch.zeros(1, dtype=leaf.dtype, device=leaf.device)
            leaf.data = base.as_strided(leaf.shape, (0,) * leaf.dim())


_STAND_INS = {}


def _enter(stage, tensors, anchor, direct, leaves=False):
    """The stage's inputs entered into autograd, and one gradient box per input.

    A function of its own so that no loop variable outlives the call and keeps
    an input alive after its ``free``.  A model input enters only when it
    requires grad; a producer's output when it is floating point.  ``direct``
    maps a producer to its output with its autograd graph, read as it is (no
    box: the gradient flows on in the same backward call).  With ``leaves``,
    a producer's output enters as a leaf that requires grad, and the leaf is
    the box: the backward call leaves the gradient in its ``.grad``.  That
    costs no Python node, but the leaf's ``AccumulateGrad`` holds the output
    as long as the graph lives: a stage whose backward does not read it lets
    it go after its forward (:func:`_release`).
    """
    boxes = [[] for _ in tensors]
    entries = []
    for k, (p, t) in enumerate(zip(stage.inputs, tensors)):
        if p in direct:
            entries.append(direct[p])
        elif not t.is_floating_point() or (p < 0 and not t.requires_grad):
            entries.append(t)
        elif leaves and p >= 0:
            boxes[k] = t.detach().requires_grad_()
            entries.append(boxes[k])
        else:  # no edge to the caller's graph: the box gets the gradient
            entries.append(_Entry.apply(t.detach(), anchor, boxes[k].append))
    return boxes, entries


def plain_forward(stages, inputs, target=None):
    """The stages in order under the current grad mode, as a plain forward runs them.

    Outputs no later stage reads are dropped as soon as possible.
    """
    last_use = {}
    for k, stage in enumerate(stages):
        for p in stage.inputs:
            last_use[p] = k
    outputs = {}
    y = None
    for k, stage in enumerate(stages):
        args = [inputs[-1 - p] if p < 0 else outputs[p] for p in stage.inputs]
        y = _call(stage, args, target)
        if not isinstance(y, torch.Tensor):
            raise ModelError(f"stage {stage.name!r} did not return a tensor")
        outputs[k] = y
        del args
        for p in stage.inputs:
            if p >= 0 and last_use[p] == k:
                outputs.pop(p, None)
    del outputs
    return y


def check_names(model_names, stages):
    """Raise :class:`ModelError` unless the stages are the model file's layers, in order."""
    got = [s.name for s in stages]
    names = list(model_names)
    if names == got:
        return
    diff = next((k for k, (a, b) in enumerate(zip(names, got)) if a != b), min(len(names), len(got)))
    raise ModelError(
        f"the model file does not describe this model: {len(names)} layers vs "
        f"{len(got)} stages; first difference at #{diff}: "
        f"{names[diff] if diff < len(names) else '(none)'!r} vs "
        f"{got[diff] if diff < len(got) else '(none)'!r} (profile it with the same "
        "inputs and stages)"
    )


class ScheduledModule(nn.Module):
    """The user's module, trained under an edgeplan schedule.

    Parameters
    ----------
    module : torch.nn.Module or list of torch.nn.Module
        What ``edgeplan profile`` profiled (the same ``stages`` mode).
    model : planner.model.Model, str or os.PathLike
        The model file the schedule was planned for (or its path); with a
        ``loss`` field (``profile --loss``) the loss is the last stage, made
        by :func:`planner.torch.loss.make_loss`.
    schedule : planner.schedule.Schedule, str or os.PathLike
        The schedule (or its path); it must carry the model's fingerprint.
    stages : {"auto", "modules", "ops"}, keyword-only
        As for :func:`planner.torch.profile.build_stages`.
    example : torch.Tensor, tuple or dict, keyword-only
        An input (a dict: keyword arguments) to cut the stages with now;
        otherwise the first call's.
    compile : bool or str, keyword-only
        Compile each stage with ``torch.compile`` (True: its default backend,
        inductor, which needs a C++ compiler on the CPU; a string: that
        backend, e.g. ``"aot_eager"``).  The schedule still decides what is
        kept: a stage's compiled forward saves what its compiled backward
        reads, and recomputation runs the compiled forward again.  A model
        file profiled with ``--compile`` (its ``compile`` field names the
        backend) holds the compiled stages' times and sizes; a UserWarning
        (:func:`compile_mismatch`) says when the model file was profiled
        otherwise than the stages run.
    captured : list of Stage or None, keyword-only
        Stages already cut from ``module`` in training mode (and compiled
        with ``compile``'s backend when it is given), run as they are
        instead of cutting the module again: :func:`planner.fit` hands over
        the stages its profile measured, so each compiles once.

    Attributes
    ----------
    stages : list of Stage or None
        The stages (None before the first call when no example was given).
    on_op : callable or None
        Called with each op's index after the op runs (``verify``'s per-op
        timeline); set it before the call.
    last_step : StepRunner or None
        The last training call's step: ``count`` (ops run), ``pager``
        (``pageouts``, ``pageins``, ``seconds``), ``first_rng`` (the RNG
        snapshots it holds).

    Raises
    ------
    ScheduleError
        The schedule was made for another model file (fingerprint), or its
        ops miss tensors when they run.
    ModelError
        The model file does not describe ``module`` (layer names), or was
        profiled for another input shape (input or output sizes).
    OptionError
        ``compile`` names an unknown backend, or one that cannot run here
        (:func:`planner.torch.measure.compile_backend`).

    Notes
    -----
    ``wrapped(*inputs, target=None)`` returns the sink's output (the loss when
    the sink is a loss stage, which is called with ``target``).  The inputs and
    the target together are what the model file's ``input_bytes`` counts.  In training
    mode with grad enabled it runs the schedule's forward part; its
    ``backward()`` runs the rest.  Otherwise it runs the plain forward.  One
    step costs the schedule's forwards and backwards plus, per recomputed
    stage, a copy of its buffers and (when it draws random numbers) of the
    RNG state, some Python per op and one ``backward()`` call per segment;
    a store-all step costs what plain autograd's does.
    """

    def __init__(self, module, model, schedule, *, stages="auto", example=None, compile=False, captured=None):
        super().__init__()
        backend = None if compile is False else compile_backend(compile)
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        if not isinstance(model, Model):
            raise ModelError(f"model must be a planner Model or a model file path, got {type(model).__name__}")
        if isinstance(schedule, (str, os.PathLike)):
            schedule = load_schedule(schedule, model)
        if not isinstance(schedule, Schedule):
            raise ScheduleError(f"schedule must be a planner Schedule or a file path, got {type(schedule).__name__}")
        if schedule.fingerprint != model.fingerprint:
            raise ScheduleError(
                f"the schedule was made for another model (fingerprint {schedule.fingerprint}, "
                f"model {model.name!r} is {model.fingerprint})"
            )
        self.module = nn.ModuleList(module) if isinstance(module, (list, tuple)) else module
        self._source = module
        self._model = model
        self._schedule = schedule
        self._mode = stages
        mismatch = compile_mismatch(model, backend)
        if mismatch is not None:
            warnings.warn(mismatch, UserWarning, stacklevel=2)
        self._compile = backend
        self._captured = None if captured is None else list(captured)
        self._loss = model_loss(model)
        self._expected_bytes = [layer.output_bytes for layer in model.layers]
        self._plan = None  # made with the stages, by _build
        self._eval = None  # the stages in eval mode, by _eval_stages
        self._anchors = {}
        self.on_op = None
        self.last_step = None
        if isinstance(example, dict):  # the model's keyword arguments
            example = flat_inputs((), example)
        if example is not None:
            self._build(example if isinstance(example, tuple) else (example,))

    @property
    def stages(self):
        """The stages (None before the first call when no example was given)."""
        return None if self._plan is None else self._plan.stages

    @property
    def compiled(self):
        """The ``torch.compile`` backend the stages run with (None: eager)."""
        return self._compile

    def _build(self, inputs):
        if self._captured is not None:  # cut (and compiled) already, as the profile measured them
            stage_list = self._captured
        else:
            stage_list = self._cut(inputs)
            if self._compile:
                stage_list = compiled_stages(stage_list, self._compile)
        check_names([layer.name for layer in self._model.layers], stage_list)
        self._plan = _Plan(stage_list, self._schedule.ops, self._model.layers)

    def _cut(self, inputs):
        """The module cut into stages in training mode, its buffers and the RNG left as they were."""
        example = inputs if isinstance(inputs, ExampleInputs) else ExampleInputs(inputs)
        # Cutting into ops runs the model once: keep its buffers and the RNG as they were.
        buffers = [(b, b.detach().clone()) for b in self.module.buffers()]
        rng = _rng_bytes(inputs[0].device)
        try:
            loss = None if self._loss in (None, OWN_LOSS) else make_loss(self._loss)
            _, stage_list = build_stages(self._source, self._mode, example=example, loss=loss,
                                         output=document_output(self._model.document))
        finally:
            _copy_into([b for b, _ in buffers], [v for _, v in buffers])
            _set_rng(rng, inputs[0].device)
        del buffers
        return stage_list

    def _eval_stages(self, inputs):
        """The stages captured in eval mode (once), for the plain forward in eval mode."""
        if self._eval is None:
            example = inputs if isinstance(inputs, ExampleInputs) else ExampleInputs(inputs)
            _, stage_list = build_stages(self._source, self._mode, example=example,
                                         output=document_output(self._model.document))
            self._eval = _with_loss(stage_list, self._model)
        return self._eval

    def _anchor(self, device):
        if device not in self._anchors:
            self._anchors[device] = torch.zeros((), device=device, requires_grad=True)
        return self._anchors[device]

    def _check_inputs(self, inputs, target):
        """The inputs and the target are what the model file's ``input_bytes`` counts.

        A model profiled with a loss also counts there what the loss value keeps
        beyond its scalar, so the caller's tensors may be less (never more).
        """
        held = list(inputs) + ([target] if isinstance(target, torch.Tensor) else [])
        signature = tuple((t.shape, t.dtype) for t in held)
        if signature == self._plan.checked_for:  # checked, with the output sizes, at an earlier call
            return
        got = sum(t.numel() * t.element_size() for t in held)
        want = self._model.input_bytes
        if got > want or (self._loss is None and got != want):
            shapes = ", ".join("x".join(map(str, t.shape)) + f" {t.dtype}" for t in held)
            raise ModelError(
                f"input {shapes} is {got} bytes; model {self._model.name!r} was profiled for "
                f"{want} bytes of input: profile it for this input shape"
            )
        self._plan.checked, self._plan.checked_for = set(), signature

    def forward(self, *inputs, target=None, **kwargs):
        if kwargs:  # module(**batch): the tensors flat, as the example gave them to capture
            inputs = flat_inputs(inputs, kwargs)
        if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise ModelError("ScheduledModule takes the model's input tensors, positionally or by keyword")
        if self._plan is None:
            self._build(inputs)
        if not self.training:  # the captured ops are train mode's (dropout, BatchNorm statistics)
            return plain_forward(self._eval_stages(inputs), inputs, target)
        if not torch.is_grad_enabled():
            return plain_forward(self._plan.stages, inputs, target)
        self._check_inputs(inputs, target)
        step = StepRunner(
            self._plan.stages, self._plan, inputs, target, anchor=self._anchor(inputs[0].device),
            device=inputs[0].device,
            expected_bytes=self._expected_bytes, on_op=self.on_op,
        )
        self.last_step = step
        return step.attach(step.forward_part())

    def plain_forward(self, *inputs, target=None):
        """The stages' plain forward under the current grad mode (what eval mode runs)."""
        if self._plan is None:
            self._build(inputs)
        return plain_forward(self._plan.stages, inputs, target)


def compile_mismatch(model, backend):
    """Why ``model``'s costs are not those of stages run with ``backend`` (None: eager), or None when they are.

    ``profile --compile`` writes the backend it measured with into the model
    file's ``compile`` field; a model file without one was profiled eager.
    """
    profiled = model.document.get("compile") if isinstance(model.document, dict) else None
    if profiled == backend or model.time_unit == "flop":  # an estimate (nothing ran) says nothing of either
        return None
    was = f"compiled ({profiled})" if profiled else "eager (uncompiled)"
    runs = f"compiled ({backend})" if backend else "eager"
    how = f"--compile-backend {backend}" if backend and backend != "inductor" else "--compile"
    fix = f"profile it with {how}" if backend else "run it compiled as it was profiled, or profile it without --compile"
    return (f"model {model.name!r} was profiled with {was} stages and its stages run {runs}: its times and "
            f"saved sizes are not this run's ({fix})")


def _with_loss(stage_list, model):
    """The stages, with the model file's loss appended when stage building left it out.

    ``--loss output`` (the model's own loss field is the sink) appends nothing.
    """
    kind = model_loss(model)
    if kind is None or kind == OWN_LOSS or (stage_list and getattr(stage_list[-1], "loss", False)):
        return stage_list
    from planner.torch.stages import Stage

    fn = make_loss(kind)
    return list(stage_list) + [Stage(name="loss", fn=fn, inputs=(len(stage_list) - 1,), loss=True)]
