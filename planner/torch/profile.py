"""Profile a PyTorch model into an ``edgeplan-model/1`` document.

The parts live beside it in :mod:`planner.torch`: ``inputs`` (TARGET,
``--input``, ``--example``), ``capture`` and ``fx_trace`` (stages), ``loss``
(the loss as the sink) and ``measure`` (what each stage costs).

Only the one TARGET named by the user is imported (see :func:`load_target`).
torch is imported inside the functions: ``pip install edgeplan[torch]``.
"""

from typing import NamedTuple

from planner.errors import ModelError, OptionError
from planner.model import INPUT, MODEL_FORMAT, model_from_dict
from planner.torch.capture import OWN_LOSS, build_stages
from planner.torch.inputs import (
    FLOAT_DTYPES,
    load_target,
    make_example,
    require_torch,
    torch_device,
)
from planner.torch.loss import default_target, make_loss
from planner.torch.measure import (
    call_cost,
    without_call_cost,
    compile_backend,
    compiled_stages,
    estimate_stages,
    measure_stage,
    params_bytes,
    robust_time,
    stage_inputs,
    tensor_bytes,
    time_stages,
)
from planner.torch.stages import is_chain

__all__ = ["Prepared", "prepare", "profile_model", "profile_stages", "profile_target", "DTYPES",
           "LOSS_NOT_MODELLED"]

DTYPES = FLOAT_DTYPES
LOSS_NOT_MODELLED = (
    "the loss's memory is not modelled (the sink is the model's output): give --loss "
    "cross_entropy|mse|sum|FILE.py:FUNC to put it in the model"
)


class Prepared(NamedTuple):
    """What :func:`prepare` made: the same stages and example for profile and verify."""

    dtype: object
    device: object
    inputs: tuple
    root: object
    stages: list
    target: object


def _model_output(stages, inputs, root):
    """The model's output on ``inputs`` (no grad; module state restored)."""
    torch = require_torch()
    state = {k: v.detach().clone() for k, v in root.state_dict().items()}
    outputs = {}
    with torch.no_grad():
        for i, stage in enumerate(stages):
            outputs[i] = stage.fn(*stage_inputs(stage, outputs, inputs))
        for k, v in root.state_dict().items():
            v.copy_(state[k])
    return outputs[len(stages) - 1]


def prepare(obj, example, *, dtype, stages, seed, device, loss=None, output=None):
    """Put ``obj`` on the device and dtype in train mode, make the example, cut the stages.

    Shared by :func:`profile_model` and the runtime, so that both run the same
    stages on the same inputs and target.

    Parameters
    ----------
    obj : torch.nn.Module or list of torch.nn.Module
    example : str, sequence of InputSpec, or tuple of int
        What :func:`make_example` takes (``--example``, ``--input``, a shape).
    dtype, stages, seed, device : keyword-only
    loss : str or None, keyword-only
        A ``--loss`` kind: the loss stage is appended and, when the example
        has no target, a random one is made (:func:`default_target`).
        ``output``: the model computes its own loss (its ``loss`` field, from
        ``labels`` in the example); it is the sink, no stage is appended.
    output : str or None, keyword-only
        The field or index of the model's result the loss reads (``--output``).

    Returns
    -------
    Prepared
        ``(dtype, device, inputs, root, stages, target)``.

    Raises
    ------
    ModelError
        An unknown dtype or loss, a bad example, a module that cannot be cut.
    """
    torch = require_torch()
    if dtype not in DTYPES:
        raise ModelError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    dev = torch_device(device)
    if loss == OWN_LOSS:
        output = output if output is not None else "loss"
    loss_fn = make_loss(loss) if loss not in (None, OWN_LOSS) else None
    for m in obj if isinstance(obj, (list, tuple)) else [obj]:
        m.to(device=dev, dtype=torch_dtype)
        m.train()
    inputs, target = make_example(example, dtype=dtype, device=dev, seed=seed)
    root, stage_list = build_stages(obj, stages, example=inputs, loss=loss_fn, output=output)
    if loss_fn is None:
        target = None
    elif target is None:
        target = default_target(loss, _model_output(stage_list[:-1], inputs, root), seed=seed)
    return Prepared(torch_dtype, dev, inputs, root, stage_list, target)


def _layer_doc(stage, stages, fields):
    inputs = []
    for p in stage.inputs:  # a layer that reads several model inputs lists "input" once
        name = INPUT if p < 0 else stages[p].name
        if name not in inputs:
            inputs.append(name)
    extra = {"module": stage.module} if stage.module else {}
    return {"name": stage.name, "inputs": inputs, **fields, **extra}


def _measure_all(prep, *, repeats, caller_holds_gradient):
    fields, outputs, tensors, targets = [], {}, [], []
    for i, stage in enumerate(prep.stages):
        tensors.append(stage_inputs(stage, outputs, prep.inputs))
        targets.append(prep.target if stage.loss else None)
        try:
            f, out = measure_stage(
                stage, tensors[i], device=prep.device, target=targets[i],
                caller_holds_gradient=caller_holds_gradient,
            )
        except ModelError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ModelError(f"stage {stage.name!r} failed: {type(exc).__name__}: {first}") from None
        outputs[i] = out
        fields.append(f)
    spreads = []
    samples = time_stages(prep.stages, tensors, targets, rounds=repeats, device=prep.device)
    cost = call_cost(device=prep.device)
    for f, forward, backward in zip(fields, *samples):
        (f["forward"], fs), (f["backward"], bs) = robust_time(forward), robust_time(backward)
        f["backward"] = without_call_cost(f["backward"], cost)
        spreads.append(max(fs, bs))
    return fields, _held_by_loss_value(prep, fields, outputs), spreads, cost


def _held_by_loss_value(prep, fields, outputs):
    """Bytes the loss value keeps alive beyond its scalar, moved from the loss layer to input_bytes.

    The caller holds the loss value until the step ends (``loss.backward()``, then logs it),
    longer than any layer's output lives; ``F.mse_loss`` returns a 0-d tensor over an
    output-sized buffer.
    """
    if not prep.stages or not prep.stages[-1].loss:
        return 0
    scalar = tensor_bytes(outputs[len(prep.stages) - 1])
    surplus = fields[-1]["output_bytes"] - scalar
    fields[-1]["output_bytes"] = scalar
    return surplus


def _describe(tensors):
    return ", ".join(f"{list(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in tensors)


def _source(prep, *, estimate, repeats, dtype, loss, threads=None, spreads=(), backend=None, cost=None):
    torch = require_torch()
    what = f"inputs {_describe(prep.inputs)}"
    if prep.target is not None:
        what += f", target {_describe([prep.target])}"
    what += f", loss {loss}" if loss else ", no loss"
    n = len(prep.stages)
    if estimate:
        return (
            f"edgeplan profile --estimate: torch {torch.__version__}, FakeTensorMode + FlopCounterMode "
            f"(FLOPs; ops it does not count cost one per output element forward, two backward), "
            f"{what}, {dtype}, {n} stages"
        )
    mode = "ops" if n and not is_chain(prep.stages) else "modules"
    return (
        f"edgeplan profile: torch {torch.__version__} on {_device_name(prep.device)}, {what}, "
        f"{dtype}, {n} stages ({mode}{', compiled with ' + backend if backend else ''}), {threads} thread{'s' if threads != 1 else ''}, times: median of "
        f"{max(1, repeats)} interleaved rounds, spread {_spread_text(spreads)}; backwards less the "
        f"backward() call's own cost ({1000 * cost:.0f} us, an empty stage's)"
    )


def _spread_text(spreads):
    """The timing spread of a profile, in words: median and largest over the stages."""
    if not spreads:
        return "none"
    ordered = sorted(spreads)
    return f"{100 * ordered[len(ordered) // 2]:.0f}% median, {100 * ordered[-1]:.0f}% max (interquartile / median)"


def profile_model(
    obj,
    example,
    *,
    dtype="float32",
    stages="auto",
    estimate=False,
    repeats=5,
    threads=None,
    name="model",
    device="cpu",
    seed=0,
    loss=None,
    output=None,
    caller_holds_gradient=False,
    compile=False,
):
    """Profile a module (or list of modules) into an ``edgeplan-model/1`` document.

    Parameters
    ----------
    obj : torch.nn.Module or list of torch.nn.Module
    example : str, sequence of InputSpec, or tuple of int
        The inputs: ``"FILE.py:FUNC"`` returning ``(inputs, target)``, the
        ``--input`` specs, or one input shape (batch included, a float input).
    dtype : str, keyword-only
        ``float32``, ``float64``, ``float16`` or ``bfloat16``; the module is
        converted to it.
    stages : {"auto", "modules", "ops"}, keyword-only
        See :func:`build_stages`.
    estimate : bool, keyword-only
        Count FLOPs on fake tensors instead of running (time unit ``flop``).
    repeats : int, keyword-only
        Timed rounds: each round runs every stage once, in order, after one
        warm-up round; each stage keeps the median of its rounds.  Spreading a
        stage's runs over rounds keeps a burst of load on a busy machine from
        landing on all of them.
    threads : int or None, keyword-only
        Threads torch computes with while profiling (``torch.set_num_threads``;
        restored afterwards); None keeps torch's setting.  Fewer threads than
        cores time steadily on a shared machine.
    name : str, keyword-only
        The model name.
    device : str, keyword-only
        ``cpu`` or ``cuda``.
    seed : int, keyword-only
        Seed for the random inputs (and the random target).
    loss : str or None, keyword-only
        ``cross_entropy``, ``mse``, ``sum`` or ``FILE.py:FUNC``: the loss is the
        last layer, ``loss``, the sink, and the document's ``loss`` field.
        ``output``: the model's own ``loss`` field (a transformers model given
        ``labels``) is the sink.
    output : str or None, keyword-only
        The field (``logits``) or index of the model's result that the loss
        reads; default: the result itself, its ``logits``, or its one tensor.
        Kept in the document's ``output`` field.
    caller_holds_gradient : bool, keyword-only
        Measure ``workspace_backward`` with the output gradient and the output
        held by the caller for the whole backward (the convention the shared
        GPU model files were measured with) instead of released by the
        autograd engine as a chained backward releases them (the default).
        Kept for the fidelity benchmark; see docs/fidelity.md.
    compile : bool or str, keyword-only
        Measure each stage compiled by ``torch.compile`` (True: inductor, or
        a backend name), as ``ScheduledModule(..., compile=)`` runs it
        (:func:`planner.torch.measure.compiled_stages`): the times and saved
        sizes are the compiled stages', and the document's ``compile``
        field names the backend.

    Returns
    -------
    dict
        A validated ``edgeplan-model/1`` document.  ``input_bytes`` counts the
        inputs, the target and what the loss value keeps alive beyond its
        scalar (the caller holds them for the whole step).

    Raises
    ------
    ModelError
        A module that cannot be cut into stages, a stage that fails or does
        not return one tensor, a bad dtype, example or loss.
    OptionError
        ``compile`` with ``estimate``, or a backend that cannot run here.

    Notes
    -----
    Each stage runs ``repeats + 4`` times (warm-up and timing rounds, saved
    tensors, forward and backward memory); O(stages) profiler sessions.  Train mode is used
    (BatchNorm batch statistics, dropout on); the module's state (parameters,
    buffers, gradients) is restored afterwards.
    """
    return profile_stages(obj, example, dtype=dtype, stages=stages, estimate=estimate, repeats=repeats,
                          threads=threads, name=name, device=device, seed=seed, loss=loss, output=output,
                          caller_holds_gradient=caller_holds_gradient, compile=compile)[0]


def profile_stages(obj, example, *, dtype="float32", stages="auto", estimate=False, repeats=5, threads=None,
                   name="model", device="cpu", seed=0, loss=None, output=None, caller_holds_gradient=False,
                   compile=False):
    """:func:`profile_model`, and the stages it measured: ``(document, stages)``.

    The stages are the ones the profile ran (compiled, with ``compile``), so
    that :func:`planner.fit` trains with them rather than compile them again.
    """
    backend = None
    if compile is not False:
        if estimate:
            raise OptionError("--compile measures the compiled stages by running them; --estimate runs nothing")
        backend = compile_backend(compile, device)
    prep = prepare(obj, example, dtype=dtype, stages=stages, seed=seed, device=device, loss=loss, output=output)
    if backend is not None:
        prep = prep._replace(stages=compiled_stages(prep.stages, backend))
    root = prep.root
    snapshot = {k: v.detach().clone() for k, v in root.state_dict().items()}
    old_grads = {id(p): p.grad for p in root.parameters()}
    torch = require_torch()
    old_threads = torch.get_num_threads()
    try:
        held, spreads, cost = 0, [], None
        if threads:
            torch.set_num_threads(threads)
        if estimate:
            fields = estimate_stages(root, prep.stages, prep.inputs, prep.target)
        else:
            fields, held, spreads, cost = _measure_all(prep, repeats=repeats,
                                                       caller_holds_gradient=caller_holds_gradient)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
        root.load_state_dict(snapshot)
        for p in root.parameters():
            p.grad = old_grads.get(id(p))
    seen = set()
    for stage, f in zip(prep.stages, fields):
        f["params_bytes"] = params_bytes(stage.params, seen)
    by_caller = list(prep.inputs) + ([prep.target] if prep.target is not None else [])
    doc = {
        "format": MODEL_FORMAT,
        "name": name,
        "time_unit": "flop" if estimate else "ms",
        "source": _source(prep, estimate=estimate, repeats=repeats, dtype=dtype, loss=loss, threads=used_threads,
                          spreads=spreads, backend=backend, cost=cost),
        "input_bytes": int(sum(tensor_bytes(t) for t in by_caller) + held),
        "layers": [_layer_doc(s, prep.stages, f) for s, f in zip(prep.stages, fields)],
    }
    if loss is not None:
        doc["loss"] = loss
    if output is not None:
        doc["output"] = output
    if backend is not None:
        doc["compile"] = backend
    if spreads:
        doc["timing"] = {"rounds": repeats, "threads": used_threads, "statistic": "median",
                         "spread": [round(x, 4) for x in spreads], "call_cost": round(cost, 6)}
    model_from_dict(doc, source_name=f"profile of {name}")
    return doc, prep.stages


def _device_name(dev):
    if dev.type == "cuda":  # pragma: no cover - no GPU in CI
        torch = require_torch()
        return torch.cuda.get_device_name(dev)
    import platform

    return f"CPU ({platform.machine()})"


def profile_target(target, example, **options):
    """:func:`load_target` then :func:`profile_model`; the name defaults to the factory's."""
    obj = load_target(target)
    options.setdefault("name", target.rpartition(":")[2])
    return profile_model(obj, example, **options)

