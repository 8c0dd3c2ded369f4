"""What ``edgeplan verify`` runs on: the target, its model, and the checks before training.

:func:`target_and_model` loads the target and the model its schedule was made
for (the ``--model`` file, or an estimate profile that runs nothing);
:func:`check_and_run` refuses a schedule made for another model or invalid,
predicts the peak and runs :func:`planner.torch.verify.verify`.  Needs PyTorch.
"""

import copy
import dataclasses

from planner.device import time_scale
from planner.errors import ModelMismatchError, ScheduleError

__all__ = ["target_and_model", "check_and_run", "predicted_transfer_seconds"]


def target_and_model(target, example, *, model_path=None, loss=None, dtype="float32", stages="auto", seed=0,
                     output=None):
    """``(obj, model, loss)``: the target's object, its model, and the loss to train with.

    With ``model_path`` the model is that file and ``loss`` defaults to the
    file's; without, only the layer names and the graph are needed, so the
    model is an estimate profile (nothing runs).
    """
    from planner.model import load_model, model_from_dict
    from planner.torch.inputs import load_target
    from planner.torch.profile import profile_model

    obj = load_target(target)
    if model_path:
        from planner.torch.loss import model_loss

        model = load_model(model_path)
        return obj, model, loss or model_loss(model)
    doc = profile_model(copy.deepcopy(obj), example, dtype=dtype, stages=stages, estimate=True,
                        name=target.rpartition(":")[2], loss=loss, seed=seed, output=output)
    return obj, model_from_dict(doc, source_name=f"profile of {target}"), loss


def check_and_run(obj, example, schedule, model, *, schedule_path, model_path=None, loss=None, dtype="float32",
                  stages="auto", device="cpu", seed=0, steps=1, lr=0.01, timeline=False, compile=False):
    """Check ``schedule`` against ``model``, then train with it and with plain autograd.

    ``compile`` runs the schedule's stages compiled (a backend name, or True).
    With ``timeline``, the result's ``op_peaks`` holds the peak measured
    during each op (on the CPU; None on CUDA) and ``predicted_op_peaks`` the
    simulator's memory during each op.

    Returns
    -------
    planner.torch.verify.VerifyResult

    Raises
    ------
    ModelMismatchError
        If ``model_path`` was given and the schedule's fingerprint is another model's.
    ScheduleError
        If the simulator rejects the schedule.
    """
    from planner.simulate import simulate
    from planner.torch.verify import verify

    if model_path and schedule.fingerprint != model.fingerprint:
        raise ModelMismatchError(f"{schedule_path}: the schedule was made for another model (fingerprint "
                                 f"{schedule.fingerprint}, {model_path} is {model.fingerprint})")
    replayed = model
    if schedule.storage is not None and not model_path:
        # An estimated model's times are FLOPs; only validity and memory are used here.
        replayed = dataclasses.replace(model, time_unit="s")
    result = simulate(replayed, schedule.ops, storage=schedule.storage, timeline=timeline)
    if not result.valid:
        raise ScheduleError(f"{schedule_path}: invalid schedule: {result.error}")
    predicted = result.peak_bytes if model_path else schedule.predicted.get("peak_bytes")
    if not isinstance(predicted, int) or isinstance(predicted, bool):
        predicted = None
    verified = verify(obj, example, schedule.ops, dtype=dtype, stages=stages, model=model, predicted=predicted,
                      seed=seed, device=device, steps=steps, lr=lr, budget=schedule.budget_bytes, loss=loss,
                      predicted_transfer=predicted_transfer_seconds(replayed, result, schedule.storage),
                      predicted_overhead=result.overhead, timeline=timeline, compile=compile)
    if timeline:
        verified = dataclasses.replace(verified, predicted_op_peaks=list(result.timeline))
    return verified


def predicted_transfer_seconds(model, result, storage):
    """Seconds the simulator gives the pageouts and pageins it replayed (None without storage).

    ``result`` is :func:`planner.simulate.simulate`'s for ``model`` and
    ``storage``; its ``transfer`` is in the model's time unit.
    """
    if storage is None:
        return None
    return result.transfer / time_scale(model) if result.pages else 0.0
