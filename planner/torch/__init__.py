"""The PyTorch wing of edgeplan (the ``torch`` extra).

Bottom layer first: :mod:`~planner.torch.stages` (the Stage record),
:mod:`~planner.torch.inputs` (TARGET, ``--input``, ``--example``),
:mod:`~planner.torch.loss` (the one loss table), :mod:`~planner.torch.fx_trace`
and :mod:`~planner.torch.capture` (cutting a model into stages),
:mod:`~planner.torch.measure` and :mod:`~planner.torch.profile` (what each
stage costs -> a model file), :mod:`~planner.torch.executor`
(``ScheduledModule``, training with a schedule), :mod:`~planner.torch.verify`
(the executor's own check against plain autograd) and
:mod:`~planner.torch.prepare`.  Nothing here is imported by the base install.
"""
