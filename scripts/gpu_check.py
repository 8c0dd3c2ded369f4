"""The device check for a machine with a CUDA GPU: run it there, not in the test suite.

Usage::

    python scripts/gpu_check.py        # prints one line per case, exits 1 on a mismatch
    python scripts/gpu_check.py cpu    # the same cases on the CPU (a dry run of the script)

It profiles small models on the GPU, plans schedules (recomputation, and paging to pinned host
memory), runs them with ``planner.torch.verify.verify`` on CUDA and compares the measured
``torch.cuda.max_memory_allocated`` peak and the gradients with the simulator and plain
autograd.  The CPU test suite covers the same code paths on the CPU; this script exists because
the pinned-host-memory paging path and CUDA memory can only be measured on a GPU.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from planner import solvers  # noqa: E402
from planner.device import Storage  # noqa: E402
from planner.torch.profile import profile_model  # noqa: E402
from planner.model import model_from_dict  # noqa: E402
from planner.torch import verify as runtime  # noqa: E402
from tests.models_torch import deeper_cnn  # noqa: E402
from tests.models_train import bn_dropout_chain, resnet_dag  # noqa: E402

TOLERANCE = 0.02
HOST = Storage(25e9, 25e9, read_latency_s=1e-5, write_latency_s=1e-5)  # PCIe 4.0 x16


def main(device="cuda"):
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    cases = [
        ("deeper_cnn", deeper_cnn, (16, 3, 16, 16), "auto", "dp", None),
        ("bn_dropout_chain", bn_dropout_chain, (16, 3, 8, 8), "auto", "dp-paging", HOST),
        ("resnet_dag", resnet_dag, (16, 3, 16, 16), "ops", "reforward", None),
    ]
    failed = 0
    for name, factory, shape, stages, strategy, storage in cases:
        model = model_from_dict(profile_model(factory(), shape, stages=stages, device=device, name=name))
        peak = solvers.solve(model, None, "store-all").result.peak_bytes
        sol = solvers.solve(model, int(peak * 0.6), strategy, storage=storage)
        r = runtime.verify(factory(), shape, sol.ops, stages=stages, model=model, device=device,
                           predicted=sol.result.peak_bytes, budget=sol.schedule.budget_bytes)
        ok = r.grads_match and abs(r.relative_error) <= TOLERANCE
        failed += not ok
        print(f"{name} {strategy}: measured {r.measured_peak_bytes} predicted {r.predicted_peak_bytes} "
              f"({r.relative_error:+.2%}) plain {r.reference_peak_bytes} grads_match {r.grads_match} "
              f"pageins {r.pageins} transfer {r.transfer_seconds} {'ok' if ok else 'MISMATCH'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
