"""``profile --estimate`` (fake tensors, nothing runs) agrees with the measured profile on memory.

The measured profile is the truth: a saved tensor whose storage is a
parameter's, a buffer's or the target's is not saved data, and one whose
storage is an input's or the output's is ``needs_inputs`` / ``needs_output``,
not ``saved_bytes``.  On fake tensors the estimate follows the same rule, so
every layer's ``saved_bytes``, ``needs_inputs``, ``needs_output`` and
``output_bytes`` are equal, exactly: sizes on fake tensors are the real
tensors' sizes (only times differ: FLOPs against milliseconds).  So is the
model's ``input_bytes``, except with an MSE loss: on the CPU ``F.mse_loss``
returns a view of an output-sized buffer, which the measured profile adds to
``input_bytes`` (the caller holds the loss value) and fake tensors do not have.
"""

import pytest
import torch
from torch import nn

from planner.torch.profile import profile_model
from tests import models_hf, models_torch, models_train

MEMORY = ("saved_bytes", "needs_inputs", "needs_output", "output_bytes")


def _linear_chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


class _Head(nn.Module):
    """A Linear whose output is a slice: the stage's output keeps the whole 64-wide buffer alive."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 64)

    def forward(self, x):
        return self.linear(x)[:, :8]


def _sliced_chain():
    torch.manual_seed(0)
    return nn.Sequential(_Head(), nn.Tanh(), nn.Linear(8, 4))


def _small_gpt():
    torch.manual_seed(0)
    return models_torch.SmallGPT(vocab=5000, d=32, heads=2, layers=2, block_size=128)


CASES = {
    "linear chain": (_linear_chain, (8, 16), {}),
    "linear ops": (_linear_chain, (8, 16), {"stages": "ops"}),
    "sliced output": (_sliced_chain, (8, 16), {}),
    "conv chain": (models_torch.small_cnn, (2, 3, 16, 16), {}),
    "MLP, MSE loss": (models_torch.dropout_mlp, (8, 3, 4, 4), {"loss": "mse"}),
    "conv DAG": (models_train.resnet_dag, (2, 3, 8, 8), {}),
    "skip net": (models_torch.skip_net, (2, 3, 8, 8), {}),
    "small GPT": (_small_gpt, "tests/models_torch.py:small_gpt_example", {"loss": "cross_entropy"}),
    "GPT-2 ops": (models_hf.gpt2, "tests/models_hf.py:gpt2_labels", {"stages": "ops", "loss": "output"}),
}


@pytest.mark.parametrize("case", CASES)
def test_estimate_memory_equals_measured_per_layer(case):
    make, example, options = CASES[case]
    if case.startswith("GPT-2"):
        pytest.importorskip("transformers")
    measured = profile_model(make(), example, repeats=1, **options)
    estimated = profile_model(make(), example, estimate=True, **options)
    if options.get("loss") != "mse":
        assert estimated["input_bytes"] == measured["input_bytes"]
    assert [layer["name"] for layer in estimated["layers"]] == [layer["name"] for layer in measured["layers"]]
    for real, fake in zip(measured["layers"], estimated["layers"]):
        assert {k: fake[k] for k in MEMORY} == {k: real[k] for k in MEMORY}, real["name"]
