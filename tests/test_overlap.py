"""Paging schedules for transfers beside compute: the overlap pass and dp-paging planning with it."""

import dataclasses

import pytest

from planner.errors import InfeasibleError
from planner.simulate import simulate
from planner.solvers._overlap import overlap
from planner.solvers.dp_paging import _dp_paging, dp_paging
from planner.synthetic import random_chain
from tests.paging_setup import random_storage, timed
from tests.test_simulate_paging import STORAGE, chain, paged_ops

OVERLAP = dataclasses.replace(STORAGE, overlap=True)


def test_overlap_hides_the_pagein_and_the_write_within_the_budget():
    m = chain()
    before = simulate(m, paged_ops(), storage=OVERLAP)
    assert before.time == pytest.approx(14.0)
    ops, after = overlap(m, paged_ops(), OVERLAP, budget=None)
    assert after.valid and after.time < before.time and after.time >= after.compute
    assert simulate(m, ops, storage=OVERLAP).time == after.time
    _, fitted = overlap(m, paged_ops(), OVERLAP, budget=before.peak_bytes)
    assert fitted.peak_bytes <= before.peak_bytes and fitted.time <= before.time
    serial_ops, serial = overlap(m, paged_ops(), STORAGE, budget=None)  # serial transfers: unchanged
    assert serial_ops == paged_ops() and serial.time is None


@pytest.mark.parametrize("seed", range(6))
def test_dp_paging_plans_for_the_copy_engine(seed):
    """Never slower on the device's timeline than the serial plan, always within the budget."""
    model = timed(random_chain(7, seed))
    storage = dataclasses.replace(random_storage(seed), overlap=True)
    top = simulate(model, dp_paging(model, budget=None)[0]).peak_bytes
    for frac in (0.5, 0.7):
        budget = int(top * frac)
        try:
            serial, _ = _dp_paging(model, budget, storage, 500)
        except InfeasibleError:
            continue
        ops, params = dp_paging(model, budget=budget, storage=storage)
        result = simulate(model, ops, storage=storage)
        assert result.valid and result.peak_bytes <= budget
        assert result.step_time <= simulate(model, serial, storage=storage).step_time * (1 + 1e-12)
        assert params["dp_cost"] == result.step_time


@pytest.mark.parametrize("seed", range(4))
def test_the_objective_energy_never_costs_more_joules_than_dp_or_the_fastest_plan(seed):
    from planner.device import Compute, Device, step_energy

    model = timed(random_chain(7, seed), "s")
    storage = dataclasses.replace(random_storage(seed), overlap=True, transfer_power_w=0.3)
    device = Device("d", 10**9, storage, compute=Compute(flop_per_s=1e9, power_w=3.0))
    top = simulate(model, dp_paging(model, budget=None)[0]).peak_bytes
    for frac in (0.5, 0.7):
        budget = int(top * frac)
        try:
            plain, _ = dp_paging(model, budget=budget)
        except InfeasibleError:
            continue
        joules = {}
        for name, kwargs in (("dp", {}), ("time", {"storage": storage}), ("energy", {"storage": storage, "power_w": 3.0})):
            ops = plain if name == "dp" else dp_paging(model, budget=budget, **kwargs)[0]
            r = simulate(model, ops, storage=storage)
            assert r.valid and r.peak_bytes <= budget
            joules[name] = step_energy(device, r.compute, r.transfer)
        assert joules["energy"] <= min(joules["dp"], joules["time"]) * (1 + 1e-9)


@pytest.mark.parametrize("capacity", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_dp_paging_finds_the_fastest_share_without_planning_every_one(seed, capacity):
    """dp-paging stops planning shares once a step as short as the least compute is found: its step
    is still the fastest of the four shares' overlapped schedules (the first share's on ties, as
    when every share is planned, unless the early stop left a tying earlier share unplanned).  With
    a storage capacity, met by each share in its own restricted class, every share is planned."""
    from planner.solvers.dp_paging import _TRANSFER_SHARES

    model = timed(random_chain(8 + seed, seed))
    cap = 2 * max(layer.output_bytes for layer in model.layers) if capacity else None
    storage = dataclasses.replace(random_storage(seed, capacity=cap), overlap=True)
    top = simulate(model, dp_paging(model, budget=None)[0]).peak_bytes
    for frac in (0.4, 0.6, 0.8):
        budget = int(top * frac)
        try:
            planned = [_dp_paging(model, budget, storage, 500, share)[0] for share in _TRANSFER_SHARES]
        except InfeasibleError:
            continue
        steps = [overlap(model, ops, storage, budget)[1].step_time for ops in planned]
        ops, params = dp_paging(model, budget=budget, storage=storage)
        result = simulate(model, ops, storage=storage)
        assert result.valid and result.peak_bytes <= budget
        assert result.step_time == pytest.approx(min(steps), rel=1e-12)
        least = simulate(model, planned[-1], storage=storage).compute  # share 0's: the least compute
        first = _TRANSFER_SHARES[steps.index(min(steps))]
        assert params["transfer_share"] == first or (not capacity and result.step_time <= least * (1 + 1e-12))
