"""Check an edgeplan schedule on the real model against plain autograd: :func:`verify`.

:func:`verify` is the executor's own check: it trains ``steps`` SGD steps
twice from the same start, seed and input, with the schedule run by a
:class:`~planner.torch.executor.ScheduledModule` (the code a training loop
runs, through its public interface only), and with plain autograd on a deep
copy of the user's own module, untouched, with the same loss (read by
:func:`planner.torch.loss.model_loss`, made by
:func:`planner.torch.loss.make_loss`).  So a capture that gets the model
wrong (a random draw frozen into a constant) shows as a difference.  It
compares the first step's parameter gradients and the buffers (BatchNorm
running statistics), and the parameters after the last step.  The sink's
gradient is a seeded random tensor, or the loss's own when the model's sink
is a loss.

Memory is the allocator's peak during the first step of each run, above what
was allocated before it, plus the model input (as ``peak_bytes`` counts it;
see :func:`planner.torch.profile.allocation_trace`); parameter gradients
are allocated before the step (fixed memory).  Step times are wall times of
the steps after the first (the first runs under the memory profiler), or the
first's when there is one step; their ratio is the measured overhead, set
against the simulator's (``predicted_overhead``).
"""

import copy
import gc
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

from planner.errors import ModelError
from planner.schedule import Schedule
from planner.torch.capture import OWN_LOSS, document_output
from planner.torch.executor import ScheduledModule
from planner.torch.export import pick_output
from planner.torch.inputs import ExampleInputs, require_torch
from planner.torch.loss import make_loss, model_loss
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
    op_seconds : list of float or None
        With ``timeline``: the measured wall time of each op.
    predicted_overhead : float or None
        The simulator's recomputation overhead for the schedule (its compute
        over store-all's, minus 1); ``measured_overhead`` is the step times'.
    compile : str or None
        The ``torch.compile`` backend the scheduled run's stages ran with.
    notes : tuple of str
        What the executor warned about (a model file profiled eager for a
        compiled run, or the other way round).
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
    op_seconds: list = None
    predicted_overhead: object = None
    compile: object = None
    notes: tuple = ()

    @property
    def measured_overhead(self):
        """``step_seconds / reference_step_seconds - 1`` (None without a reference time)."""
        if not self.reference_step_seconds:
            return None
        return self.step_seconds / self.reference_step_seconds - 1.0

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
            "measured_overhead": self.measured_overhead,
            "predicted_overhead": self.predicted_overhead,
            "ops": self.n_ops,
            "device": self.device,
            "pageouts": self.pageouts,
            "pageins": self.pageins,
            "transfer_seconds": self.transfer_seconds,
            "predicted_transfer_seconds": self.predicted_transfer_seconds,
            "compile": self.compile,
            "notes": list(self.notes),
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


def _backward_from(out, has_loss, seed, torch):
    """The step's backward: the loss's own, or a seeded gradient the engine owns."""
    if has_loss:
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
        step()
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
            step()
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
           target=None, loss=None, output=None, predicted_transfer=None, predicted_overhead=None, compile=False):
    """Train on a real model with a schedule and with plain autograd, and compare.

    The schedule runs in a :class:`~planner.torch.executor.ScheduledModule`
    wrapping ``obj``, the code a training loop runs; the reference is a deep
    copy of ``obj`` itself, untouched, under plain autograd with the same loss.

    Parameters
    ----------
    obj : torch.nn.Module or list of torch.nn.Module
        What ``edgeplan profile`` profiled (same ``stages`` mode).
    example : tuple of int, sequence of InputSpec, str or callable
        The inputs, as :func:`planner.torch.inputs.make_example` takes them
        (a shape, ``--input`` specs, ``FILE.py:FUNC`` or FUNC).
    ops : sequence of planner.schedule.Op
        A valid schedule (check it with the simulator first).
    dtype, stages : str, keyword-only
        As for :func:`planner.torch.profile.profile_model`.
    names : list of str, keyword-only
        Without ``model``: the layer names the schedule was made for; they
        must be the stages' names, in order.
    predicted : int, keyword-only
        The simulator's ``peak_bytes``, echoed in the result.
    seed : int, keyword-only
    device : str, keyword-only
    timeline : bool, keyword-only
        Also record the measured peak (CPU only) and time during each op of
        the first step.
    steps : int, keyword-only
        SGD steps per run, from the same start.
    lr : float, keyword-only
        Their learning rate.
    budget : int or None, keyword-only
        The schedule's ``budget_bytes``, checked against the measured peak.
    model : planner.model.Model, keyword-only
        The model file the schedule was made for: its names, its loss, and
        its ``input_bytes`` and ``output_bytes`` (checked as the stages run).
        Without it, an estimate profile of ``obj`` (nothing runs) stands in.
    target : torch.Tensor, keyword-only
        The loss's target, when the model's sink is a loss (default: the
        example's target).
    loss : str or None, keyword-only
        A ``--loss`` kind (default: the model file's ``loss``); ``output``:
        the model's own loss field.
    output : str or None, keyword-only
        The field or index of the model's result the loss reads (default:
        the model file's; see :func:`planner.torch.export.pick_output`).
    predicted_transfer : float or None, keyword-only
        The predicted seconds of the schedule's pageouts and pageins, echoed
        next to the measured ones.
    predicted_overhead : float or None, keyword-only
        The simulator's recomputation overhead (compute over store-all's,
        minus 1), echoed next to the measured one.
    compile : bool or str, keyword-only
        Run the schedule's stages compiled (``ScheduledModule(...,
        compile=)``); plain autograd runs the module eager.  The compiled
        run's first step is not measured (it compiles), and buffers are
        compared within the gradients' tolerance (compiled kernels round
        otherwise).

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
    if loss is None and model is not None:
        loss = model_loss(model)
    if output is None and model is not None:
        output = document_output(model.document)
    prep = prepare(obj, example, dtype=dtype, stages=stages, seed=seed, device=device, loss=loss, output=output)
    inputs = prep.inputs
    target = prep.target if target is None else target
    x_bytes = sum(t.numel() * t.element_size() for t in list(inputs) + ([target] if target is not None else []))
    if model is None:
        model = _estimate(obj, example, dtype=dtype, stages=stages, seed=seed, loss=loss, output=output)
        if names is not None and list(names) != [layer.name for layer in model.layers]:
            raise ModelError(f"the model file does not describe this TARGET: its layers are {_few(names)}, "
                             f"TARGET's stages {_few(layer.name for layer in model.layers)} (profile it with "
                             "the same inputs and stages)")
    elif x_bytes > model.input_bytes or (loss is None and x_bytes != model.input_bytes):
        # input_bytes also holds what the loss value keeps beyond its scalar (a loss model).
        raise ModelError(
            f"the inputs are {x_bytes} bytes; the model file was profiled for "
            f"{model.input_bytes}: use the same --input/--example"
        )
    reference = copy.deepcopy(torch.nn.Sequential(*obj) if isinstance(obj, (list, tuple)) else obj)
    schedule = Schedule(model_name=model.name, fingerprint=model.fingerprint, strategy="verify", ops=tuple(ops))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            wrapped = ScheduledModule(obj, model, schedule, stages=stages, example=inputs, compile=compile)
    except ModelError as exc:
        raise ModelError(str(exc).replace("this model", "this TARGET", 1)) from None
    notes = tuple(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    wrapped.train()
    has_loss = loss is not None
    loss_fn = make_loss(loss) if loss not in (None, OWN_LOSS) else None  # output: the model's own loss
    picked = "loss" if loss == OWN_LOSS and output is None else output
    args, kwargs = inputs.call() if isinstance(inputs, ExampleInputs) else (tuple(inputs), {})
    runs = _Runs(seed=seed, steps=steps, lr=lr, device=prep.device, x_bytes=x_bytes, torch=torch)

    def plain_step():
        out = pick_output(reference(*args, **kwargs), picked, model_name=model.name)
        _backward_from(loss_fn(out, target) if loss_fn is not None else out, has_loss, seed, torch)

    transfers = []

    def scheduled_step():
        _backward_from(wrapped(*inputs, target=target), has_loss, seed, torch)
        transfers.append(wrapped.last_step.pager.seconds)

    ref = runs.run(reference, plain_step, "the plain autograd step")
    initial = {k: v.detach().clone() for k, v in wrapped.module.state_dict().items()}
    if wrapped.compiled:  # stages compile at their first call: not inside the measured step
        runs.warm_up(wrapped.module, scheduled_step)
        wrapped.module.load_state_dict(initial)
        transfers.clear()
    op_peaks = op_seconds = None
    if timeline:
        op_peaks, op_seconds = runs.timeline(wrapped, scheduled_step)
        wrapped.module.load_state_dict(initial)
        transfers.clear()
    got = runs.run(wrapped.module, scheduled_step, "running the schedule")
    max_diff, grads_ok = _max_diff(got.grads, ref.grads)
    param_names = [k for k, v in reference.named_parameters() if v.requires_grad]
    param_diff, params_ok = _max_diff([got.state[k] for k in param_names], [ref.state[k] for k in param_names])
    buffer_names = [k for k, _ in reference.named_buffers() if k in got.state]
    if wrapped.compiled:  # compiled kernels round otherwise: running statistics within the tolerance
        buffers_ok = _max_diff([got.state[k] for k in buffer_names], [ref.state[k] for k in buffer_names])[1]
    else:
        buffers_ok = all(torch.equal(got.state[k], ref.state[k]) for k in buffer_names)
    last = wrapped.last_step
    return VerifyResult(
        grads_match=grads_ok and buffers_ok and params_ok,
        max_abs_diff=float(max_diff),
        buffers_match=buffers_ok,
        measured_peak_bytes=int(got.peak),
        predicted_peak_bytes=predicted,
        reference_peak_bytes=int(ref.peak),
        n_ops=last.count,
        device=str(prep.device),
        op_peaks=op_peaks,
        op_seconds=op_seconds,
        steps=steps,
        lr=lr,
        max_param_diff=float(param_diff),
        step_seconds=got.seconds,
        reference_step_seconds=ref.seconds,
        predicted_overhead=predicted_overhead,
        budget_bytes=budget,
        pageouts=last.pager.pageouts,
        pageins=last.pager.pageins,
        transfer_seconds=sum(transfers) / len(transfers) if transfers else 0.0,
        predicted_transfer_seconds=predicted_transfer,
        compile=wrapped.compiled,
        notes=notes,
    )


def _few(names, limit=4):
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"{len(names)} ({shown}{', ...' if len(names) > limit else ''})"


def _estimate(obj, example, *, dtype, stages, seed, loss, output):
    """The model of ``obj`` from an estimate profile (fake tensors: nothing runs)."""
    from planner.model import model_from_dict
    from planner.torch.profile import profile_model

    doc = profile_model(copy.deepcopy(obj), example, dtype=dtype, stages=stages, estimate=True, seed=seed,
                        loss=loss, output=output)
    return model_from_dict(doc, source_name="estimate of the target")


class _Run(NamedTuple):
    grads: list
    peak: int
    seconds: float
    state: dict


@dataclass(frozen=True)
class _Runs:
    """How both runs of :func:`verify` train: seed, steps, learning rate, device, the caller's bytes."""

    seed: int
    steps: int
    lr: float
    device: object
    x_bytes: int
    torch: object

    def run(self, module, step, what):
        """``steps`` SGD steps of ``step`` on ``module``'s parameters; the peak includes the caller's inputs."""
        torch = self.torch
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:  # gradients are fixed memory: allocated before the step
            p.grad = torch.zeros_like(p)
        torch.manual_seed(self.seed)
        try:
            grads, peak, seconds = _train(step, params, steps=self.steps, lr=self.lr, device=self.device,
                                          torch=torch)
        except RuntimeError as exc:
            raise ModelError(f"{what} failed: {str(exc).splitlines()[0]}") from None
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return _Run(grads, peak + self.x_bytes, seconds, state)

    def warm_up(self, module, step):
        """One step of ``step``, measured by nothing; ``module``'s gradients are zeroed after it."""
        try:
            step()
        except RuntimeError as exc:
            raise ModelError(f"compiling the stages failed: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
        for p in module.parameters():
            p.grad = None

    def timeline(self, wrapped, step):
        """The measured peak (None on CUDA) and seconds of each op of one more scheduled step.

        The step's gradients are zeroed after it.
        """
        torch = self.torch
        params = [p for p in wrapped.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.zeros_like(p)
        marks = [time.time_ns()]
        wrapped.on_op = lambda n: marks.append(time.time_ns())
        torch.manual_seed(self.seed)
        try:
            _, _, _, trace = allocation_trace(step, self.device, events=True)
        finally:
            wrapped.on_op = None
        for p in params:
            p.grad = None
        seconds = [(b - a) / 1e9 for a, b in zip(marks, marks[1:])]
        return (_per_op_peaks(trace, marks, self.x_bytes) if trace else None), seconds
