"""Compiled stages (issue 19): ``profile --compile`` measures what ``compile=True`` runs.

torch.compile is slow: these tests compile with ``aot_eager`` (torch.compile's
capture and autograd split with eager kernels, the path inductor takes up to
its kernels) on a tiny chain, and are marked ``compile``
(``pytest -m "not compile"`` leaves them out).
"""

import json
import warnings

import pytest
import torch

from planner import solvers
from planner.model import model_from_dict
from planner.torch.executor import ScheduledModule
from planner.torch.profile import profile_model
from planner.torch.verify import verify
from tests.conftest import CHAIN_SHAPE, ROOT, run
from tests.models_train import ForkNet, bn_dropout_chain

pytestmark = pytest.mark.compile

BACKEND = "aot_eager"
TARGET = f"{ROOT / 'tests' / 'models_train.py'}:bn_dropout_chain"
INPUT = ",".join(map(str, CHAIN_SHAPE))


@pytest.fixture(scope="module")
def compiled_chain():
    """``bn_dropout_chain`` profiled with its stages compiled by ``aot_eager``."""
    return model_from_dict(profile_model(bn_dropout_chain(), CHAIN_SHAPE, repeats=1, name="chain",
                                         loss="cross_entropy", compile=BACKEND))


def test_a_compiled_profile_predicts_the_compiled_run(compiled_chain):
    """The model file says it was profiled compiled, and the compiled run's peak is its prediction."""
    assert compiled_chain.document["compile"] == BACKEND
    assert f"compiled with {BACKEND}" in compiled_chain.document["source"]
    full = solvers.solve(compiled_chain, None, "store-all").result.peak_bytes
    for budget in (None, int(full * 0.7)):
        solution = solvers.solve(compiled_chain, budget, "auto")
        result = verify(bn_dropout_chain(), CHAIN_SHAPE, solution.schedule.ops, model=compiled_chain,
                        predicted=solution.result.peak_bytes, compile=BACKEND)
        assert result.grads_match, result.max_abs_diff
        assert result.compile == BACKEND and result.notes == ()
        assert abs(result.relative_error) <= 0.02, (budget, result.measured_peak_bytes, result.predicted_peak_bytes)


def test_a_run_compiled_otherwise_than_profiled_warns(compiled_chain, chain):
    """A compiled run of an eager profile, or an eager run of a compiled one, warns; matching runs do not."""
    compiled_schedule = solvers.solve(compiled_chain, None, "store-all").schedule
    eager_schedule = solvers.solve(chain, None, "store-all").schedule
    with pytest.warns(UserWarning, match=r"profiled with eager \(uncompiled\) stages .* run compiled \(aot_eager\)"):
        ScheduledModule(bn_dropout_chain(), chain, eager_schedule, compile=BACKEND)
    with pytest.warns(UserWarning, match=r"profiled with compiled \(aot_eager\) stages and its stages run eager"):
        ScheduledModule(bn_dropout_chain(), compiled_chain, compiled_schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScheduledModule(bn_dropout_chain(), compiled_chain, compiled_schedule, compile=BACKEND)
        ScheduledModule(bn_dropout_chain(), chain, eager_schedule)


def test_profile_and_verify_compile_on_the_command_line(tmp_path):
    """``profile --compile-backend`` writes the field; ``verify --compile-backend`` on an eager file warns."""
    compiled, eager = tmp_path / "compiled.json", tmp_path / "eager.json"
    result = run("profile", TARGET, "--input", INPUT, "--repeats", "1", "--compile-backend", BACKEND,
                 "-o", compiled)
    assert result.exit_code == 0, result.output
    assert json.loads(compiled.read_text())["compile"] == BACKEND
    assert run("profile", TARGET, "--input", INPUT, "--repeats", "1", "-o", eager).exit_code == 0
    assert "compile" not in json.loads(eager.read_text())
    schedule = tmp_path / "schedule.json"
    assert run("solve", eager, "--memory", "1GB", "--strategy", "store-all", "-o", schedule).exit_code == 0
    result = run("verify", TARGET, "--input", INPUT, "--schedule", schedule, "--model", eager,
                 "--compile-backend", BACKEND, "--json")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["compile"] == BACKEND and verdict["grads_match"]
    assert "profiled with eager (uncompiled) stages" in verdict["notes"][0]
    assert "warning:" in result.stderr and "--compile-backend aot_eager" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compile-backend", "no-such-backend"], "unknown torch.compile backend 'no-such-backend'"),
        (["--compile", "--estimate"], "--estimate runs nothing"),
    ],
)
def test_bad_compile_options_are_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "model.json"
    result = run("profile", TARGET, "--input", INPUT, *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and not out.exists()


def test_inductor_without_a_cpp_compiler_is_refused(tmp_path, monkeypatch):
    """inductor on the CPU needs a C++ compiler: without one, one line, exit 2, no file."""
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, str(tmp_path / "no-such-c++")))
    out = tmp_path / "model.json"
    result = run("profile", TARGET, "--input", INPUT, "--compile", "-o", out)
    assert result.exit_code == 2, result.output
    assert "inductor backend needs a C++ compiler" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = run("profile", TARGET, "--input", INPUT, "--repeats", "1", "--compile-backend", BACKEND, "-o", out)
    assert result.exit_code == 0, result.output  # aot_eager needs none


def test_fit_compiled_profiles_compiled_and_trains_as_plain_training():
    """``fit(compile=...)`` plans on the compiled stages' costs: no warning, and plain training's gradients."""
    from planner import fit

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(CHAIN_SHAPE, generator=gen), torch.randint(0, 10, (CHAIN_SHAPE[0],), generator=gen)
    plain, net = bn_dropout_chain(), bn_dropout_chain()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped = fit(net, (x, y), memory="100MB", compile=BACKEND, repeats=1)
    assert wrapped.plan.model.document["compile"] == BACKEND and wrapped.compiled == BACKEND
    torch.manual_seed(0)
    wrapped(x, target=y).backward()
    torch.manual_seed(0)
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    for p, q in zip(net.parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5)


@pytest.mark.parametrize("factory", [bn_dropout_chain, ForkNet])
def test_every_stage_runs_compiled(factory):
    """Each compiled stage runs its compiled graph, in grad mode and without (found: torch.nn modules compiled
    as they are share one code object, and dynamo ran them eager past its 8 graphs per code object; and every
    stage torch.export captured ran eager: dynamo could not trace torch.fx's ``map_arg`` in the stage's call)."""
    from planner.torch.capture import build_stages
    from planner.torch.measure import compiled_stages

    net = factory()
    x = torch.randn(CHAIN_SHAPE)
    _, stage_list = build_stages(net, "auto", example=(x,))
    stage_list = compiled_stages(stage_list, BACKEND)
    assert len(stage_list) > (8 if factory is bn_dropout_chain else 3)
    outputs = {}
    for i, stage in enumerate(stage_list):
        args = [x if p < 0 else outputs[p] for p in stage.inputs]
        with torch.no_grad():
            stage.fn(*args)
        y = stage.fn(*args)
        assert type(y.grad_fn).__name__ == "CompiledFunctionBackward", (stage.name, y.grad_fn)
        outputs[i] = y.detach().requires_grad_()


COUNTED = []  # one entry per graph the counting backend compiled


@pytest.fixture(scope="module")
def counting_backend():
    """``edgeplan_counting``: aot_eager that counts the graphs it compiles (in ``COUNTED``)."""
    from torch._dynamo.backends.registry import lookup_backend, register_backend

    def counting(graph, example_inputs):
        COUNTED.append(graph)
        return lookup_backend("aot_eager")(graph, example_inputs)

    register_backend(compiler_fn=counting, name="edgeplan_counting")
    return "edgeplan_counting"


def test_fit_compiles_each_stage_once_and_trains_as_plain_training(counting_backend):
    """``fit(compile=)`` runs the stages its profile compiled: the steps compile nothing more (found: every stage
    was compiled twice, once to profile and once more when the ScheduledModule built its stages)."""
    from planner import fit

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(CHAIN_SHAPE, generator=gen), torch.randint(0, 10, (CHAIN_SHAPE[0],), generator=gen)
    COUNTED.clear()
    profile_model(bn_dropout_chain(), lambda: ((x,), y), repeats=1, loss="cross_entropy", compile=counting_backend)
    profiled = len(COUNTED)
    assert profiled >= len(bn_dropout_chain())  # one graph per stage at least (grad and no-grad variants)
    COUNTED.clear()
    plain, net = bn_dropout_chain(), bn_dropout_chain()
    wrapped = fit(net, (x, y), memory="100MB", compile=counting_backend, repeats=1)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (net, plain)]
    for _ in range(2):
        torch.manual_seed(0)
        wrapped(x, target=y).backward()
        torch.manual_seed(0)
        torch.nn.functional.cross_entropy(plain(x), y).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
    assert len(COUNTED) == profiled, f"{len(COUNTED)} graphs compiled, the profile alone compiles {profiled}"
    for p, q in zip(net.parameters(), plain.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
