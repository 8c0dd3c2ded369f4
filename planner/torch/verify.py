"""Check an edgeplan schedule on the real model against plain autograd: :func:`verify`.

:func:`verify` builds the stages ``edgeplan profile`` measured
(:func:`planner.torch.profile.prepare`), then trains ``steps`` SGD steps
twice from the same start, seed and input: with plain autograd over the
stages, and with the schedule run by the training executor
(:mod:`planner.torch.executor`, the code a training loop uses).  It compares
the first step's parameter gradients and the buffers (BatchNorm running
statistics), and the parameters after the last step.  The sink's gradient is
a seeded random tensor, or the loss's own when the model's sink is a loss.

Memory is the allocator's peak during the first step of each run, above what
was allocated before it, plus the model input (as ``peak_bytes`` counts it;
see :func:`planner.torch.profile.allocation_trace`); parameter gradients
are allocated before the step (fixed memory).  Step times are wall times of
the steps after the first (the first runs under the memory profiler), or the
first's when there is one step.
"""

import gc
import time
from dataclasses import dataclass

from planner.errors import ModelError
from planner.torch.inputs import require_torch
from planner.torch.measure import allocation_trace, seed_function
from planner.torch.profile import prepare

__all__ = ["VerifyResult", "verify", "GRAD_TOLERANCE", "MEMORY_TOLERANCE"]

GRAD_TOLERANCE = 1e-5
MEMORY_TOLERANCE = 0.02


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` found.

    Attributes
    ----------
    grads_match : bool
        Every first-step parameter gradient within ``GRAD_TOLERANCE x
        max(1, max |g|)`` of plain autograd's, the buffers equal, and the
        parameters after the last step within the same tolerance.
    max_abs_diff : float
        Largest absolute difference over every first-step parameter gradient.
    buffers_match : bool
        Running statistics (and other buffers) equal plain autograd's at the end.
    measured_peak_bytes : int
        Peak allocator memory of the schedule's first step above what was
        allocated before it, plus the model input (as ``peak_bytes`` counts it).
    predicted_peak_bytes : int or None
        The simulator's ``peak_bytes`` for the schedule.
    reference_peak_bytes : int
        The same measurement for a plain autograd step (input included).
    n_ops : int
        Ops executed in one step (the JSON key is ``ops``).
    device : str
    op_peaks : list of int or None
        With ``timeline``: the measured peak during each op (input included).
    predicted_op_peaks : list of int or None
        With ``timeline`` (through :func:`planner.torch.prepare.check_and_run`):
        the simulator's memory during each op.
    steps : int
        SGD steps per run.
    lr : float
        Their learning rate.
    max_param_diff : float
        Largest absolute difference between the parameters after the last step.
    step_seconds, reference_step_seconds : float
        Mean wall time of a step: under the schedule, under plain autograd.
    budget_bytes : int or None
        The activation budget the schedule was planned for.
    pageouts, pageins : int
        Paging ops run in one step (SPEC section 5).
    transfer_seconds : float
        Mean wall time of a step's pageouts and pageins (files in a temporary
        directory on the CPU, pinned host memory on CUDA).
    predicted_transfer_seconds : float or None
        What the schedule's storage figures predict for them.
    """

    grads_match: bool
    max_abs_diff: float
    buffers_match: bool
    measured_peak_bytes: int
    predicted_peak_bytes: object
    reference_peak_bytes: int
    n_ops: int
    device: str
    op_peaks: list = None
    steps: int = 1
    lr: float = 0.0
    max_param_diff: float = 0.0
    step_seconds: float = 0.0
    reference_step_seconds: float = 0.0
    budget_bytes: object = None
    pageouts: int = 0
    pageins: int = 0
    transfer_seconds: float = 0.0
    predicted_transfer_seconds: object = None
    predicted_op_peaks: list = None

    @property
    def relative_error(self):
        """``measured / predicted - 1`` (None without a prediction)."""
        if not self.predicted_peak_bytes:
            return None
        return self.measured_peak_bytes / self.predicted_peak_bytes - 1.0

    @property
    def fits_budget(self):
        """Measured peak within ``budget_bytes x (1 + MEMORY_TOLERANCE)`` (None without a budget)."""
        if self.budget_bytes is None:
            return None
        return self.measured_peak_bytes <= self.budget_bytes * (1.0 + MEMORY_TOLERANCE)

    @property
    def ok(self):
        """The verdict: gradients, buffers and parameters match, and the budget holds."""
        return self.grads_match and self.fits_budget is not False

    def to_dict(self):
        return {
            "grads_match": self.grads_match,
            "max_abs_diff": self.max_abs_diff,
            "buffers_match": self.buffers_match,
            "measured_peak_bytes": self.measured_peak_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "relative_error": self.relative_error,
            "reference_peak_bytes": self.reference_peak_bytes,
            "budget_bytes": self.budget_bytes,
            "memory_tolerance": MEMORY_TOLERANCE,
            "fits_budget": self.fits_budget,
            "steps": self.steps,
            "lr": self.lr,
            "max_param_diff": self.max_param_diff,
            "step_seconds": self.step_seconds,
            "reference_step_seconds": self.reference_step_seconds,
            "ops": self.n_ops,
            "device": self.device,
            "pageouts": self.pageouts,
            "pageins": self.pageins,
            "transfer_seconds": self.transfer_seconds,
            "predicted_transfer_seconds": self.predicted_transfer_seconds,
        }


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


def _upstream(out, seed, torch):
    """A provider of the sink's gradient: seeded, made when the backward reaches it."""
    shape, dtype, device = out.shape, out.dtype, out.device

    def make():
        gen = torch.Generator().manual_seed(seed + 1)
        return torch.randn(shape, generator=gen, dtype=dtype).to(device=device)

    return make


def _backward_from(out, stage_list, seed, torch):
    """The step's backward: the loss's own, or a seeded gradient the engine owns."""
    if getattr(stage_list[-1], "loss", False):
        out.backward()
    elif out.requires_grad:
        seed_function(torch)(out, _upstream(out, seed, torch)).backward()


def _train(step, params, *, steps, lr, device, torch):
    """Run ``steps`` SGD steps of ``step()``; return (first grads, peak, mean seconds).

    The first step runs under the allocator trace; the later ones are timed.
    """
    peak_box = {}

    def first():
        t0 = time.perf_counter()
        step(first=True)
        peak_box["seconds"] = time.perf_counter() - t0

    # No garbage collection inside the trace: freeing tensors of an earlier step there
    # would read as memory of this one.
    gc.collect()
    gc.disable()
    try:
        _, peak, _ = allocation_trace(first, device)
    finally:
        gc.enable()
    grads = [p.grad.detach().clone() for p in params]
    times = []
    for k in range(steps):
        if k:
            t0 = time.perf_counter()
            step(first=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-lr)
                p.grad.zero_()
    seconds = sum(times) / len(times) if times else peak_box["seconds"]
    return grads, peak, seconds


def _max_diff(a, b):
    diff, ok = 0.0, True
    for x, r in zip(a, b):
        d = (x - r).abs().max().item() if x.numel() else 0.0
        scale = max(1.0, r.abs().max().item() if r.numel() else 0.0)
        diff = max(diff, d)
        ok = ok and d <= GRAD_TOLERANCE * scale
    return diff, ok


def verify(obj, example, ops, *, dtype="float32", stages="auto", names=None, predicted=None,
           seed=0, device="cpu", timeline=False, steps=1, lr=0.01, budget=None, model=None,
           target=None, loss=None, predicted_transfer=None):
    """Train on a real model with a schedule and with plain autograd, and compare.

    Parameters
    ----------
    obj : torch.nn.Module or list of torch.nn.Module
        What ``edgeplan profile`` profiled (same ``stages`` mode).
    example : tuple of int, sequence of InputSpec, or str
        The inputs, as :func:`planner.torch.profile.make_example` takes them
        (a shape, ``--input`` specs, or ``FILE.py:FUNC``).
    ops : sequence of planner.schedule.Op
        A valid schedule (check it with the simulator first).
    dtype, stages : str, keyword-only
        As for :func:`planner.torch.profile.profile_model`.
    names : list of str, keyword-only
        The model file's layer names: they must be the stages' names, in order.
    predicted : int, keyword-only
        The simulator's ``peak_bytes``, echoed in the result.
    seed : int, keyword-only
    device : str, keyword-only
    timeline : bool, keyword-only
        Also record the measured peak during each op of the first step (CPU only).
    steps : int, keyword-only
        SGD steps per run, from the same start.
    lr : float, keyword-only
        Their learning rate.
    budget : int or None, keyword-only
        The schedule's ``budget_bytes``, checked against the measured peak.
    model : planner.model.Model, keyword-only
        The model file: its names (instead of ``names``), its loss, and its
        ``input_bytes`` and ``output_bytes`` (checked as the stages run).
    target : torch.Tensor, keyword-only
        The loss's target, when the model's sink is a loss (default: the
        example's target).
    loss : str or None, keyword-only
        A ``--loss`` kind (default: the model file's ``loss``): the last stage
        runs it on the target.
    predicted_transfer : float or None, keyword-only
        The predicted seconds of the schedule's pageouts and pageins, echoed
        next to the measured ones.

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
    ``2 x steps`` training steps; O(ops) stage calls per scheduled step.
    """
    torch = require_torch()
    setup = _setup(obj, example, dtype=dtype, stages=stages, seed=seed, device=device, names=names,
                   model=model, target=target, loss=loss)
    params = [p for p in setup.root.parameters() if p.requires_grad]
    initial = {k: v.detach().clone() for k, v in setup.root.state_dict().items()}
    for p in params:  # gradients are fixed memory: allocated before the step
        p.grad = torch.zeros_like(p)
    scheduled = _ScheduledStep(setup, ops, torch)

    def run(step, what):
        return _run(setup, step, what, params=params, initial=initial, steps=steps, lr=lr, torch=torch)

    ref_grads, ref_peak, ref_seconds, ref_state = run(_PlainStep(setup, torch), "the plain autograd step")
    op_peaks = _timeline(setup, scheduled, params=params, initial=initial, torch=torch) if timeline else None
    grads, measured, seconds, state = run(scheduled, "running the schedule")
    max_diff, grads_ok = _max_diff(grads, ref_grads)
    param_names = [k for k, v in setup.root.named_parameters() if v.requires_grad]
    param_diff, params_ok = _max_diff([state[k] for k in param_names], [ref_state[k] for k in param_names])
    buffers_ok = all(
        torch.equal(state[k], ref_state[k]) for k, _ in setup.root.named_buffers() if k in state
    )
    transfers = scheduled.transfers
    return VerifyResult(
        grads_match=grads_ok and buffers_ok and params_ok,
        max_abs_diff=float(max_diff),
        buffers_match=buffers_ok,
        measured_peak_bytes=int(measured),
        predicted_peak_bytes=predicted,
        reference_peak_bytes=int(ref_peak),
        n_ops=scheduled.n_ops,
        device=str(setup.device),
        op_peaks=op_peaks,
        steps=steps,
        lr=lr,
        max_param_diff=float(param_diff),
        step_seconds=seconds,
        reference_step_seconds=ref_seconds,
        budget_bytes=budget,
        pageouts=scheduled.pageouts,
        pageins=scheduled.pageins,
        transfer_seconds=sum(transfers) / len(transfers) if transfers else 0.0,
        predicted_transfer_seconds=predicted_transfer,
    )


@dataclass(frozen=True)
class _Setup:
    """What both runs of :func:`verify` share.

    The prepared stages and their inputs, the seed of the sink's gradient,
    ``x_bytes`` (what the caller holds through the step: inputs and target)
    and ``expected`` (the model file's ``output_bytes`` per layer, or None).
    """

    device: object
    inputs: tuple
    root: object
    stages: list
    target: object
    seed: int
    x_bytes: int
    expected: object


def _setup(obj, example, *, dtype, stages, seed, device, names, model, target, loss):
    """Prepare ``obj`` and check its stages and inputs against the model file or ``names``."""
    from planner.torch.capture import document_output
    from planner.torch.executor import _with_loss, check_names

    if loss is None and model is not None:
        loss = (model.document or {}).get("loss")
    output = document_output(model.document) if model is not None else None
    prep = prepare(obj, example, dtype=dtype, stages=stages, seed=seed, device=device, loss=loss, output=output)
    stage_list = prep.stages
    target = prep.target if target is None else target
    by_caller = list(prep.inputs) + ([target] if target is not None else [])
    x_bytes = sum(t.numel() * t.element_size() for t in by_caller)
    expected = None
    if model is not None:
        stage_list = _with_loss(stage_list, model)
        names = [layer.name for layer in model.layers]
        expected = [layer.output_bytes for layer in model.layers]
        # input_bytes also holds what the loss value keeps beyond its scalar (a loss model).
        if x_bytes > model.input_bytes or (loss is None and x_bytes != model.input_bytes):
            raise ModelError(
                f"the inputs are {x_bytes} bytes; the model file was profiled for "
                f"{model.input_bytes}: use the same --input/--example"
            )
    if names is not None:
        try:
            check_names(names, stage_list)
        except ModelError as exc:
            raise ModelError(str(exc).replace("this model", "this TARGET", 1)) from None
    return _Setup(device=prep.device, inputs=prep.inputs, root=prep.root, stages=stage_list,
                  target=target, seed=seed, x_bytes=x_bytes, expected=expected)


class _PlainStep:
    """A training step under plain autograd over the stages."""

    def __init__(self, setup, torch):
        self.setup = setup
        self.torch = torch

    def __call__(self, first):
        from planner.torch.executor import plain_forward

        setup = self.setup
        out = plain_forward(setup.stages, setup.inputs, setup.target)
        _backward_from(out, setup.stages, setup.seed, self.torch)


class _ScheduledStep:
    """A training step under the schedule, run by the executor.

    After each call ``n_ops``, ``pageouts`` and ``pageins`` count its ops, and
    ``transfers`` lists the paging seconds of every untraced call; a traced
    call (``traced=True``) appends the time of its start and of each op's end
    to ``marks``.
    """

    def __init__(self, setup, ops, torch):
        from planner.torch.executor import _Plan

        self.setup = setup
        self.torch = torch
        self.plan = _Plan(setup.stages, ops)
        self.anchor = torch.zeros((), device=setup.device, requires_grad=True)
        self.marks = []
        self.transfers = []
        self.n_ops = self.pageouts = self.pageins = 0

    def __call__(self, first, traced=False):
        from planner.torch.executor import StepRunner

        setup = self.setup
        on_op = (lambda n: self.marks.append(time.time_ns())) if traced else None
        if on_op:
            self.marks.append(time.time_ns())
        runner = StepRunner(setup.stages, self.plan, setup.inputs, setup.target, anchor=self.anchor,
                            device=setup.device, expected_bytes=setup.expected, on_op=on_op)
        out = runner.attach(runner.forward_part())
        _backward_from(out, setup.stages, setup.seed, self.torch)
        self.n_ops = runner.count
        self.pageouts, self.pageins = runner.pager.pageouts, runner.pager.pageins
        if not traced:
            self.transfers.append(runner.pager.seconds)


def _run(setup, step, what, *, params, initial, steps, lr, torch):
    """``steps`` SGD steps of ``step`` from the start; (first grads, peak, seconds, state at the end).

    The peak includes the caller's inputs (``x_bytes``).
    """
    setup.root.load_state_dict(initial)
    for p in params:
        p.grad.zero_()
    torch.manual_seed(setup.seed)
    try:
        grads, peak, seconds = _train(step, params, steps=steps, lr=lr, device=setup.device, torch=torch)
    except RuntimeError as exc:
        raise ModelError(f"{what} failed: {str(exc).splitlines()[0]}") from None
    state = {k: v.detach().clone() for k, v in setup.root.state_dict().items()}
    return grads, peak + setup.x_bytes, seconds, state


def _timeline(setup, scheduled, *, params, initial, torch):
    """The measured peak during each op of one more scheduled step, traced (None on CUDA).

    The step's gradients are zeroed after it; the next run starts from ``initial``.
    """
    setup.root.load_state_dict(initial)
    torch.manual_seed(setup.seed)
    _, _, _, trace = allocation_trace(lambda: scheduled(True, traced=True), setup.device, events=True)
    for p in params:
        p.grad.zero_()
    return _per_op_peaks(trace, scheduled.marks, setup.x_bytes) if trace else None
