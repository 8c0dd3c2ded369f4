"""Run an edgeplan schedule in PyTorch and check it against plain autograd.

:func:`run_schedule` executes a schedule's ops, in order, on the real stages of
a model (the layers of its model file, see
:func:`planner.io.torch_profile.build_stages`):

- ``forward L save=true``: L runs on its inputs entered into autograd
  through a node that holds no tensor and hands the input gradients back,
  keeping its autograd graph (what autograd saves is its saved data); only the
  graph's gradient edge is kept, not the output tensor, so that ``free``
  really drops the output;
- ``forward L save=false``: L runs under ``torch.no_grad()``;
- ``backward L``: ``torch.autograd.backward`` from L's gradient edge with L's
  output gradient; the gradients of its inputs are handed to their producers
  (summed when a producer has several consumers); parameter gradients
  accumulate as usual;
- ``free L``: drops L's output.

Every forward of a stage, the first and each recomputation, starts from the
RNG state the stage saw in the reference run (set before it runs; no fork,
whose saved state would be an allocation of its own), so
dropout masks are reproduced.  BatchNorm running statistics are handled by
snapshot and restore: a recomputation starts from the buffers the stage's
first forward saw and the buffers are put back to what the first forward left,
so running statistics are updated exactly once, as in plain autograd (the
final buffers are compared with the reference too).

:func:`verify` runs plain autograd on the same input, seed and upstream
gradient, runs the schedule, and compares every parameter gradient; it
measures the peak memory of the schedule's run from the allocator (see
:func:`planner.io.torch_profile.allocation_trace`).
"""

from dataclasses import dataclass

from planner.errors import ModelError, ScheduleError
from planner.io.torch_profile import (
    allocation_trace,
    prepare,
    require_torch,
    seed_function,
    stage_inputs,
)
from planner.schedule import OpKind

__all__ = ["VerifyResult", "run_schedule", "reference_step", "verify", "GRAD_TOLERANCE"]

GRAD_TOLERANCE = 1e-5


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` found.

    Attributes
    ----------
    grads_match : bool
        Every parameter gradient within ``GRAD_TOLERANCE x max(1, max |g|)``
        of plain autograd's, and the final buffers equal.
    max_abs_diff : float
        Largest absolute difference over every parameter gradient.
    buffers_match : bool
        Running statistics (and other buffers) equal plain autograd's.
    measured_peak_bytes : int
        Peak allocator memory of the schedule's run above what was allocated
        before it, plus the model input (as ``peak_bytes`` counts it).
    predicted_peak_bytes : int or None
        The simulator's ``peak_bytes`` for the schedule.
    reference_peak_bytes : int
        The same measurement for a plain autograd step (input included).
    ops : int
        Ops executed.
    device : str
    op_peaks : list of int or None
        With ``timeline``: the measured peak during each op (input included).
    """

    grads_match: bool
    max_abs_diff: float
    buffers_match: bool
    measured_peak_bytes: int
    predicted_peak_bytes: object
    reference_peak_bytes: int
    ops: int
    device: str
    op_peaks: list = None

    @property
    def relative_error(self):
        """``measured / predicted - 1`` (None without a prediction)."""
        if not self.predicted_peak_bytes:
            return None
        return self.measured_peak_bytes / self.predicted_peak_bytes - 1.0

    def to_dict(self):
        return {
            "grads_match": self.grads_match,
            "max_abs_diff": self.max_abs_diff,
            "buffers_match": self.buffers_match,
            "measured_peak_bytes": self.measured_peak_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "relative_error": self.relative_error,
            "reference_peak_bytes": self.reference_peak_bytes,
            "ops": self.ops,
            "device": self.device,
        }


def _upstream_gradient(shape, dtype, device, seed, torch):
    """The loss gradient for the sink's output, made in place (no temporary on ``device``)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(shape, generator=gen, dtype=dtype).to(device=device)


def _rng_state(device, torch):
    state = [torch.get_rng_state()]
    if device.type == "cuda":
        state.append(torch.cuda.get_rng_state(device))
    return state


def _set_rng_state(state, device, torch):
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def _copy_into(targets, values):
    for t, v in zip(targets, values):
        t.data.copy_(v)


def _run_stage(stage, tensors, target):
    return stage.fn(*tensors, target) if stage.loss else stage.fn(*tensors)


def _sink_gradient(stages, shape, dtype, device, seed, torch):
    """The loss's own gradient (1) for a loss sink; a seeded random one otherwise."""
    if stages[-1].loss:
        return torch.ones(shape, dtype=dtype, device=device)
    return _upstream_gradient(shape, dtype, device, seed, torch)


def reference_step(stages, x, *, seed, device, record=True, target=None):
    """Plain autograd over the stages (no detaching) on ``x``; upstream gradient seeded.

    x : torch.Tensor or tuple of torch.Tensor
        The model inputs.
    target : torch.Tensor or None, keyword-only
        What a loss stage reads besides the output.

    record : bool, keyword-only
        Keep the RNG states and buffers (False: a plain step, to measure it).

    Returns
    -------
    dict
        ``rng``: the RNG state before each stage, ``buffers_before`` /
        ``buffers_after``: each stage's buffers around its forward, and
        ``output_meta``: (shape, dtype) of each output.  Parameter gradients
        are accumulated into ``.grad`` as usual.
    """
    torch = require_torch()
    torch.manual_seed(seed)
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    rng, before, after, meta = [], [], [], []
    outputs = []
    last_use = {}
    for k, stage in enumerate(stages):
        for p in stage.inputs:
            last_use[p] = k
    for k, stage in enumerate(stages):
        if record:
            rng.append(_rng_state(device, torch))
            before.append([b.detach().clone() for b in stage.buffers])
        args = stage_inputs(stage, outputs, xs)
        y = _run_stage(stage, args, target)
        if not isinstance(y, torch.Tensor):
            raise ModelError(f"stage {stage.name!r} did not return a tensor")
        if record:
            after.append([b.detach().clone() for b in stage.buffers])
            meta.append((tuple(y.shape), y.dtype))
        outputs.append(y)
        del args, y
        for p in stage.inputs:  # drop what no later stage reads, as a plain forward does
            if p >= 0 and last_use[p] == k:
                outputs[p] = None
    sink = outputs[-1]
    del outputs
    grad = _sink_gradient(stages, sink.shape, sink.dtype, device, seed, torch)
    if sink.requires_grad:
        torch.autograd.backward([sink], [grad])
    return {"rng": rng, "buffers_before": before, "buffers_after": after, "output_meta": meta}


def run_schedule(stages, x, ops, reference, *, seed, device, on_op=None, target=None):
    """Execute ``ops`` on the stages.

    Parameters
    ----------
    stages : list of Stage
    x : torch.Tensor or tuple of torch.Tensor
        The model inputs (do not require grad).
    target : torch.Tensor or None, keyword-only
        What a loss stage reads besides the output.
    ops : sequence of planner.schedule.Op
        A valid schedule for a model whose layers are these stages.
    reference : dict
        What :func:`reference_step` returned (RNG states, buffers).
    seed : int, keyword-only
    device : torch.device, keyword-only
    on_op : callable or None, keyword-only
        Called with the op's index after each op.

    Returns
    -------
    int
        Number of ops executed.

    Raises
    ------
    ScheduleError
        An op whose tensors are missing (the schedule breaks SPEC section 3).

    Notes
    -----
    O(ops) stage calls.  Parameter gradients accumulate into ``.grad``.
    """
    torch = require_torch()
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)

    outputs = {}  # A
    saved = {}  # S: leaves and the gradient edge of the output
    grads = {}  # G
    first_done = set()
    sink = len(stages) - 1
    meta = reference["output_meta"]

    def missing(n, op, what):
        return ScheduleError(
            f"op #{n} ({op.kind.value} {stages[op.layer].name}): {what}", index=n,
            layer=stages[op.layer].name,
        )

    entry = _entry_function(torch)
    anchor = torch.zeros((), device=device, requires_grad=True)
    ops = list(ops)
    seed_value = seed
    seed = seed_function(torch)
    early_free = set()
    count = 0
    for n, op in enumerate(ops):
        i = op.layer
        stage = stages[i]
        if op.kind is OpKind.FREE:
            if n in early_free:
                pass
            elif i == sink and stage.loss and i in outputs:
                loss_value = outputs.pop(i)  # noqa: F841 - a training loop holds the loss to the end
            elif outputs.pop(i, None) is None:
                raise missing(n, op, "its output is not in memory")
        elif op.kind is OpKind.FORWARD:
            try:
                tensors = stage_inputs(stage, outputs, xs)
            except KeyError:
                raise missing(n, op, "an input is not in memory") from None
            first = i not in first_done
            _set_rng_state(reference["rng"][i], device, torch)
            if not first:
                _copy_into(stage.buffers, reference["buffers_before"][i])
            if op.save:
                boxes, entries = _enter(stage, tensors, entry, anchor)
                y = _run_stage(stage, entries, target)
                gbox = []
                root = seed(y, gbox.pop) if y.requires_grad else None
                saved[i] = (boxes, root, gbox)
                outputs[i] = y.detach()
                del y, entries, root
            else:
                with torch.no_grad():
                    outputs[i] = _run_stage(stage, tensors, target)
            del tensors
            if not first:
                _copy_into(stage.buffers, reference["buffers_after"][i])
            first_done.add(i)
        else:
            if i not in saved:
                raise missing(n, op, "its saved data is not in memory")
            boxes, root, gbox = saved.pop(i)
            if i == sink:
                shape, dtype = meta[i]
                gbox.append(_sink_gradient(stages, shape, dtype, device, seed_value, torch))
            else:
                g = grads.pop(i, None)
                if g is None:
                    shape, dtype = meta[i]
                    g = torch.zeros(shape, dtype=dtype, device=device)
                gbox.append(g)
                del g
            k = n + 1
            while k < len(ops) and ops[k].kind is OpKind.FREE:
                if ops[k].layer == i and i in outputs:
                    # A free of L among the ones that follow its backward is done
                    # as autograd does it: the output goes as soon as the
                    # backward has used it.
                    if i == sink and stage.loss:
                        loss_value = outputs.pop(i)  # noqa: F841 - held to the end, as a training loop does
                    else:
                        del outputs[i]
                    early_free.add(k)
                    break
                k += 1
            if root is not None:
                root.backward()
            gbox.clear()
            del root, gbox
            _hand_back(stage, boxes, grads)
            del boxes
        count += 1
        if on_op is not None:
            on_op(n)
    return count


def _hand_back(stage, boxes, grads):
    """Move each input gradient to its producer (summed over consumers)."""
    for p, box in zip(stage.inputs, boxes):
        if p < 0 or not box or box[0] is None:
            continue
        if p in grads:
            grads[p].add_(box[0])
        else:
            grads[p] = box[0]
        box.clear()


def _enter(stage, tensors, entry, anchor):
    """The stage's inputs entered into autograd, and one gradient box per input.

    A function of its own so that no loop variable outlives the call and keeps
    an input alive after its ``free``.
    """
    boxes = [[] for _ in tensors]
    entries = [
        entry(t, anchor, box) if p >= 0 and t.is_floating_point() else t
        for p, t, box in zip(stage.inputs, tensors, boxes)
    ]
    return boxes, entries


def _entry_function(torch):
    """An autograd entry point that hands its input's gradient to a box.

    A stage run with save reads its inputs through it, instead of through
    leaves that require grad: a leaf is held by its ``AccumulateGrad`` node for
    as long as the graph lives, which would keep a producer's output alive
    after ``free`` even when the stage's backward does not read it.  The node
    made here holds no tensor; ``anchor`` (a scalar that requires grad) only
    makes its output require grad.
    """

    class _Entry(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t, anchor, box):
            ctx.box = box
            return t.detach()

        @staticmethod
        def backward(ctx, grad):
            ctx.box.append(grad)
            return None, None, None

    return _Entry.apply


def _per_op_peaks(trace, marks, x_bytes):
    """The highest allocator level between consecutive marks (one window per op)."""
    peaks = []
    k = 0
    level = 0
    for start, end in zip(marks, marks[1:]):
        top = level
        while k < len(trace) and trace[k][0] <= end:
            if trace[k][0] >= start:
                top = max(top, trace[k][1])
            level = trace[k][1]
            k += 1
        peaks.append(max(top, level) + x_bytes)
    return peaks


def _measure(fn, device, x_bytes):
    _, peak, _ = allocation_trace(fn, device)
    return peak + x_bytes


def verify(obj, shape, ops, *, dtype="float32", stages="auto", names=None, predicted=None,
           seed=0, device="cpu", timeline=False, loss=None):
    """Run a schedule on a real model and compare it with plain autograd.

    Parameters
    ----------
    obj : torch.nn.Module or list of torch.nn.Module
        What ``edgeplan profile`` profiled (same ``stages`` mode).
    shape : str, sequence of InputSpec, or tuple of int
        The example (see :func:`planner.io.torch_profile.make_example`): the
        input shape, the ``--input`` specs or ``--example FILE.py:FUNC``.
    ops : sequence of planner.schedule.Op
        A valid schedule (check it with the simulator first).
    dtype, stages : str, keyword-only
        As for :func:`planner.io.torch_profile.profile_model`.
    names : list of str, keyword-only
        The model file's layer names: they must be the stages' names, in order.
    predicted : int, keyword-only
        The simulator's ``peak_bytes``, echoed in the result.
    seed : int, keyword-only
    device : str, keyword-only
    timeline : bool, keyword-only
        Also record the measured peak during each op (CPU only).
    loss : str or None, keyword-only
        The model file's ``loss``: its last stage runs it on the target.

    Returns
    -------
    VerifyResult

    Raises
    ------
    ModelError
        The model file's layers are not the stages of ``obj``, or a stage fails.
    ScheduleError
        The schedule misses tensors (an invalid schedule).

    Notes
    -----
    Two training steps (reference, then the schedule), each under an
    allocator trace; O(ops) stage calls.
    """
    torch = require_torch()
    torch_dtype, dev, x, root, stage_list, target = prepare(
        obj, shape, dtype=dtype, stages=stages, seed=seed, device=device, loss=loss
    )
    if names is not None:
        got = [s.name for s in stage_list]
        if list(names) != got:
            diff = next((k for k, (a, b) in enumerate(zip(names, got)) if a != b), min(len(names), len(got)))
            raise ModelError(
                f"the model file does not describe this TARGET: {len(names)} layers vs "
                f"{len(got)} stages; first difference at #{diff}: "
                f"{names[diff] if diff < len(names) else '(none)'!r} vs "
                f"{got[diff] if diff < len(got) else '(none)'!r} (profile it with the same "
                "--input and --stages)"
            )
    params = [p for p in root.parameters() if p.requires_grad]
    initial = {k: v.detach().clone() for k, v in root.state_dict().items()}
    for p in params:  # gradients are fixed memory: allocated before the step
        p.grad = torch.zeros_like(p)
    x_bytes = sum(t.numel() * t.element_size() for t in list(x) + ([target] if target is not None else []))

    try:
        reference = reference_step(stage_list, x, seed=seed, device=dev, target=target)
    except RuntimeError as exc:
        raise ModelError(f"the reference step failed: {str(exc).splitlines()[0]}") from None
    ref_grads = [p.grad.detach().clone() for p in params]
    ref_state = {k: v.detach().clone() for k, v in root.state_dict().items()}

    def restart():
        root.load_state_dict(initial)
        for p in params:
            p.grad.zero_()

    # The same plain step again, without bookkeeping, for its memory.
    restart()
    reference_peak = _measure(
        lambda: reference_step(stage_list, x, seed=seed, device=dev, record=False, target=target),
        dev, x_bytes,
    )
    restart()
    count_box = {}
    marks = []

    def run():
        import time

        marks.append(time.time_ns())
        count_box["n"] = run_schedule(
            stage_list, x, ops, reference, seed=seed, device=dev, target=target,
            on_op=(lambda n: marks.append(time.time_ns())) if timeline else None,
        )

    outer_rng = _rng_state(dev, torch)
    try:
        _, peak, _, trace = allocation_trace(run, dev, events=True)
    except RuntimeError as exc:  # a stage failing under the schedule (dtype, device, ...)
        raise ModelError(f"running the schedule failed: {str(exc).splitlines()[0]}") from None
    finally:
        _set_rng_state(outer_rng, dev, torch)
    measured = peak + x_bytes
    op_peaks = _per_op_peaks(trace, marks, x_bytes) if timeline and trace else None
    max_diff = 0.0
    ok = True
    for p, r in zip(params, ref_grads):
        diff = (p.grad - r).abs().max().item() if p.grad.numel() else 0.0
        scale = max(1.0, r.abs().max().item() if r.numel() else 0.0)
        max_diff = max(max_diff, diff)
        if not diff <= GRAD_TOLERANCE * scale:
            ok = False
    state = root.state_dict()
    buffers_ok = all(
        torch.equal(state[k], ref_state[k]) for k, _ in root.named_buffers() if k in state
    )
    return VerifyResult(
        grads_match=ok and buffers_ok,
        max_abs_diff=float(max_diff),
        buffers_match=buffers_ok,
        measured_peak_bytes=int(measured),
        predicted_peak_bytes=predicted,
        reference_peak_bytes=int(reference_peak),
        ops=count_box.get("n", 0),
        device=str(dev),
        op_peaks=op_peaks,
    )
