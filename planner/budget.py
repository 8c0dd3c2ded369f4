"""From ``--memory`` (the whole step) to the activation budget (SPEC section 3)."""

from dataclasses import dataclass

from planner.errors import OptionError

__all__ = ["OPTIMIZER_FACTORS", "MemorySplit", "split_memory"]

# Bytes of fixed memory per parameter byte: weights and gradients for SGD,
# plus two moments for Adam.
OPTIMIZER_FACTORS = {"sgd": 2, "adam": 4}


@dataclass(frozen=True)
class MemorySplit:
    """The device memory split into fixed memory and the activation budget."""

    memory_bytes: int
    fixed_bytes: int
    optimizer: str

    @property
    def activation_bytes(self):
        """What is left for activations (negative when parameters alone do not fit)."""
        return self.memory_bytes - self.fixed_bytes

    def memory_for(self, activation_bytes):
        """The ``--memory`` needed for an activation peak of ``activation_bytes``."""
        return activation_bytes + self.fixed_bytes


def split_memory(model, memory_bytes, optimizer="sgd"):
    """Split ``memory_bytes`` for ``model`` trained with ``optimizer``.

    Parameters
    ----------
    model : planner.model.Model
    memory_bytes : int
    optimizer : {"sgd", "adam"}

    Returns
    -------
    MemorySplit

    Raises
    ------
    OptionError
        An optimizer other than sgd or adam.
    """
    if optimizer not in OPTIMIZER_FACTORS:
        raise OptionError(f"unknown optimizer {optimizer!r}; choose {' or '.join(OPTIMIZER_FACTORS)}")
    fixed = model.params_bytes * OPTIMIZER_FACTORS[optimizer]
    return MemorySplit(memory_bytes=memory_bytes, fixed_bytes=fixed, optimizer=optimizer)
