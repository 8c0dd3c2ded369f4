"""Executing edgeplan schedules in frameworks: :mod:`planner.runtime.torch` (PyTorch)."""
