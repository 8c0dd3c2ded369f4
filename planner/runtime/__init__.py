"""Executing edgeplan schedules in frameworks (PyTorch).

:mod:`planner.runtime.executor` trains with a schedule (``ScheduledModule``);
:mod:`planner.runtime.torch` checks a schedule against plain autograd
(``verify``, behind ``edgeplan verify``), on the same executor.
"""
