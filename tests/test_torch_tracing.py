"""Tracing ordinary PyTorch code into stages, inputs, and the loss as the sink (issue 11)."""

import json
import os
import textwrap

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cli import main
from planner import solvers
from planner.errors import ModelError
from planner.torch.capture import build_stages
from planner.torch.inputs import InputSpec, make_example, parse_input
from planner.torch.loss import make_loss
from planner.torch.measure import allocation_trace
from planner.torch.profile import prepare, profile_model
from planner.model import model_from_dict
from tests.reference import replay_solution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "tests", "models_torch.py")


def _names(doc):
    return [layer["name"] for layer in doc["layers"]]


def _layer(doc, name):
    return next(layer for layer in doc["layers"] if layer["name"] == name)


def _store_all_peak(doc):
    model = model_from_dict(doc)
    solution = solvers.solve(model, None, "store-all")
    assert replay_solution(model, solution)["valid"]
    return solution.result.peak_bytes - model.input_bytes


def _measured_step(net, inputs, target, loss):
    """Allocator peak of one plain autograd step (parameter gradients allocated before)."""
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    fn = make_loss(loss)
    _, peak, _ = allocation_trace(lambda: fn(net(*inputs), target).backward(), torch.device("cpu"))
    return peak


# ---------------------------------------------------------------- inputs


def test_parse_input():
    assert parse_input("8,3,32,32") == InputSpec(shape=(8, 3, 32, 32))
    assert parse_input("4x128:int64:5000") == InputSpec(shape=(4, 128), dtype="int64", high=5000)
    assert parse_input("4x8:bool") == InputSpec(shape=(4, 8), dtype="bool")
    assert parse_input("2x3:float64") == InputSpec(shape=(2, 3), dtype="float64")
    for bad, message in (
        ("4x0", "not a positive integer"),
        ("4:int64", "needs HIGH"),
        ("4:float32:3", "HIGH needs an integer dtype"),
        ("4:complex64", "is not one of"),
        ("4:int64:-1", "is not a positive integer"),
        ("4:int64:5:6", "expected SHAPE"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_input(bad)


def test_make_example_from_inputs():
    specs = [parse_input("4x16:int64:50"), parse_input("4x16:bool"), parse_input("4x3")]
    (ids, mask, x), target = make_example(specs, dtype="float64", seed=3)
    assert ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 50
    assert mask.dtype == torch.bool and x.dtype == torch.float64 and target is None
    again, _ = make_example(specs, dtype="float64", seed=3)
    assert all(torch.equal(a, b) for a, b in zip((ids, mask, x), again))


def test_make_example_from_a_function(tmp_path):
    path = tmp_path / "ex.py"
    path.write_text(textwrap.dedent("""
        import torch
        def good():
            return (torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.long)), torch.ones(2)
        def one():
            return torch.zeros(2, 3), None
        def notuple():
            return torch.zeros(2)
        def badtarget():
            return torch.zeros(2), 5
        def boom():
            raise RuntimeError("nope")
    """))
    (a, b), t = make_example(f"{path}:good")
    assert a.dtype == torch.float32 and b.dtype == torch.int64 and t.dtype == torch.float32
    (a,), t = make_example(f"{path}:one")
    assert a.shape == (2, 3) and t is None
    for name, message in (
        ("notuple", r"must return \(inputs, target\)"),
        ("badtarget", "target must be a tensor or None"),
        ("boom", "calling it failed: RuntimeError: nope"),
        ("absent", "has no attribute 'absent'"),
    ):
        with pytest.raises(ModelError, match=message):
            make_example(f"{path}:{name}")


def test_integer_inputs_reach_an_embedding():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(8 * 6, 3))
    doc = profile_model(net, [parse_input("4x6:int64:50")], repeats=1)
    assert doc["input_bytes"] == 4 * 6 * 8
    assert _names(doc) == ["L0_Embedding+L1_Flatten", "L2_Linear"]  # a view joins its producer's stage


# ---------------------------------------------------------------- tracing ordinary code


class GLU(nn.Module):
    """The 10-line reproduction of the issue: a shape used as a number in a slice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        h = self.fc(x)
        n = h.shape[-1] // 2
        return h[..., :n] * h[..., n:]


def test_shapes_used_as_numbers_are_constants():
    torch.manual_seed(0)
    doc = profile_model(GLU(), (4, 8), repeats=1)
    assert _names(doc) == ["fc", "mul"]
    mul = _layer(doc, "mul")
    assert mul["inputs"] == ["fc"] and mul["output_bytes"] == 4 * 8 * 4
    assert mul["needs_inputs"] and mul["saved_bytes"] == 0  # both halves are views of fc's output


class Pieces(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 12)
        self.rnn = nn.GRU(4, 5, batch_first=True)

    def forward(self, x):
        h = self.fc(x)
        a, b, c = h.split(4, dim=-1)
        d, e = h.chunk(2, dim=-1)
        rows = torch.unbind(h, dim=0)
        out, _ = self.rnn(a.unsqueeze(1))
        return a * b + c + d.sum(-1, keepdim=True) + e.mean(-1, keepdim=True) + rows[0][:4] + out.squeeze(1)[:, :1]


def test_multi_output_ops_and_modules():
    torch.manual_seed(0)
    doc = profile_model(Pieces(), (3, 6), stages="ops", repeats=1)
    names = _names(doc)
    # split, chunk and unbind make views of fc's output: no layer of their own.
    assert not any(n.startswith(("split", "chunk", "unbind", "getitem")) for n in names)
    # The GRU returns (output, h_n): the piece used is a layer that runs the GRU, named by its module.
    assert "rnn" in names and not any(n.startswith("gru") for n in names)
    assert _layer(doc, "rnn")["output_bytes"] == 3 * 1 * 5 * 4
    assert _layer(doc, "mul")["inputs"] == ["fc"]
    assert _layer(doc, "fc")["output_bytes"] == 3 * 12 * 4  # counted once, by its producer
    net = Pieces()
    x = torch.randn(3, 6)
    _, stages = build_stages(net, "ops", example=(x,))
    outputs = {}
    for i, s in enumerate(stages):  # the stages compute what the model computes
        outputs[i] = s.fn(*[outputs[p] if p >= 0 else x for p in s.inputs])
    assert torch.allclose(outputs[len(stages) - 1], net(x))


class TupleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x), self.b(x)


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleBlock()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        p, q = self.block(x)
        return self.head(p * q)


def test_a_module_returning_a_tuple_in_modules_mode():
    torch.manual_seed(0)
    doc = profile_model(TupleNet(), (2, 4), stages="modules", repeats=1)
    # A block with two results is not one layer: its ops are, named by their modules.
    assert _names(doc) == ["block.a", "block.b", "mul", "head"]
    assert _layer(doc, "mul")["inputs"] == ["block.a", "block.b"]
    assert _layer(doc, "block.a")["output_bytes"] == 2 * 4 * 4
    assert _layer(doc, "block.a")["params_bytes"] == (16 + 4) * 4
    assert _layer(doc, "block.b")["params_bytes"] == (16 + 4) * 4


class Positions(nn.Module):
    """arange, a buffer, a parameter read directly, a causal mask: no stage reads no tensor."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.pos = nn.Parameter(torch.zeros(1, 6, 8))
        self.wpe = nn.Embedding(6, 8)
        self.register_buffer("mask", torch.tril(torch.ones(6, 6, dtype=torch.bool)))

    def forward(self, ids):
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.emb(ids) + self.wpe(pos) + self.pos[:, :T]
        scores = (x @ x.transpose(1, 2)).masked_fill(~self.mask[:T, :T], float("-inf"))
        return torch.softmax(scores, dim=-1) @ x + torch.zeros(T, 8)


def test_ops_that_read_no_tensor_are_folded_into_their_consumers():
    torch.manual_seed(0)
    net = Positions()
    doc = profile_model(net, [parse_input("2x6:int64:10")], repeats=1)
    for layer in doc["layers"]:
        assert layer["inputs"], layer["name"]  # every layer reads the input or another layer
    assert not any(n.startswith(("arange", "zeros", "wpe", "getattr")) for n in _names(doc))
    # The position embedding, folded into the first add, counts its parameters there.
    add = _layer(doc, "add")
    assert add["params_bytes"] == 6 * 8 * 4
    assert sum(layer["params_bytes"] for layer in doc["layers"]) == sum(
        p.numel() * 4 for p in net.parameters()
    )
    model = model_from_dict(doc)
    assert solvers.solve(model, None, "store-all").result.peak_bytes > 0


def test_tied_weights_count_once():
    import tests.models_torch as models

    net = models.SmallGPT(vocab=50, d=16, heads=2, layers=1, block_size=8)
    doc = profile_model(net, [parse_input("2x8:int64:50")], repeats=1, loss="cross_entropy")
    total = sum(p.numel() * 4 for p in net.parameters())  # parameters() lists a tied one once
    assert sum(layer["params_bytes"] for layer in doc["layers"]) == total
    assert _layer(doc, "lm_head")["params_bytes"] == 0  # the embedding's weight, counted by wte
    assert "scaled_dot_product_attention" in _names(doc) and "gelu" in _names(doc)


@pytest.mark.parametrize("stages", ["ops", "modules"])
def test_small_gpt_store_all_within_3_percent_of_a_real_step(stages):
    import tests.models_torch as models

    def factory():
        torch.manual_seed(0)
        return models.SmallGPT(vocab=500, d=32, heads=2, layers=2, block_size=32)

    spec = [parse_input("2x32:int64:500")]
    doc = profile_model(factory(), spec, stages=stages, repeats=1, loss="cross_entropy")
    model = model_from_dict(doc)
    assert model.is_chain == (stages == "modules")
    prep = prepare(factory(), spec, dtype="float32", stages=stages, seed=0, device="cpu", loss="cross_entropy")
    measured = _measured_step(prep.root, prep.inputs, prep.target, "cross_entropy")
    assert abs(_store_all_peak(doc) / measured - 1) < 0.03


def test_resnet_blocks_sequential_within_3_percent_of_checkpoint_sequential():
    """--stages modules makes the ResNet a chain of its blocks; checkpoint_sequential over it."""
    import tests.models_torch as models
    from torch.utils.checkpoint import checkpoint_sequential

    def factory():
        torch.manual_seed(0)
        return models.ResNet(width=8)

    spec = [parse_input("2x3x32x32")]
    doc = profile_model(factory(), spec, stages="modules", repeats=1, loss="cross_entropy")
    model = model_from_dict(doc)
    assert model.is_chain and _names(doc)[4:6] == ["layer1.0", "layer1.1"]
    prep = prepare(factory(), spec, dtype="float32", stages="modules", seed=0, device="cpu", loss="cross_entropy")
    for p in prep.root.parameters():
        p.grad = torch.zeros_like(p)
    stages = prep.stages
    functions = [s.fn for s in stages[:-1]] + [lambda y: stages[-1].fn(y, prep.target)]
    _, measured, _ = allocation_trace(
        lambda: checkpoint_sequential(  # no RNG state: 5 kB per segment, no layer (fidelity.md 3.3)
            functions, 3, prep.inputs[0], use_reentrant=False, preserve_rng_state=False
        ).backward(),
        torch.device("cpu"),
    )
    solution = solvers.solve(model, None, "sequential", segments=3)
    predicted = solution.result.peak_bytes - model.input_bytes
    assert abs(predicted / measured - 1) < 0.03, (predicted, measured)


# ---------------------------------------------------------------- the loss


def test_cross_entropy_is_the_sink_and_keeps_a_logits_sized_tensor():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 20))
    doc = profile_model(net, [parse_input("2x5:int64:20")], repeats=1, loss="cross_entropy")
    assert doc["loss"] == "cross_entropy"
    loss = doc["layers"][-1]
    logits = 2 * 5 * 20 * 4
    assert loss["name"] == "loss" and loss["inputs"] == ["L1_Linear"] and loss["output_bytes"] == 4
    assert loss["saved_bytes"] >= logits  # the log-softmax
    assert doc["input_bytes"] == 2 * 5 * 8 * 2  # the ids and the (B, T) target
    assert model_from_dict(doc).sink == len(doc["layers"]) - 1


def test_mse_sum_and_a_loss_function(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4))
    mse = profile_model(net, (2, 3), repeats=1, loss="mse")
    # The target has the output's shape; the mse value is a 0-d tensor over an output-sized
    # buffer, held by the caller to the end of the step: counted with the target.
    assert mse["input_bytes"] == 2 * 3 * 4 + 2 * 4 * 4 + (2 * 4 * 4 - 4)
    assert mse["layers"][-1]["output_bytes"] == 4
    total = profile_model(net, (2, 3), repeats=1, loss="sum")
    assert total["input_bytes"] == 2 * 3 * 4 and total["layers"][-1]["name"] == "loss"
    path = tmp_path / "losses.py"
    path.write_text("def l1(output, target):\n    return (output - target).abs().mean()\n"
                    "def vector(output, target):\n    return output\n")
    ex = tmp_path / "ex.py"
    ex.write_text("import torch\ndef ex():\n    return torch.randn(2, 3), torch.randn(2, 4)\n")
    custom = profile_model(net, f"{ex}:ex", repeats=1, loss=f"{path}:l1")
    assert custom["loss"] == f"{path}:l1" and custom["layers"][-1]["name"] == "loss"
    with pytest.raises(ModelError, match="must return a scalar tensor"):
        profile_model(net, f"{ex}:ex", repeats=1, loss=f"{path}:vector")
    with pytest.raises(ModelError, match="--loss 'hinge': expected one of cross_entropy, mse, sum"):
        profile_model(net, (2, 3), repeats=1, loss="hinge")


@pytest.mark.parametrize("loss", ["mse", "sum", "cross_entropy"])
def test_store_all_with_the_loss_matches_a_real_step(loss):
    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Linear(16, 16))

    doc = profile_model(factory(), (2, 3, 16, 16), repeats=1, loss=loss)
    prep = prepare(factory(), (2, 3, 16, 16), dtype="float32", stages="auto", seed=0, device="cpu", loss=loss)
    before = sum(t.numel() * t.element_size() for t in list(prep.inputs) + [prep.target] if t is not None)
    model = model_from_dict(doc)
    predicted = solvers.solve(model, None, "store-all").result.peak_bytes - before
    measured = _measured_step(prep.root, prep.inputs, prep.target, loss)
    assert abs(predicted - measured) <= 64, (predicted, measured)


def test_a_layer_named_loss_is_renamed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.loss = nn.Linear(3, 3)

        def forward(self, x):
            return self.loss(x)

    doc = profile_model(Net(), (2, 3), repeats=1, loss="sum")
    assert _names(doc) == ["loss_1", "loss"]


# ---------------------------------------------------------------- what cannot be traced

UNTRACEABLE = textwrap.dedent('''
    import torch
    from torch import nn

    class Branch(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    class Item(nn.Module):
        def forward(self, x):
            return x * x.max().item()

    class Number(nn.Module):
        def forward(self, x):
            return x.new_zeros(int(x.sum().abs()) + 1)

    class Write(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
        def forward(self, x):
            h = self.fc(x)
            h[:, 0] = 0
            return h

    class AddInPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
        def forward(self, x):
            h = self.fc(x)
            h.add_(1)
            return h

    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))
        def forward(self, x):
            return self.w * 2

    class Check(nn.Module):
        def forward(self, x):
            if not isinstance(x, torch.Tensor):
                raise TypeError("expected a tensor")
            return x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Branch()
        def forward(self, x):
            return self.inner(x) + 1

    def make(name):
        return globals()[name]()
''')


@pytest.mark.parametrize(
    "cls, message",
    [
        ("Branch", r"cannot trace control flow on a tensor's values .* in the model \(Branch\)"),
        ("Outer", r"cannot trace control flow on a tensor's values .* in module 'inner' \(Branch\)"),
        ("Item", r"cannot capture a tensor's value used as a Python number \(\.item\(\), int\(tensor\)\) in the "
                 r"model \(Item\): it would be frozen at the example's value"),
        ("Number", r"cannot trace a tensor's value used as a Python number \(int\(tensor\)\)"),
        ("Write", r"cannot capture an in-place write into a view \(x\[\.\.\.\] = \.\.\., fill_\) in the model \(Write\): "
                  r"assign the result to a new tensor instead"),
        ("Pair", r"Pair returns a tuple with 2 tensors \(0, 1\) and no 'logits': name the one the loss reads with "
                 r"--output-field NAME"),
        ("Constant", r"the output of Constant does not depend on its inputs"),
        ("Check", r"Check returns its input unchanged: there is nothing to profile"),
    ],
)
def test_untraceable_constructs_exit_2_with_one_line(tmp_path, cls, message):
    path = tmp_path / "untraceable.py"
    path.write_text(UNTRACEABLE + f"\ndef factory():\n    return {cls}()\n")
    result = CliRunner().invoke(main, ["profile", f"{path}:factory", "--input", "2,4", "--stages", "ops"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    import re

    assert re.search(message, lines[0]), lines[0]


def test_wrong_number_of_inputs():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    with pytest.raises(ModelError, match=r"Two.forward needs 2 inputs, the example gives 1 \(missing b\)"):
        profile_model(Two(), (2, 3), stages="ops", repeats=1)
    doc = profile_model(Two(), [parse_input("2x3"), parse_input("2x3")], repeats=1)
    assert _layer(doc, "add")["inputs"] == ["input"] and doc["input_bytes"] == 2 * 2 * 3 * 4


# ---------------------------------------------------------------- command line


def test_cli_profile_and_verify_with_a_loss_and_two_inputs(tmp_path):
    runner = CliRunner()
    model_path, schedule_path = tmp_path / "bert.json", tmp_path / "s.json"
    example = f"{MODELS}:tiny_bert_example"
    result = runner.invoke(main, ["profile", f"{MODELS}:tiny_bert", "--example", example,
                                  "--loss", "cross_entropy", "--repeats", "1", "-o", str(model_path)])
    assert result.exit_code == 0, result.output
    assert "not modelled" not in result.output
    doc = json.loads(model_path.read_text())
    assert doc["loss"] == "cross_entropy" and doc["layers"][-1]["name"] == "loss"
    result = runner.invoke(main, ["solve", str(model_path), "--memory", "1TB", "--strategy", "chen-greedy",
                                  "-o", str(schedule_path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["verify", f"{MODELS}:tiny_bert", "--example", example, "--schedule",
                                  str(schedule_path), "--model", str(model_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # chen-greedy with memory to spare keeps everything: it runs as plain autograd (issue 19), whose
    # peak this model file over-predicts by 5% (it was met only by the executor holding what autograd frees)
    assert report["grads_match"] and -0.06 < report["relative_error"] < 0.01
    assert abs(report["measured_peak_bytes"] / report["reference_peak_bytes"] - 1) < 0.01


def test_cli_without_loss_says_it_is_not_modelled():
    result = CliRunner().invoke(main, ["profile", f"{MODELS}:skip_net", "--input", "2,3,8,8",
                                       "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert "the loss's memory is not modelled" in result.stderr
    assert "loss" not in json.loads(result.stdout)


def test_cli_input_and_example_exclusive():
    runner = CliRunner()
    result = runner.invoke(main, ["profile", f"{MODELS}:skip_net"])
    assert result.exit_code == 2 and "give the model's inputs" in result.output
    result = runner.invoke(main, ["profile", f"{MODELS}:skip_net", "--input", "2,3,8,8",
                                  "--example", f"{MODELS}:resnet_example"])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(main, ["profile", f"{MODELS}:skip_net", "--input", "2x3:int64"])
    assert result.exit_code == 2 and "needs HIGH" in result.output


def test_an_inplace_op_whose_result_is_returned_runs_out_of_place(tmp_path):
    path = tmp_path / "inplace.py"
    path.write_text(UNTRACEABLE)
    from planner.torch.inputs import load_function

    net = load_function(f"{path}:make", what="test")("AddInPlace")
    x = torch.randn(2, 4)
    _, stages = build_stages(net, "ops", example=(x,))
    assert [s.name for s in stages] == ["fc", "add_"]
    h = stages[0].fn(x)
    again = stages[1].fn(h)
    assert torch.equal(again, stages[1].fn(h)) and torch.equal(again, net(x).detach())
    assert torch.equal(h, net.fc(x).detach())  # the write went to a new tensor, not fc's output


def test_restoring_buffers_writes_only_real_buffers():
    """Bug 3: a folded constant (a buffer's stride-0 expand) is not a buffer to restore on recompute."""
    from planner.torch.fx_trace import fx_stages

    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("token_type_ids", torch.zeros(1, 4), persistent=False)

        def forward(self, x):
            return self.fc(x) + self.token_type_ids.expand(x.shape[0], 4)

    net, x = Embed(), torch.randn(3, 4)
    for stages in (fx_stages(net, (x,), blocks=False), build_stages(net, "ops", example=(x,))[1]):
        buffers = [b for s in stages for b in s.buffers]
        assert all(any(b is r for r in net.buffers()) for b in buffers)
        for s in stages:  # what the executor does before a recomputation
            for b in s.buffers:
                b.data.copy_(b.detach().clone())
