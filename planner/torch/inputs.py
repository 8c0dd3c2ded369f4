"""What a profiled PyTorch model is given: the TARGET, its inputs, its example.

- :func:`load_target` imports the one module TARGET names and calls its factory;
- :func:`parse_input` reads ``--input SHAPE[:DTYPE[:HIGH]]`` into an :class:`InputSpec`;
- :func:`make_example` turns ``--input`` specs or ``--example FILE.py:FUNC`` into
  ``(inputs, target)``, the same for ``profile`` and ``verify``; the example may
  give keyword arguments (``(kwargs, target)`` or ``kwargs``): :class:`ExampleInputs`.

torch is imported inside the functions: ``pip install edgeplan[torch]``.
"""

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass

from planner.errors import ModelError

__all__ = [
    "ExampleInputs",
    "flat_inputs",
    "InputSpec",
    "parse_shape",
    "parse_input",
    "load_target",
    "load_function",
    "make_example",
    "require_torch",
    "torch_device",
    "FLOAT_DTYPES",
    "INPUT_DTYPES",
]

FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8")
INPUT_DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)

_TARGET_HELP = "expected path/to/file.py:factory or package.module:factory"


def require_torch():
    """Import torch, or raise :class:`ModelError` naming the extra to install."""
    try:
        import torch
    except ImportError:  # pragma: no cover - CI installs torch
        raise ModelError(
            "PyTorch is not installed: pip install edgeplan[torch] (the CPU build: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu)"
        ) from None
    return torch


def torch_device(name):
    """``torch.device(name)``, or :class:`ModelError` when it is unknown or absent here."""
    torch = require_torch()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"--device {name!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available here (this torch build or machine)")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"--device {name!r}: only cpu and cuda are supported")
    return dev


def parse_shape(text):
    """Parse SHAPE (``8,3,224,224`` or ``8x3x224x224``) into a tuple of positive ints.

    Raises
    ------
    ValueError
        With a message saying what is wrong.
    """
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    if not parts or any(not p for p in parts):
        raise ValueError(f"bad shape {text!r}: expected comma-separated sizes like 8,3,224,224")
    shape = []
    for p in parts:
        if not p.isdigit() or int(p) <= 0:
            raise ValueError(f"bad shape {text!r}: {p!r} is not a positive integer")
        shape.append(int(p))
    return tuple(shape)


@dataclass(frozen=True)
class InputSpec:
    """One model input, as ``--input SHAPE[:DTYPE[:HIGH]]`` describes it.

    Attributes
    ----------
    shape : tuple of int
    dtype : str or None
        None: the model's ``--dtype`` (a float input).
    high : int or None
        Integer inputs are drawn uniformly from ``[0, high)``.
    """

    shape: tuple
    dtype: object = None
    high: object = None


def parse_input(text):
    """Parse ``SHAPE[:DTYPE[:HIGH]]`` (``4x128:int64:5000``) into an :class:`InputSpec`.

    Raises
    ------
    ValueError
        A bad shape, an unknown dtype, a HIGH that is not a positive integer,
        HIGH on a float or bool input, or an integer input without HIGH.
    """
    parts = str(text).split(":")
    if len(parts) > 3:
        raise ValueError(f"bad input {text!r}: expected SHAPE[:DTYPE[:HIGH]], e.g. 4x128:int64:5000")
    shape = parse_shape(parts[0])
    dtype = parts[1].strip() if len(parts) > 1 else None
    if dtype is not None and dtype not in INPUT_DTYPES:
        raise ValueError(f"bad input {text!r}: dtype {dtype!r} is not one of {', '.join(INPUT_DTYPES)}")
    high = None
    if len(parts) > 2:
        h = parts[2].strip()
        if not h.isdigit() or int(h) <= 0:
            raise ValueError(f"bad input {text!r}: HIGH {h!r} is not a positive integer")
        if dtype not in INT_DTYPES:
            raise ValueError(f"bad input {text!r}: HIGH needs an integer dtype ({', '.join(INT_DTYPES)})")
        high = int(h)
    if dtype in INT_DTYPES and high is None:
        raise ValueError(f"bad input {text!r}: an integer input needs HIGH (values in [0, HIGH)), "
                         f"e.g. {parts[0]}:{dtype}:5000")
    return InputSpec(shape=shape, dtype=dtype, high=high)


def _import_file_or_module(where, what):
    """Import ``path/to/file.py`` or ``package.module``; :class:`ModelError` naming ``what``."""
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            if not os.path.isfile(where):
                raise ModelError(f"{what}: no such file {where!r}")
            modname = "edgeplan_target_" + str(abs(hash(os.path.abspath(where))))
            spec = importlib.util.spec_from_file_location(modname, where)
            if spec is None or spec.loader is None:
                raise ModelError(f"{what}: cannot import {where!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(where)
    except ModelError:
        raise
    except Exception as exc:  # user code: report any failure as bad input
        raise ModelError(f"{what}: importing {where!r} failed: {type(exc).__name__}: {exc}") from None


def load_function(text, *, what):
    """The object ``FILE.py:NAME`` or ``package.module:NAME`` names (imports that module only).

    Parameters
    ----------
    text : str
    what : str, keyword-only
        How messages name it (``TARGET 'x.py:f'``, ``--loss 'y.py:g'``).

    Raises
    ------
    ModelError
        Unparsable text, import failure, missing attribute.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ModelError(f"bad {what}: {_TARGET_HELP}")
    where, _, attr = text.rpartition(":")
    if not where or not attr.isidentifier():
        raise ModelError(f"bad {what}: {_TARGET_HELP}")
    module = _import_file_or_module(where, what)
    if not hasattr(module, attr):
        raise ModelError(f"{what}: {where!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _call_user(fn, *, what, label):
    """``fn()``, the user's code: any failure is bad input, one line ``{what}: calling {label} failed: ...``."""
    try:
        return fn()
    except Exception as exc:  # user code: report any failure as bad input
        raise ModelError(f"{what}: calling {label} failed: {type(exc).__name__}: {exc}") from None


def load_target(target):
    """Import TARGET and call its factory.

    Parameters
    ----------
    target : str
        ``path/to/file.py:factory`` or ``package.module:factory``.  The factory
        is called with no arguments and returns an ``nn.Module`` or a list of
        modules; an ``nn.Module`` object named directly is used as is.

    Returns
    -------
    torch.nn.Module or list of torch.nn.Module

    Raises
    ------
    ModelError
        Unparsable target, import failure, missing factory, factory failure,
        or a result that is not a module.

    Notes
    -----
    This runs the user's code: only the module that TARGET names is imported
    (and what it imports itself).  Nothing else is ever imported or executed.
    """
    torch = require_torch()
    what = f"TARGET {target!r}"
    if not isinstance(target, str) or ":" not in target or not target.rpartition(":")[0]:
        raise ModelError(f"bad TARGET {target!r}: {_TARGET_HELP}")
    obj = load_function(target, what=what)
    attr = target.rpartition(":")[2]
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise ModelError(f"{what}: {attr!r} is neither a factory nor an nn.Module")
        obj = _call_user(obj, what=what, label=f"{attr}()")
    if isinstance(obj, (list, tuple)):
        if not obj or not all(isinstance(m, torch.nn.Module) for m in obj):
            raise ModelError(f"{what}: {attr}() must return an nn.Module or a list of modules")
        return list(obj)
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{what}: {attr}() returned {type(obj).__name__}, not an nn.Module")
    return obj


def _random_input(spec, *, dtype, device, generator, torch):
    """One input tensor: normal floats, uniform integers in ``[0, high)``, fair bools."""
    name = spec.dtype or dtype
    if name in FLOAT_DTYPES:
        x = torch.randn(spec.shape, generator=generator, dtype=torch.float32)
        return x.to(device=device, dtype=getattr(torch, name))
    if name == "bool":
        return torch.randint(0, 2, spec.shape, generator=generator).to(device=device, dtype=torch.bool)
    x = torch.randint(0, spec.high, spec.shape, generator=generator, dtype=torch.int64)
    return x.to(device=device, dtype=getattr(torch, name))


class ExampleInputs(tuple):
    """The model's input tensors, flat, and how the model takes them.

    A tuple of tensors (what stages index and the caller holds): the
    positional inputs, then the keyword inputs' tensors sorted by name.
    ``call()`` gives back ``(args, kwargs)`` for ``module(*args, **kwargs)``,
    non-tensor keywords (``use_cache=False``) included.

    Attributes
    ----------
    n_args : int
        How many leading tensors are positional.
    names : tuple of str
        The keyword of each tensor after them.
    constants : dict
        Non-tensor keyword arguments, passed as they are.
    """

    def __new__(cls, tensors, *, n_args=None, names=(), constants=None):
        self = super().__new__(cls, tensors)
        self.n_args = len(self) - len(names) if n_args is None else n_args
        self.names = tuple(names)
        self.constants = dict(constants or {})
        return self

    def call(self):
        """``(args, kwargs)``: the model's call on these tensors (keywords sorted by name)."""
        kwargs = dict(self.constants)
        kwargs.update(zip(self.names, self[self.n_args:]))
        return tuple(self[: self.n_args]), dict(sorted(kwargs.items()))

    def like(self, tensors):
        """Other tensors taken the same way (the same keywords and constants)."""
        return ExampleInputs(tensors, n_args=self.n_args, names=self.names, constants=self.constants)


def flat_inputs(args, kwargs):
    """:class:`ExampleInputs` of a call ``module(*args, **kwargs)``; tensors in ``args`` only.

    Raises
    ------
    ModelError
        A positional input that is not a tensor.
    """
    torch = require_torch()
    if not all(isinstance(t, torch.Tensor) for t in args):
        raise ModelError("positional inputs must be tensors; give other arguments by keyword")
    names = sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    constants = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    return ExampleInputs(tuple(args) + tuple(kwargs[k] for k in names), n_args=len(args), names=names,
                         constants=constants)


def _example_from_function(text, *, dtype, device, torch):
    """Call ``FILE.py:FUNC`` (or FUNC itself): ``(inputs, target)``, ``(kwargs, target)`` or ``kwargs``.

    Inputs are a tensor or a tuple of tensors; kwargs a dict of the model's
    keyword arguments (tensors, and constants such as ``use_cache=False``).
    """
    what = f"--example {text!r}" if isinstance(text, str) else "the example"
    fn = text if callable(text) else load_function(text, what=what)
    if not callable(fn):
        raise ModelError(f"{what}: {text.rpartition(':')[2]!r} is not a function")
    result = _call_user(fn, what=what, label="it")
    if isinstance(result, dict):
        result = (result, None)
    if not isinstance(result, tuple) or len(result) != 2:
        raise ModelError(f"{what}: it must return (inputs, target), (kwargs, target) or kwargs, "
                         f"got {type(result).__name__}")
    inputs, target = result
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, dict):
        if not all(isinstance(k, str) for k in inputs) or not any(
            isinstance(v, torch.Tensor) for v in inputs.values()
        ):
            raise ModelError(f"{what}: kwargs must be a dict of argument names with at least one tensor")
        inputs = flat_inputs((), inputs)
    elif not isinstance(inputs, (tuple, list)) or not inputs or not all(
        isinstance(t, torch.Tensor) for t in inputs
    ):
        raise ModelError(f"{what}: inputs must be a tensor, a non-empty tuple of tensors or a dict of kwargs")
    if target is not None and not isinstance(target, torch.Tensor):
        raise ModelError(f"{what}: target must be a tensor or None, got {type(target).__name__}")
    model_dtype = getattr(torch, dtype)

    def place(t):
        t = t.detach().to(device=device)
        return t.to(dtype=model_dtype) if t.is_floating_point() else t

    placed = tuple(place(t) for t in inputs)
    placed = inputs.like(placed) if isinstance(inputs, ExampleInputs) else ExampleInputs(placed)
    return placed, (None if target is None else place(target))


def make_example(spec, *, dtype="float32", device="cpu", seed=0):
    """The model's inputs and the loss target, from ``--input`` specs or ``--example``.

    Parameters
    ----------
    spec : str, callable, sequence of InputSpec, or tuple of int
        ``"FILE.py:FUNC"`` (``--example``) or FUNC itself, the parsed ``--input`` options
        (passed positionally, in order), or one shape (one float input).
    dtype : str, keyword-only
        The model's dtype: float inputs (and float targets) are converted to it.
    device : str or torch.device, keyword-only
    seed : int, keyword-only
        Seed of the random inputs.

    Returns
    -------
    (ExampleInputs, torch.Tensor or None)
        The inputs (a tuple of tensors) and the target (None from ``--input``: a loss that needs one
        gets a random target of the output's shape, see
        :func:`planner.torch.loss.default_target`).

    Raises
    ------
    ModelError
        An ``--example`` function that fails or returns something else, an
        unknown dtype.
    """
    torch = require_torch()
    if dtype not in FLOAT_DTYPES:
        raise ModelError(f"--dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
    dev = device if isinstance(device, torch.device) else torch_device(device)
    if isinstance(spec, str) or callable(spec):
        return _example_from_function(spec, dtype=dtype, device=dev, torch=torch)
    if isinstance(spec, tuple) and spec and all(isinstance(d, int) for d in spec):
        spec = [InputSpec(shape=spec)]
    specs = list(spec or ())
    if not specs or not all(isinstance(s, InputSpec) for s in specs):
        raise ModelError("give the model's inputs: --input SHAPE[:DTYPE[:HIGH]] (repeatable) or --example FILE.py:FUNC")
    gen = torch.Generator().manual_seed(seed)
    inputs = tuple(_random_input(s, dtype=dtype, device=dev, generator=gen, torch=torch) for s in specs)
    return ExampleInputs(inputs), None
