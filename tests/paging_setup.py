"""Setup shared by the paging solvers' tests: timed models and seeded random storages."""

import numpy as np

from planner.device import Storage
from planner.model import model_from_dict


def timed(model, unit="ms"):
    """``model`` with its ``time_unit`` set to ``unit`` (paging needs a time)."""
    doc = model.to_dict()
    doc["time_unit"] = unit
    return model_from_dict(doc)


def random_storage(seed, *, capacity=None, maybe_zero_latency=False):
    """Random storage figures from ``seed``: transfers of a 50 kB output cost 0.5..25 ms.

    Rates are drawn in 2..100 MB/s and latencies in 0..3 ms (forwards of the
    random chains take 1..19 ms); with ``maybe_zero_latency`` each latency is
    0 by a coin toss.  ``capacity`` is the storage's ``bytes``.
    """
    rng = np.random.default_rng(seed)
    read = float(rng.uniform(2e6, 1e8))
    write = float(rng.uniform(2e6, 1e8))

    def latency():
        drawn = rng.uniform(0, 3e-3)
        return float(rng.choice([0.0, drawn])) if maybe_zero_latency else float(drawn)

    read_latency = latency()
    return Storage(
        read_bytes_per_s=read,
        write_bytes_per_s=write,
        read_latency_s=read_latency,
        write_latency_s=latency(),
        bytes=capacity,
    )
