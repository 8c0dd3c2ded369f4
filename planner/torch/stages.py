"""The Stage record: one layer of the model file, as something PyTorch can run.

The bottom layer of :mod:`planner.torch`: capture makes stages, profile measures
them, the executor runs them.  Imports nothing of its own package.
"""

from dataclasses import dataclass, field

__all__ = ["Stage", "STAGE_MODES", "input_index", "is_chain"]

STAGE_MODES = ("auto", "modules", "ops")

@dataclass
class Stage:
    """One layer of the model file, as something PyTorch can run.

    Attributes
    ----------
    name : str
        The layer name.
    fn : callable
        ``fn(*tensors) -> tensor``: the stage's forward on its input tensors;
        a loss stage is called as ``fn(*tensors, target)``.
    inputs : tuple of int
        In the order ``fn`` takes them: ``i >= 0`` is the output of stage
        ``i``, ``-1 - k`` the ``k``-th model input (``-1``: the first).
    params : list of torch.nn.Parameter
        The parameters the stage reads (for ``params_bytes``).
    buffers : list of torch.Tensor
        Buffers it reads or updates (BatchNorm running statistics).
    loss : bool
        The loss: the last stage (the sink), called with the target too.
    random : bool or None
        It draws random numbers (dropout, ``torch.rand``): a recomputation
        must replay the RNG state of its first run to compute the same.  Known
        where the capture saw every op it runs (``torch.export``: True when one
        of them draws) and for a built-in loss (False); None where it does not
        know (a chain's child, an fx leaf): the executor learns it at the
        stage's first run, from whether the RNG state moved.
    module : str
        The module path it was captured in (``transformer.h.0``; ``""``: the
        model itself), written to the model file as the layer's ``module``.
    """

    name: str
    fn: object
    inputs: tuple
    params: list = field(default_factory=list)
    buffers: list = field(default_factory=list)
    loss: bool = False
    random: bool = None
    module: str = ""


def input_index(p):
    """The model input a stage input ``p < 0`` stands for (``-1`` -> 0, ``-2`` -> 1)."""
    return -1 - p


def is_chain(stage_list):
    """Stage ``i`` reads exactly stage ``i - 1`` (the first reads the first input)."""
    return all(s.inputs == ((i - 1,) if i else (-1,)) for i, s in enumerate(stage_list))
