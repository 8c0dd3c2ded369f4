"""A ScheduledModule inside DistributedDataParallel: 2 processes, gloo, CPU (issue 19).

Each rank trains 3 SGD steps on its own batches with plain DDP and with DDP over
a ScheduledModule whose schedule recomputes; the parameters must be equal, the
gradients all-reduced once per step in the same buckets, ``no_sync()`` must
accumulate, and each rank's measured peak must be within 2% of the prediction.
"""

import json
import socket

import pytest
import torch

from planner import solvers
from planner.model import model_from_dict
from planner.torch.profile import profile_model

MEMORY_TOLERANCE = 0.02
SHAPE = (16, 64)
CLASSES = 10
STEPS = 3


def _net():
    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Dropout(0.1)]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, CLASSES))


def _batches(rank, n):
    gen = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(SHAPE, generator=gen), torch.randint(0, CLASSES, (SHAPE[0],), generator=gen))
            for _ in range(n)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(ddp, net, batches, rank, *, accumulate=False):
    """SGD steps through ``ddp`` (loss = ddp(x, target=y)); returns the bucket reductions per step."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    reductions = []

    def count(state, bucket):
        reductions[-1] += 1
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, count)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.manual_seed(7 + rank)
    for k in range(0, len(batches), 2 if accumulate else 1):
        reductions.append(0)
        if accumulate:
            with ddp.no_sync():
                ddp(batches[k][0], target=batches[k][1]).backward()
            ddp(batches[k + 1][0], target=batches[k + 1][1]).backward()
        else:
            ddp(*[batches[k][0]], target=batches[k][1]).backward()
        opt.step()
        opt.zero_grad()
    return list(reductions)


class _Plain(torch.nn.Module):
    """The user's module with their loss: ``forward(x, target)`` is the loss."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, target):
        return torch.nn.functional.cross_entropy(self.net(x), target)


def _worker(rank, port, model_doc, schedule_doc, out, options):
    import os

    from torch.nn.parallel import DistributedDataParallel as DDP

    from planner.schedule import schedule_from_dict
    from planner.torch.executor import ScheduledModule
    from planner.torch.measure import allocation_trace

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = model_from_dict(model_doc)
        schedule = schedule_from_dict(schedule_doc, model)
        result = {}
        for accumulate in (False, True):
            batches = _batches(rank, STEPS * (2 if accumulate else 1))
            plain_net, net = _net(), _net()
            plain = DDP(_Plain(plain_net), **options)
            wrapped = DDP(ScheduledModule(net, model, schedule), **options)
            plain_counts = _train(plain, plain_net, batches, rank, accumulate=accumulate)
            counts = _train(wrapped, net, batches, rank, accumulate=accumulate)
            diff = max((p - q).abs().max().item() for p, q in zip(net.parameters(), plain_net.parameters()))
            result["accumulate" if accumulate else "steps"] = {
                "max_param_diff": diff, "reductions": counts, "plain_reductions": plain_counts,
            }
        # The peak of one more step, gradients allocated before it (fixed memory).
        x, y = _batches(rank, 1)[0]
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        peak = allocation_trace(lambda: wrapped(x, target=y).backward(), x.device)[1]
        result["measured_peak"] = peak + x.numel() * x.element_size() + y.numel() * y.element_size()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def planned():
    model = model_from_dict(profile_model(_net(), SHAPE, repeats=1, name="mlp", loss="cross_entropy"))
    full = solvers.solve(model, None, "store-all").result.peak_bytes
    solution = solvers.solve(model, int(full * 0.6), "revolve")
    assert solution.result.forwards > len(model)  # it recomputes
    return model, solution


def test_ddp_over_a_scheduled_module_trains_as_plain_ddp(planned, tmp_path):
    """DDP's defaults (``find_unused_parameters=False``, no ``static_graph``).

    Not supported: ``find_unused_parameters=True`` (DDP searches the returned
    tensor's graph for the parameters, and the schedule's graph is reached only
    at the backward: every parameter reads as unused, then ready twice) and
    ``static_graph=True`` (no all-reduce after its first step).
    """
    import torch.multiprocessing as mp

    model, solution = planned
    mp.spawn(_worker, args=(_free_port(), model.document, json.loads("".join(solution.schedule.iter_json(model))), str(tmp_path), {}),
             nprocs=2, join=True)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for run in ("steps", "accumulate"):
            assert result[run]["max_param_diff"] <= 1e-5, (rank, run, result)
            # One all-reduce per bucket per step, as plain DDP: none from recomputation or no_sync.
            assert result[run]["reductions"] == result[run]["plain_reductions"], (rank, run, result)
        peak = solution.result.peak_bytes
        assert abs(result["measured_peak"] / peak - 1) <= MEMORY_TOLERANCE, (rank, result["measured_peak"], peak)
