"""Hugging Face transformers models as they come: profile, solve, verify, train (issue 18).

The models are built from tiny configs in :mod:`tests.models_hf` (random weights, no hub):
GPT-2, BERT with a padding mask, Llama with rotary embedding and grouped-query attention,
ViT and ResNet, and a ConvNeXt whose forward draws random numbers (stochastic depth).  No wrapper: the factory returns the transformers model itself.
"""

import json

import pytest
import torch
from click.testing import CliRunner

import tests.models_hf as hf
from cli import main
from planner import solvers
from planner.errors import ModelError
from planner.model import load_model
from planner.schedule import load_schedule
from planner.torch.capture import build_stages
from planner.torch.executor import ScheduledModule
from planner.torch.inputs import flat_inputs
from planner.torch.loss import make_loss
from planner.torch.profile import profile_model

FAMILIES = ["gpt2", "bert", "llama", "vit", "resnet"]
FILE = hf.__file__
TOLERANCE = 0.02


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def _between(model_path):
    """Whole-step memory for :func:`tests.models_hf.halfway_budget` (parameters and gradients on top)."""
    model = load_model(model_path)
    return 2 * sum(layer.params_bytes for layer in model.layers) + hf.halfway_budget(model)[1]


def _profile_solve_verify(tmp_path, family, loss, example):
    model_path, schedule_path = tmp_path / f"{family}.json", tmp_path / f"{family}-schedule.json"
    ex = f"{FILE}:{example}"
    result = _cli("profile", f"{FILE}:{family}", "--example", ex, "--loss", loss, "--stages", "modules",
                  "--repeats", 1, "-o", model_path)
    assert result.exit_code == 0, result.output
    doc = json.loads(model_path.read_text())
    assert doc["loss"] == loss
    result = _cli("solve", model_path, "--memory", _between(model_path), "-o", schedule_path)
    assert result.exit_code == 0, result.output
    result = _cli("verify", f"{FILE}:{family}", "--example", ex, "--stages", "modules", "--model", model_path,
                  "--schedule", schedule_path, "--steps", 2, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["grads_match"] and report["buffers_match"], report
    measured, predicted = report["measured_peak_bytes"], report["predicted_peak_bytes"]
    assert abs(measured - predicted) <= TOLERANCE * predicted, report
    return doc


@pytest.mark.parametrize("family", FAMILIES)
def test_profile_solve_verify_with_a_loss(tmp_path, family):
    doc = _profile_solve_verify(tmp_path, family, "cross_entropy", f"{family}_batch")
    modules = [layer.get("module", "") for layer in doc["layers"]]
    blocks = {"gpt2": "transformer.h.", "bert": "bert.encoder.layer.", "llama": "model.layers.",
              "vit": "vit.layers.", "resnet": "resnet.encoder.stages."}[family]
    # One layer per decoder/encoder block, named by its module path.
    assert [m for m in modules if m.startswith(blocks)] == [blocks + "0", blocks + "1"]
    assert [layer["name"] for layer in doc["layers"] if layer.get("module", "").startswith(blocks)] == [
        blocks + "0", blocks + "1"]


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_loss_output_takes_the_models_own_loss(tmp_path, family):
    doc = _profile_solve_verify(tmp_path, family, "output", f"{family}_labels")
    assert doc["layers"][-1]["output_bytes"] == 4  # the model's scalar loss is the sink


def _train_plain(net, kwargs, steps, lr):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for step in range(steps):
        torch.manual_seed(100 + step)
        net(**kwargs).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("family", FAMILIES + ["convnext"])  # convnext: stochastic depth (bug 6)
def test_two_steps_through_scheduled_module_equal_plain_training(tmp_path, family):
    kwargs = getattr(hf, f"{family}_labels")()
    doc = profile_model(getattr(hf, family)(), f"{FILE}:{family}_labels", stages="modules", repeats=1,
                        loss="output", name=family)
    model_path, schedule_path = tmp_path / "m.json", tmp_path / "s.json"
    model_path.write_text(json.dumps(doc))
    model = load_model(model_path)
    solution = solvers.solve(model, _between(model_path) - 2 * sum(la.params_bytes for la in model.layers), "auto")
    solution.schedule.write(schedule_path, model)
    forwards = [op.layer for op in solution.schedule.ops if op.kind.value == "forward"]
    assert len(forwards) > len(set(forwards))  # it recomputes

    plain, net = getattr(hf, family)(), getattr(hf, family)()
    plain.train()
    _train_plain(plain, kwargs, 2, 0.05)
    net.train()
    wrapped = ScheduledModule(net, str(model_path), load_schedule(str(schedule_path), model), stages="modules")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for step in range(2):
        torch.manual_seed(100 + step)
        wrapped(**kwargs).backward()
        opt.step()
        opt.zero_grad()
    for (name, p), q in zip(net.named_parameters(), plain.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
    for (name, b), c in zip(net.named_buffers(), plain.buffers()):
        assert torch.equal(b, c), name


def test_outputs_are_picked_by_field_or_index():
    net = hf.bert()
    kwargs, _ = hf.bert_batch()
    example = flat_inputs((), kwargs)
    _, stages = build_stages(net, "modules", example=example)
    assert stages[-1].module == "classifier"
    with pytest.raises(ModelError, match=r"--output-field 'nope': BertForSequenceClassification's result "
                                          r"\(SequenceClassifierOutput\) has no field 'nope'; its tensors: logits"):
        build_stages(net, "modules", example=example, output="nope")
    with pytest.raises(ModelError, match=r"--output-field 'loss'.* has no field 'loss'"):
        build_stages(net, "modules", example=example, output="loss")  # no labels, no loss


def test_a_dataclass_or_tuple_result(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Out:
        hidden: object
        scores: object

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x, scale=1.0):
            h = self.fc(x)
            return Out(hidden=h, scores=h.softmax(-1) * scale)

    class Pair(Net):
        def forward(self, *inputs):
            return tuple(vars(super().forward(*inputs)).values())

    x = torch.randn(2, 4)
    with pytest.raises(ModelError, match=r"Net returns a Out with 2 tensors \(hidden, scores\) and no 'logits': "
                                          r"name the one the loss reads with --output-field NAME"):
        build_stages(Net(), "ops", example=(x,))
    _, stages = build_stages(Net(), "ops", example=flat_inputs((x,), {"scale": 2.0}), output="scores")
    assert [s.name for s in stages] == ["fc", "softmax", "mul"]
    _, stages = build_stages(Pair(), "ops", example=(x,), output="0")
    assert [s.name for s in stages] == ["fc"]


def test_random_ops_stay_ops_of_their_stage():
    """Bug 6: torch.rand in forward (stochastic depth) is drawn at every call, and its stage says so."""

    class Drop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            keep = (torch.rand(x.shape[0], 1) > 0.5).to(x.dtype)
            return self.fc(x) * keep + x

    x = torch.randn(64, 4)
    _, stages = build_stages(Drop(), "ops", example=(x,))
    random = [s for s in stages if s.random]
    assert random and not all(s.random for s in stages)
    outputs = {}
    for i, s in enumerate(stages):
        outputs[i] = s.fn(*[outputs[p] if p >= 0 else x for p in s.inputs])
    masks = [outputs[stages.index(s)] for s in random]
    again = [s.fn(*[outputs[p] if p >= 0 else x for p in s.inputs]) for s in random]
    assert not all(torch.equal(a, b) for a, b in zip(masks, again))  # not a frozen constant
    # A module called as a whole may draw: a chain's children are unknown (None: the executor learns it
    # at their first run), a built-in loss does not.
    _, chain = build_stages(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), "modules", example=(x,),
                            loss=make_loss("sum"))
    assert [s.random for s in chain] == [None, None, False]
    torch.manual_seed(5)
    first = [s.fn(*[outputs[p] if p >= 0 else x for p in s.inputs]) for s in random]
    torch.manual_seed(5)
    assert all(torch.equal(a, s.fn(*[outputs[p] if p >= 0 else x for p in s.inputs])) for a, s in zip(first, random))


def test_uncapturable_model_is_one_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 4)\n"
        "    def forward(self, input_ids):\n"
        "        h = self.fc(input_ids)\n"
        "        return h * h.max().item()\n"
        "def build():\n    return Net()\n"
        "def batch():\n    return {'input_ids': torch.randn(2, 4)}, None\n"
    )
    result = _cli("profile", f"{path}:build", "--example", f"{path}:batch")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "cannot capture a tensor's value used as a Python number" in lines[0]
    assert "the model (Net)" in lines[0] and "keep it a tensor" in lines[0]


def test_output_field_on_the_command_line(tmp_path):
    path = tmp_path / "two.py"
    path.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 4)\n"
        "    def forward(self, x):\n"
        "        h = self.fc(x)\n"
        "        return {'hidden': h, 'scores': h.relu()}\n"
        "def build():\n    return Net()\n"
    )
    model_path = tmp_path / "m.json"
    result = _cli("profile", f"{path}:build", "--input", "2,4", "--output-field", "scores", "--loss", "sum",
                  "--repeats", 1, "-o", model_path)
    assert result.exit_code == 0, result.output
    doc = json.loads(model_path.read_text())
    assert [layer["name"] for layer in doc["layers"]] == ["fc", "relu", "loss"] and doc["output"] == "scores"
    result = _cli("profile", f"{path}:build", "--input", "2,4")
    assert result.exit_code == 2 and "--output-field NAME" in result.output
