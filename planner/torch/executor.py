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
code):

- ``forward L save=true``: L runs on its inputs entered into autograd through
  a node that holds no tensor and hands the input gradients back, keeping its
  autograd graph; only the graph's gradient edge is kept, not the output, so
  that ``free`` really drops the output;
- ``forward L save=false``: L runs under ``torch.no_grad()``;
- ``backward L``: ``backward()`` from L's gradient edge with L's output
  gradient, made inside the backward so that the engine owns it and frees it
  as soon as it is used; the input gradients go to their producers (summed
  when a producer has several consumers);
- ``free L``: drops L's output;
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

A recomputed stage starts from the RNG state of its first forward (kept as
bytes, outside the allocator), so dropout masks match; its buffers (BatchNorm
running statistics) are put back to what they were before its first forward
and, after it, to what the first forward left, so they are updated once per
step.  A recomputation puts the RNG state back as it found it, so the step
leaves it where a plain step does.
"""

from planner.errors import ModelError, ScheduleError
from planner.model import Model, load_model
from planner.schedule import OpKind, Schedule, load_schedule
from planner.torch.capture import build_stages
from planner.torch.inputs import require_torch
from planner.torch.measure import seed_function
from planner.torch.pager import Pager

torch = require_torch()
nn = torch.nn

__all__ = ["ScheduledModule", "StepRunner", "plain_forward"]


class _Plan:
    """What a schedule's ops need, computed once: the split point, recomputed stages, early frees.

    It keeps the stages it was computed for (``stages``).
    """

    def __init__(self, stages, ops):
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
    autograd: its backward calls ``receive(grad)`` and passes nothing on.  A
    stage run with save reads its inputs through it (``receive`` appends to a
    gradient box), instead of through leaves that require grad: a leaf is held
    by its ``AccumulateGrad`` node for as long as the graph lives, which would
    keep a producer's output alive after ``free`` even when the stage's
    backward does not read it.  The sink's output reaches the user through it
    too (``receive`` queues the rest of the schedule, see
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
        self.saved = {}  # S: (boxes, gradient edge, gradient box)
        self.grads = {}  # G
        self.input_grads = {}  # gradients of model inputs that require grad
        self.first_rng = {}  # recomputed stages: RNG state before the first forward
        self.first_buffers = {}  # recomputed stages: buffers before the first forward
        self.done = set()
        self.meta = {}  # (shape, dtype) of each output, from its first forward
        self.sink_grad = None
        self.sink_output = None
        self.count = 0
        self.pager = Pager(device)  # P: paged outputs and the copy engine (SPEC section 5)
        self.records = {}  # stages whose record is paged: their _Record (PS and what S holds of them)

    # ------------------------------------------------------------ the two parts

    def forward_part(self):
        """Run the ops before the first backward; return the sink's output (detached)."""
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
        # The loss reads the sink's output until the sink's backward (SPEC section 3),
        # whatever the schedule frees before.
        y, self.sink_output = self.sink_output, None
        return y

    def attach(self, y):
        """``y`` as a tensor whose backward runs the rest of the schedule."""
        return _Entry.apply(y, self.anchor, self._receive_sink_grad)

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
        if pending:
            torch.autograd.backward([t for t, _ in pending], [g for _, g in pending])
        if self.saved:
            names = ", ".join(self.stages[i].name for i in sorted(self.saved))
            raise ScheduleError(f"the schedule ends with saved data that no backward used: {names}")

    # ------------------------------------------------------------ ops

    def _run(self, start, end):
        ops = self.plan.ops
        skip = set()
        for n in range(start, end):
            op = ops[n]
            if op.kind is OpKind.FREE:
                self.pager.settle(op.layer)  # an output being written is released when written
                if n not in skip and self.outputs.pop(op.layer, None) is None:
                    raise self._missing(n, op, "its output is not in memory")
            elif op.kind is OpKind.FORWARD:
                self._forward(n, op)
            elif op.kind is OpKind.PAGEOUT:
                self._pageout(n, op)
            elif op.kind is OpKind.PAGEIN:
                self._pagein(n, op)
            elif op.kind in _RECORD_OPS:
                self._record_op(n, op)
            else:
                early = self.plan.early_free.get(n)
                if early is not None and op.layer in self.outputs:
                    skip.add(early)
                self._backward(n, op, early is not None)
            self.count += 1
            if self.on_op is not None:
                self.on_op(n)

    def _missing(self, n, op, what):
        name = self.stages[op.layer].name
        return ScheduleError(f"op #{n} ({op.kind.value} {name}): {what}", index=n, layer=name)

    def _value(self, p):
        if p < 0:
            return self.inputs[-1 - p]
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
        if first and i in self.plan.recomputed:
            self.first_rng[i] = _rng_bytes(self.device)
            self.first_buffers[i] = [b.detach().clone() for b in stage.buffers]
        elif not first:
            restore = self._enter_recompute(i, stage)
        try:
            if op.save:
                self._forward_saved(i, stage, tensors)
            else:
                with torch.no_grad():
                    self.outputs[i] = _call(stage, tensors, self.target)
        finally:
            if restore is not None:
                self._leave_recompute(stage, restore)
        del tensors
        if first:
            self.done.add(i)
            y = self.outputs[i]
            self.meta[i] = (y.shape, y.dtype)
            del y
            self._check_bytes(i)

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

    def _forward_saved(self, i, stage, tensors):
        boxes, entries = _enter(stage, tensors, self.anchor)
        if i in self.plan.paged_records:
            record = self.records[i] = _Record(self, i)
            with torch.autograd.graph.saved_tensors_hooks(record.pack, record.unpack):
                y = _call(stage, entries, self.target)
        else:
            y = _call(stage, entries, self.target)
        gbox = []
        root = seed_function(torch)(y, gbox.pop) if y.requires_grad else None
        self.saved[i] = (boxes, root, gbox)
        self.outputs[i] = y.detach()
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

    def _check_bytes(self, i):
        if self.expected_bytes is None:
            return
        y = self.outputs.get(i)
        got = y.numel() * y.element_size() if isinstance(y, torch.Tensor) else None
        if got != self.expected_bytes[i]:
            raise ModelError(
                f"layer {self.stages[i].name!r}: output of {got} bytes here, the model file says "
                f"{self.expected_bytes[i]}: the model file was profiled for another input shape or dtype"
            )

    def _backward(self, n, op, free_after):
        i = op.layer
        if i not in self.saved:
            raise self._missing(n, op, "its saved data is not in memory")
        record = self.records.get(i)
        if record is not None and not record.in_memory:
            raise self._missing(n, op, "its saved data is paged out (pagein_saved it first)")
        boxes, root, gbox = self.saved.pop(i)
        self.pager.drop(i)  # SPEC section 5: nothing reads L's output after L's backward
        if i == self.plan.sink:
            g, self.sink_grad = self.sink_grad, None
        else:
            g = self.grads.pop(i, None)
        if g is None and root is not None:
            shape, dtype = self.meta[i]
            g = torch.zeros(shape, dtype=dtype, device=self.device)
        gbox.append(g)
        del g
        if free_after:
            self.outputs.pop(i, None)
        if root is not None:
            root.backward()
        gbox.clear()
        del root, gbox
        if record is not None:
            del self.records[i]
            self.pager.drop(("record", i))
        self._hand_back(self.stages[i], boxes)

    def _hand_back(self, stage, boxes):
        """Move each input gradient to its producer (summed over consumers)."""
        for p, box in zip(stage.inputs, boxes):
            if not box or box[0] is None:
                continue
            store = self.input_grads if p < 0 else self.grads
            key = -1 - p if p < 0 else p
            if key not in store:
                store[key] = box[0]
            elif self._shared(store[key]):
                store[key] = store[key] + box[0]
            else:
                store[key].add_(box[0])
            box.clear()

    def _shared(self, g):
        """Whether another held gradient is the same storage (a backward that passed its gradient through)."""
        ptr = g.untyped_storage().data_ptr()
        return sum(
            1 for v in (*self.grads.values(), *self.input_grads.values())
            if v.untyped_storage().data_ptr() == ptr
        ) > 1


_RECORD_OPS = frozenset({OpKind.PAGEOUT_SAVED, OpKind.DROP_SAVED, OpKind.PAGEIN_SAVED})


class _Record:
    """What a stage's forward with save keeps for its backward, packed so that it can be paged.

    ``pack`` and ``unpack`` are ``torch.autograd.graph.saved_tensors_hooks``: each
    saved tensor goes into a slot (a one-element list the graph holds), except
    parameters, which stay where they are.  At ``pageout_saved`` a slot whose
    tensor is one of the step's held outputs (an input of the stage, or its own
    output: what the model file's ``needs_inputs`` and ``needs_output`` count)
    becomes a reference to that output, read again from the step at the
    backward, and the rest (the model file's ``saved_bytes``) are written out on
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
        k = next(n for n, slot in enumerate(self.slots) if slot is packed)
        if k in self.refs:
            return self.step_runner._value(self.refs[k])
        self.step_runner.pager.settle(("record", self.i))
        return packed[0]

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


def _enter(stage, tensors, anchor):
    """The stage's inputs entered into autograd, and one gradient box per input.

    A function of its own so that no loop variable outlives the call and keeps
    an input alive after its ``free``.  A model input enters only when it
    requires grad; a producer's output when it is floating point.
    """
    boxes = [[] for _ in tensors]
    entries = [
        _Entry.apply(t.detach(), anchor, box.append)  # no edge to the caller's graph: the box gets it
        if t.is_floating_point() and (p >= 0 or t.requires_grad)
        else t
        for p, t, box in zip(stage.inputs, tensors, boxes)
    ]
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
    model : planner.model.Model or str
        The model file the schedule was planned for (or its path).
    schedule : planner.schedule.Schedule or str
        The schedule (or its path); it must carry the model's fingerprint.
    stages : {"auto", "modules", "ops"}, keyword-only
        As for :func:`planner.torch.profile.build_stages`.
    example : torch.Tensor or tuple, keyword-only
        An input to cut the stages with now; otherwise the first call's.

    Raises
    ------
    ScheduleError
        The schedule was made for another model file (fingerprint), or its
        ops miss tensors when they run.
    ModelError
        The model file does not describe ``module`` (layer names), or was
        profiled for another input shape (input or output sizes).

    Notes
    -----
    ``wrapped(*inputs, target=None)`` returns the sink's output (the loss when
    the sink is a loss stage, which is called with ``target``).  In training
    mode with grad enabled it runs the schedule's forward part; its
    ``backward()`` runs the rest.  Otherwise it runs the plain forward.  One
    step costs the schedule's forwards and backwards plus, per recomputed
    stage, a copy of its buffers and of the RNG state.
    """

    def __init__(self, module, model, schedule, *, stages="auto", example=None):
        super().__init__()
        if isinstance(model, str):
            model = load_model(model)
        if not isinstance(model, Model):
            raise ModelError(f"model must be a planner Model or a model file path, got {type(model).__name__}")
        if isinstance(schedule, str):
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
        self._plan = None  # made with the stages, by _build
        self._anchors = {}
        if example is not None:
            self._build(example if isinstance(example, tuple) else (example,))

    @property
    def stages(self):
        """The stages (None before the first call when no example was given)."""
        return None if self._plan is None else self._plan.stages

    def _build(self, inputs):
        example = inputs[0] if len(inputs) == 1 else inputs
        # Cutting into ops runs the model once: keep its buffers and the RNG as they were.
        buffers = [(b, b.detach().clone()) for b in self.module.buffers()]
        rng = _rng_bytes(inputs[0].device)
        try:
            _, stage_list = build_stages(self._source, self._mode, example=example)
        finally:
            _copy_into([b for b, _ in buffers], [v for _, v in buffers])
            _set_rng(rng, inputs[0].device)
        del buffers
        stage_list = _with_loss(stage_list, self._model)
        check_names([layer.name for layer in self._model.layers], stage_list)
        self._plan = _Plan(stage_list, self._schedule.ops)

    def _anchor(self, device):
        if device not in self._anchors:
            self._anchors[device] = torch.zeros((), device=device, requires_grad=True)
        return self._anchors[device]

    def _check_inputs(self, inputs):
        got = sum(t.numel() * t.element_size() for t in inputs)
        if got != self._model.input_bytes:
            shapes = ", ".join("x".join(map(str, t.shape)) + f" {t.dtype}" for t in inputs)
            raise ModelError(
                f"input {shapes} is {got} bytes; model {self._model.name!r} was profiled for "
                f"{self._model.input_bytes} bytes of input: profile it for this input shape"
            )

    def forward(self, *inputs, target=None):
        if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise ModelError("ScheduledModule takes the model's input tensors, positionally")
        if self._plan is None:
            self._build(inputs)
        if not (self.training and torch.is_grad_enabled()):
            return plain_forward(self._plan.stages, inputs, target)
        self._check_inputs(inputs)
        step = StepRunner(
            self._plan.stages, self._plan, inputs, target, anchor=self._anchor(inputs[0].device),
            device=inputs[0].device,
            expected_bytes=[layer.output_bytes for layer in self._model.layers],
        )
        return step.attach(step.forward_part())


def _with_loss(stage_list, model):
    """The stages, with the model file's loss appended when stage building left it out.

    The convention (shared with ``edgeplan profile --loss``): a model whose
    document has a top-level ``loss`` ends with a sink layer named ``loss``,
    run as ``fn(*inputs, target)``.
    """
    spec = (model.document or {}).get("loss")
    if spec is None or (stage_list and getattr(stage_list[-1], "loss", False)):
        return stage_list
    from planner.torch.stages import Stage

    fn = _LOSSES.get(spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None)
    if fn is None:
        raise ModelError(f"model {model.name!r}: loss {spec!r} is not one the runtime knows (cross_entropy, mse, sum)")
    last = len(stage_list) - 1
    return list(stage_list) + [Stage(name="loss", fn=fn, inputs=(last,), loss=True)]


def _cross_entropy(out, target):
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))


_LOSSES = {
    "cross_entropy": _cross_entropy,
    "mse": lambda out, target: nn.functional.mse_loss(out, target),
    "sum": lambda out, target: out.sum(),
}
