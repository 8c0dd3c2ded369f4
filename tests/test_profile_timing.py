"""How ``profile`` times stages (issue 19): the backward() call's own cost is taken off every backward."""

from torch import nn

import planner.torch.profile as profile
from planner.torch.measure import call_cost, without_call_cost
from planner.torch.profile import profile_model


def test_an_empty_backward_costs_something_to_time():
    """Each timed backward is a backward() call of its own (a training step makes one): an empty stage shows it."""
    import torch

    assert call_cost(device=torch.device("cpu"), rounds=5) > 0


def test_the_call_cost_comes_off_every_backward_but_never_all_of_it():
    assert without_call_cost(0.05, 0.02) == 0.03
    assert without_call_cost(0.015, 0.02) == 0.0015  # a tenth of itself at the least: a backward costs something
    assert without_call_cost(0.0, 0.02) == 0.0  # a stage without a backward


def test_profile_takes_the_call_cost_off_the_backwards_only(monkeypatch):
    """The forwards keep their times (a step calls every forward); the model file records the cost."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    monkeypatch.setattr(profile, "call_cost", lambda device: 1e6)
    doc = profile_model(net, (2, 3), repeats=2, threads=1)
    assert all(l["forward"] > 0 and 0 < l["backward"] < 1e5 for l in doc["layers"])
    assert doc["timing"]["call_cost"] == 1e6
    assert "backwards less the backward() call's own cost (1000000000 us, an empty stage's)" in doc["source"]
