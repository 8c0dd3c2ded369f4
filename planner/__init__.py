"""edgeplan: activation-checkpointing schedules that make training fit a device's memory.

The library behind the ``edgeplan`` command.  Start with
:func:`planner.model.load_model`, :func:`planner.solvers.solve` and
:func:`planner.simulate.simulate`.
"""

__version__ = "0.1.0"
