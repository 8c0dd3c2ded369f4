"""One call makes a PyTorch model fit a memory: :func:`fit` (profile -> plan -> wrap).

::

    from planner import fit
    wrapped = fit(model, example, memory="256MB", loss="cross_entropy")
    loss = wrapped(x, target=y)
    loss.backward()
    optimizer.step(); optimizer.zero_grad()

:func:`fit` profiles the model on the example
(:func:`planner.torch.profile.profile_model`, the ``edgeplan profile`` of the
command line), plans a schedule for the memory (:func:`planner.plan`) and
returns the :class:`~planner.torch.executor.ScheduledModule` that trains
with it, or refuses with the least memory that works.
"""

import inspect

from planner.api import plan
from planner.errors import ModelError, OptionError
from planner.model import model_from_dict
from planner.torch.inputs import require_torch

__all__ = ["fit"]


def fit(module, example, memory="256MB", loss="cross_entropy", *, strategy="auto", optimizer="sgd",
        stages="auto", compile=False, output=None, repeats=3, name=None, seed=0, **options):
    """Profile ``module`` on ``example``, plan a schedule for ``memory``, and wrap the module with it.

    Parameters
    ----------
    module : torch.nn.Module or list of torch.nn.Module
        The model, as it comes; it stays the user's (its parameters are the
        ones trained).  Profiling runs it in training mode on the example's
        device and leaves its parameters, buffers and modes as they were
        (a module in eval mode trains after ``wrapped.train()``, as usual).
    example : torch.Tensor, tuple, dict, or callable
        One batch: a tensor, a tuple of tensors (the positional inputs), a
        dict of keyword inputs, ``(inputs, target)`` with ``inputs`` one of
        those, or a function returning ``(inputs, target)``.  A pair of
        tensors is ``(input, target)`` when ``module.forward`` takes one
        input, else two inputs.  Without a target, a loss that needs one is
        profiled with a random one of the output's shape.
    memory : str or int
        Device memory for the whole training step (SIZE or bytes).
    loss : str or None
        ``cross_entropy``, ``mse``, ``sum``, ``FILE.py:FUNC``, ``output`` (the
        model's own ``loss`` field, as transformers computes it from
        ``labels`` in the keyword inputs), or None (the module's output is the
        sink; the caller's loss is not modelled).
    strategy, optimizer : str, keyword-only
        As for :func:`planner.plan`.
    stages : {"auto", "modules", "ops"}, keyword-only
        How the module is cut into layers (docs/costs.md).
    compile : bool or str, keyword-only
        Compile each stage with ``torch.compile`` (True: inductor, or a
        backend name); the stages are profiled compiled too, so the plan's
        times and sizes are the compiled stages', and the module trains with
        the very stages the profile compiled (each stage compiles once).  The
        schedule still decides what is kept.
    output : str or None, keyword-only
        The field (or index) of the module's result the loss reads when it
        returns a dict, tuple, dataclass or ``ModelOutput`` (default: its
        ``logits``, else its one tensor).
    repeats : int, keyword-only
        Timed runs per stage when profiling.
    name : str or None, keyword-only
        The model's name (default: the module's class name).
    seed : int, keyword-only
        Seed of the random target.
    **options
        Strategy options (``segments``, ``snapshots``, ``time_limit``).

    Returns
    -------
    planner.torch.executor.ScheduledModule
        Called as ``wrapped(*inputs, target=y)`` it returns the loss (or the
        module's output without a loss); ``backward()`` runs the rest of the
        schedule.  ``wrapped.plan`` is the :class:`~planner.api.PlanResult`:
        ``plan.model`` the model file, ``plan.schedule`` the schedule and
        ``plan.simulation`` the prediction on it (``peak_bytes``, ``overhead``).

    Raises
    ------
    InfeasibleError
        No schedule fits ``memory``; the message and ``least_bytes`` give the
        least memory that works.
    ModelError, SizeError, OptionError
        A module or example that cannot be profiled, a bad memory or option.

    Notes
    -----
    Profiling runs each stage ``repeats + 3`` times; planning is
    :func:`planner.plan`'s.
    """
    torch = require_torch()
    if not isinstance(module, (torch.nn.Module, list, tuple)):
        raise ModelError(f"fit takes an nn.Module (or a list of them), not {type(module).__name__}")
    modules = list(module) if isinstance(module, (list, tuple)) else [module]
    inputs, target = _split_example(example, modules[0], torch)
    first = next(_tensors(inputs, torch), None)
    if first is None:
        raise ModelError("the example holds no tensor: give the model's inputs")
    # The module runs in its parameters' dtype (else its float inputs'): profiling converts nothing.
    floats = [t for m in modules for t in m.parameters() if t.is_floating_point()]
    floats += [t for t in _tensors(inputs, torch) if t.is_floating_point()]
    dtype = str(floats[0].dtype if floats else torch.float32).removeprefix("torch.")
    from planner.torch.profile import profile_stages

    with _as_it_was(modules):  # profiled and cut into stages in training mode
        document, profiled = profile_stages(module, lambda: (inputs, target), dtype=dtype, stages=stages,
                                            repeats=repeats, name=name or type(modules[0]).__name__,
                                            device=str(first.device), seed=seed, loss=loss, output=output,
                                            compile=compile)
        result = plan(model_from_dict(document), memory, strategy=strategy, optimizer=optimizer, **options)
        if not result.success:
            raise result.error
        return _wrap(module, result, stages=stages, inputs=inputs, compile=compile, profiled=profiled)


def _wrap(module, result, *, stages, inputs, compile, profiled):
    """The ScheduledModule; compiled, it runs the ``profiled`` stages (compiled once, as measured)."""
    from planner.torch.executor import ScheduledModule
    from planner.torch.inputs import ExampleInputs, flat_inputs

    extra = {"compile": compile} if compile else {}
    if compile and "compile" not in inspect.signature(ScheduledModule).parameters:
        raise OptionError("compile=True: this version's executor does not compile stages")
    example = flat_inputs((), inputs) if isinstance(inputs, dict) else ExampleInputs(tuple(inputs))
    if result.model.document.get("compile"):  # the stages the profile compiled and measured, compiled once
        extra["captured"] = profiled
    wrapped = ScheduledModule(module, result.model, result.schedule, stages=stages, example=example, **extra)
    wrapped.plan = result
    return wrapped


def _tensors(value, torch):
    """The tensors in ``value`` (a tensor, or a dict, tuple or list holding them), in order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (dict, tuple, list)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _tensors(v, torch)


def _positional_inputs(module):
    """How many positional inputs ``module.forward`` takes (None: any number)."""
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None
    kinds = [p.kind for p in signature.parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


def _split_example(example, module, torch):
    """``(inputs, target)`` from what :func:`fit` takes (see its ``example``)."""
    if callable(example) and not isinstance(example, torch.Tensor):
        example = example()
        if not (isinstance(example, tuple) and len(example) == 2):
            raise ModelError(f"the example function must return (inputs, target), got {type(example).__name__}")
    if isinstance(example, (torch.Tensor, dict)):
        return (example,) if isinstance(example, torch.Tensor) else example, None
    if isinstance(example, list):
        example = tuple(example)
    if not isinstance(example, tuple) or not example:
        raise ModelError(
            "example must be a tensor, a tuple of tensors, a dict of keyword inputs, or (inputs, target); "
            f"got {type(example).__name__}"
        )
    if len(example) == 2 and (example[1] is None or isinstance(example[1], torch.Tensor)):
        inputs, target = example
        if isinstance(inputs, (tuple, list, dict)) or inputs is None:
            return (tuple(inputs) if isinstance(inputs, list) else inputs), target
        if example[1] is not None and _positional_inputs(module) == 1:
            return (inputs,), target
    if not all(isinstance(t, torch.Tensor) for t in example):
        raise ModelError("example: a tuple of inputs must hold tensors only; give (inputs, target) for a target")
    return example, None


class _as_it_was:
    """Put the modules' training modes back as they were (profiling runs them in train mode)."""

    def __init__(self, modules):
        self.modes = [(m, m.training) for top in modules for m in top.modules()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode
        return False
