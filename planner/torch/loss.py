"""The loss as part of the model: ``--loss cross_entropy|mse|sum|FILE.py:FUNC``.

The loss becomes the model's sink, a stage named ``loss`` that reads the
model's output and the target and is measured like any other stage (what it
saves, its workspaces), so that every schedule counts it: a cross-entropy over a
vocabulary keeps a tensor of the logits' size (its log-softmax) until its
backward, which allocates the logits' gradient.
"""

from planner.errors import ModelError
from planner.torch.inputs import load_function, require_torch

__all__ = ["LOSS_KINDS", "LOSS_NAME", "check_loss_value", "default_target", "make_loss", "model_loss"]

LOSS_KINDS = ("cross_entropy", "mse", "sum")
LOSS_NAME = "loss"


def _cross_entropy(output, target):
    """Cross-entropy over the last dimension, leading dimensions flattened: (B, T, V) with (B, T)."""
    import torch.nn.functional as F

    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def _mse(output, target):
    import torch.nn.functional as F

    return F.mse_loss(output, target)


def _sum(output, target):
    return output.sum()


_BUILTIN = {"cross_entropy": _cross_entropy, "mse": _mse, "sum": _sum}


def make_loss(kind):
    """The loss callable ``loss(output, target) -> scalar`` that ``--loss KIND`` names.

    Parameters
    ----------
    kind : str
        ``cross_entropy``, ``mse``, ``sum`` or ``FILE.py:FUNC`` (or
        ``package.module:FUNC``).

    Raises
    ------
    ModelError
        An unknown kind, or a FUNC that cannot be imported or is not callable.
    """
    if kind in _BUILTIN:
        return _BUILTIN[kind]
    if not isinstance(kind, str) or ":" not in kind:
        raise ModelError(
            f"--loss {kind!r}: expected one of {', '.join(LOSS_KINDS)} or FILE.py:FUNC"
        )
    fn = load_function(kind, what=f"--loss {kind!r}")
    if not callable(fn):
        raise ModelError(f"--loss {kind!r}: {kind.rpartition(':')[2]!r} is not a function")
    return fn


def model_loss(model):
    """The ``--loss`` kind a model file was profiled with (its ``loss`` field), or None.

    The one reader of that field: the executor, ``verify`` and ``profile`` make
    the loss stage from what it returns, with :func:`make_loss`.  The field
    is a kind string (``cross_entropy``, ``FILE.py:FUNC``, ...); an object
    ``{"name": KIND}`` is read as its name.
    """
    spec = (getattr(model, "document", None) or {}).get("loss")
    if isinstance(spec, dict):
        spec = spec.get("name")
    if spec is not None and not isinstance(spec, str):
        raise ModelError(f"model {model.name!r}: its loss {spec!r} is not a --loss kind")
    return spec


def default_target(kind, output, *, seed=0):
    """A random target for ``--loss KIND`` when the example gives none.

    ``cross_entropy``: class indices in ``[0, V)`` of the output's leading
    shape (V its last dimension); ``mse``: a normal tensor of the output's
    shape and dtype; ``sum`` and ``FILE.py:FUNC``: None.
    """
    torch = require_torch()
    gen = torch.Generator().manual_seed(seed + 7)
    if kind == "cross_entropy":
        classes = output.shape[-1]
        t = torch.randint(0, classes, tuple(output.shape[:-1]), generator=gen, dtype=torch.int64)
        return t.to(device=output.device)
    if kind == "mse":
        t = torch.randn(tuple(output.shape), generator=gen, dtype=torch.float32)
        return t.to(device=output.device, dtype=output.dtype)
    return None


def check_loss_value(value, kind):
    """Raise :class:`ModelError` unless the loss returned a scalar tensor."""
    torch = require_torch()
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = type(value).__name__ if not isinstance(value, torch.Tensor) else f"a tensor of shape {tuple(value.shape)}"
        raise ModelError(f"--loss {kind!r} must return a scalar tensor, got {got}")
