"""One view of the model for every solver: per-layer arrays with one set of field names.

:class:`Tables` answers, once per model, the questions the solvers, the
lowering and the simulator all ask of a model: each layer's sizes and times,
its flags, what its backward reads (the sink's own output included: the loss
reads it until the sink's backward, SPEC section 3), whose saved data holds
each output, and the gradient bytes each backward allocates and the fresh ones
it adds into held gradients when backwards run in reverse topological order.
Build it with ``model.tables`` (cached on the model); :meth:`Tables.scaled`
gives the same tables in units of a memory grid.
"""

from dataclasses import dataclass, replace

import numpy as np

from planner.sizes import int64_safe

__all__ = ["Tables", "size_dtype"]


def size_dtype(model, *, headroom=1):
    """``np.int64`` for the solvers' size arrays of ``model``, or ``object`` (Python ints) when
    ``headroom`` sums of every output three times, saved data and workspaces could overflow it."""
    total = model.input_bytes + sum(
        3 * layer.output_bytes + layer.saved_bytes + layer.workspace_forward + layer.workspace_backward
        for layer in model.layers
    )
    return np.int64 if int64_safe(total, headroom=headroom) else object


@dataclass(frozen=True, eq=False)
class Tables:
    """Per-layer arrays of a model (index ``i`` is layer ``i``, in topological order).

    The arrays are read-only (one copy serves every solver).  Sizes are ``int64`` arrays, or ``object`` arrays of Python ints where sums
    of them could overflow int64 (:func:`size_dtype`); ``.tolist()`` gives
    Python ints either way.  Ragged facts (inputs, reads) are tuples of tuples.

    Attributes
    ----------
    n, sink, input_bytes : int
        Layer count, the sink's index (the last layer), the model input's bytes.
    output_bytes, saved_bytes, workspace_forward, workspace_backward : ndarray
        The layers' sizes.
    forward, backward : ndarray of float
        The layers' times.
    needs_inputs, needs_output : ndarray of bool
        The layers' flags.
    output_at_backward : ndarray of bool
        Whether a layer's own output is in memory at its backward: it reads it
        (``needs_output``), or it is the sink (the loss reads it).
    previous_output : ndarray
        ``output_bytes[i - 1]`` (0 for layer 0): a chain layer's input.
    inputs, consumers : tuple of tuples
        The layers each layer reads, and the layers that read it.
    last_consumer : ndarray of int
        The highest consumer of each layer, -1 for the sink (no consumer).
    backward_reads : tuple of tuples
        The outputs each backward reads: its inputs with ``needs_inputs``,
        then its own with ``needs_output`` or as the sink.
    holds : tuple of tuples
        The outputs a layer's saved data holds until its backward
        (``model.saved_reads``: its own with ``needs_output``, then its inputs
        with ``needs_inputs``).
    holders : tuple of tuples
        ``holders[i]``: the layers whose saved data holds ``i``'s output, in
        layer order.
    new_gradients, fresh_gradients : ndarray
        With backwards in reverse topological order, the gradient bytes each
        backward allocates and keeps, and the fresh gradient bytes it makes
        and adds into gradients another consumer's backward started (its peak
        only; SPEC section 3); ``model.reverse_order_gradients``.
    """

    n: int
    sink: int
    input_bytes: int
    output_bytes: np.ndarray
    saved_bytes: np.ndarray
    workspace_forward: np.ndarray
    workspace_backward: np.ndarray
    forward: np.ndarray
    backward: np.ndarray
    needs_inputs: np.ndarray
    needs_output: np.ndarray
    output_at_backward: np.ndarray
    previous_output: np.ndarray
    inputs: tuple
    consumers: tuple
    last_consumer: np.ndarray
    backward_reads: tuple
    holds: tuple
    holders: tuple
    new_gradients: np.ndarray
    fresh_gradients: np.ndarray

    #: The fields in bytes, which :meth:`scaled` divides.
    SIZES = (
        "output_bytes", "saved_bytes", "workspace_forward", "workspace_backward",
        "previous_output", "new_gradients", "fresh_gradients",
    )

    def __post_init__(self):
        # One copy serves every solver of the model: none may write into it.
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False

    @classmethod
    def of(cls, model):
        """The tables of ``model`` (use ``model.tables``, which builds them once)."""
        layers = model.layers
        n, sink = len(layers), model.sink
        dtype = size_dtype(model)

        def sizes(values):
            return np.array(list(values), dtype=dtype)

        output = sizes(layer.output_bytes for layer in layers)
        needs_output = np.array([layer.needs_output for layer in layers], dtype=bool)
        output_at_backward = needs_output.copy()
        output_at_backward[sink] = True
        inputs = tuple(layer.inputs for layer in layers)
        backward_reads = tuple(
            (layer.inputs if layer.needs_inputs else ()) + ((i,) if output_at_backward[i] else ())
            for i, layer in enumerate(layers)
        )
        holders = [[] for _ in range(n)]
        for c, layer in enumerate(layers):
            if layer.needs_inputs:
                for j in layer.inputs:
                    holders[j].append(c)
            if layer.needs_output:
                holders[c].append(c)
        new, fresh = model.reverse_order_gradients
        return cls(
            n=n,
            sink=sink,
            input_bytes=model.input_bytes,
            output_bytes=output,
            saved_bytes=sizes(layer.saved_bytes for layer in layers),
            workspace_forward=sizes(layer.workspace_forward for layer in layers),
            workspace_backward=sizes(layer.workspace_backward for layer in layers),
            forward=np.array([layer.forward for layer in layers], dtype=float),
            backward=np.array([layer.backward for layer in layers], dtype=float),
            needs_inputs=np.array([layer.needs_inputs for layer in layers], dtype=bool),
            needs_output=needs_output,
            output_at_backward=output_at_backward,
            previous_output=np.concatenate((sizes([0]), output[:-1])),
            inputs=inputs,
            consumers=model.consumers,
            last_consumer=np.array([max(c) if c else -1 for c in model.consumers], dtype=np.int64),
            backward_reads=backward_reads,
            holds=model.saved_reads,
            holders=tuple(tuple(h) for h in holders),
            new_gradients=sizes(new),
            fresh_gradients=sizes(fresh),
        )

    def scaled(self, unit):
        """These tables with every size (``input_bytes`` included) in units of ``unit`` bytes, rounded down.

        With ``unit`` the gcd of the sizes (:func:`planner.lowering.size_unit`)
        the division is exact: the milp programs' integer coefficients.
        """
        if unit == 1:
            return self
        return replace(
            self,
            input_bytes=self.input_bytes // unit,
            **{name: getattr(self, name) // unit for name in self.SIZES},
        )
