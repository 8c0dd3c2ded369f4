"""How ``profile`` times stages (issue 19): the timing's own cost is taken off every stage."""

from torch import nn

import planner.torch.profile as profile
from planner.torch.measure import call_cost
from planner.torch.profile import profile_model


def test_an_empty_stage_costs_something_to_time():
    """Each timed backward is a backward() call of its own (a training step makes one): an empty stage shows it."""
    import torch

    forward, backward = call_cost(device=torch.device("cpu"), rounds=5)
    assert forward > 0 and backward > 0


def test_the_timing_cost_is_taken_off_every_stage(monkeypatch):
    """The stage times are the medians less the empty stage's; a stage cheaper than that costs 0, never less."""
    monkeypatch.setattr(profile, "call_cost", lambda device: (1e6, 1e6))
    doc = profile_model(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), (2, 3), repeats=2, threads=1)
    assert [(l["forward"], l["backward"]) for l in doc["layers"]] == [(0.0, 0.0), (0.0, 0.0)]
    assert doc["timing"]["call_cost"] == [1e6, 1e6]
    assert "less the timing's own cost (1000000000 us forward, 1000000000 us backward" in doc["source"]
    monkeypatch.setattr(profile, "call_cost", lambda device: (0.0, 0.0))
    doc = profile_model(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), (2, 3), repeats=2, threads=1)
    assert all(l["forward"] > 0 and l["backward"] > 0 for l in doc["layers"])
