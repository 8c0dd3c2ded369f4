"""The front door: ``from planner import ...``, :func:`planner.plan`, and the error tree (issue 18)."""

import json
import subprocess
import sys

import pytest

import planner
from planner import EdgeplanError, InfeasibleError, ModelError, OptionError, SizeError, plan
from planner import errors
from planner.budget import split_memory
from planner.model import load_model
from planner.simulate import simulate
from tests.conftest import RESNET18, ROOT


def test_plan_returns_the_schedule_its_simulation_and_the_memory_split():
    r = plan(RESNET18, "256MB")
    assert r.success and r.status == 0
    assert r.split.memory_bytes == 256_000_000
    assert r.split.fixed_bytes == 2 * r.model.params_bytes
    assert r.schedule.fingerprint == r.model.fingerprint
    replay = simulate(r.model, r.schedule.ops)
    assert replay.valid and replay.peak_bytes == r.peak_bytes <= r.split.activation_bytes
    assert r.strategy == r.solution.strategy and r.params == r.solution.params
    assert r.least_memory_bytes is None and r.error is None


def test_plan_takes_a_path_a_document_or_a_model_and_bytes_or_a_size():
    model = load_model(RESNET18)
    document = json.loads(RESNET18.read_text())
    answers = [plan(m, memory, strategy="dp") for m, memory in
               [(str(RESNET18), "256MB"), (document, 256_000_000), (model, 256_000_000)]]
    assert len({tuple(r.schedule.ops) for r in answers}) == 1


def test_plan_answers_infeasible_with_the_least_memory_that_works():
    r = plan(RESNET18, "120MB")
    assert not r.success and r.status == 1 and r.schedule is None
    least = r.least_memory_bytes
    assert least == r.least_activation_bytes + r.split.fixed_bytes
    assert plan(RESNET18, least).success and not plan(RESNET18, least - 1).success
    assert isinstance(r.error, InfeasibleError) and r.error.fields["least_memory_bytes"] == least
    assert "least memory that works" in r.message


def test_plan_below_the_fixed_memory_is_an_answer_too():
    r = plan(RESNET18, "50MB", optimizer="adam")
    assert not r.success and r.least_memory_bytes > r.split.fixed_bytes > 50_000_000
    assert "fixed memory" in r.message


@pytest.mark.parametrize("call, error, message", [
    (lambda: plan(RESNET18, "12XB"), SizeError, "unknown unit 'XB'"),
    (lambda: plan(RESNET18, -5), SizeError, "from 0 to 2"),
    (lambda: plan(RESNET18, 1.5), SizeError, "SIZE string"),
    (lambda: plan(RESNET18), OptionError, "give --memory"),
    (lambda: plan(RESNET18, "256MB", strategy="nope"), OptionError, "unknown strategy 'nope'"),
    (lambda: plan(RESNET18, "256MB", segmnts=3), OptionError, "unknown option 'segmnts'"),
    (lambda: plan(RESNET18, "256MB", strategy="sequential", segments=50), OptionError, "from 1 to 10"),
    (lambda: plan(RESNET18, "256MB", optimizer="lamb"), OptionError, "unknown optimizer 'lamb'"),
    (lambda: plan(42, "256MB"), ModelError, "model must be a Model"),
    (lambda: plan({"format": "nope"}, "256MB"), ModelError, "format"),
])
def test_plan_checks_its_input_once_and_raises_from_the_one_tree(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert isinstance(info.value, EdgeplanError) and info.value.exit_code == 2


def test_the_cli_solve_is_plan_rendered(tmp_path):
    from click.testing import CliRunner

    from cli import main

    out = tmp_path / "s.json"
    got = CliRunner().invoke(main, ["solve", str(RESNET18), "--memory", "256MB", "-o", str(out)])
    assert got.exit_code == 0, got.output
    r = plan(RESNET18, "256MB")
    assert json.loads(out.read_text())["ops"] == json.loads("".join(r.schedule.iter_json(r.model)))["ops"]


# ------------------------------------------------------------ the error tree


def test_each_exception_class_says_its_exit_code():
    assert errors.EdgeplanError.exit_code == 2
    for cls in (errors.ModelError, errors.SizeError, errors.OptionError, errors.ScheduleFormatError,
                errors.NotApplicableError, errors.MissingExtraError, errors.DeviceError, errors.OutputError,
                errors.TooLargeError):
        assert cls.exit_code == 2, cls
    for cls in (errors.InfeasibleError, errors.ScheduleError, errors.ModelMismatchError):
        assert cls.exit_code == 1, cls
    assert errors.InternalError.exit_code == errors.SolverBug.exit_code == 3


def test_every_error_the_library_raises_is_in_the_tree():
    from planner.sizes import parse_size

    with pytest.raises(EdgeplanError):
        parse_size("lots")
    with pytest.raises(OptionError, match="unknown optimizer"):
        split_memory(load_model(RESNET18), 10**9, "lamb")
    source = (ROOT / "planner" / "solvers" / "milp_paging.py").read_text()
    assert "raise RuntimeError" not in source and "raise SolverBug" in source


def test_a_class_exit_code_is_what_the_cli_exits_with(monkeypatch):
    from click.testing import CliRunner

    from cli import main

    class Odd(errors.ModelError):
        exit_code = 1

    def refuse(*args, **kwargs):
        raise Odd("refused here")

    monkeypatch.setattr("cli.plan", refuse)
    got = CliRunner().invoke(main, ["solve", str(RESNET18), "--memory", "256MB"])
    assert got.exit_code == 1 and "refused here" in got.output


# ------------------------------------------------------------ the front door


def test_the_public_names_import_from_planner():
    for name in planner.__all__:
        if name not in planner._TORCH_NAMES:
            assert getattr(planner, name) is not None, name
    assert planner.load_model is load_model


def test_importing_planner_and_planning_never_imports_torch():
    code = (
        "import sys, planner\n"
        f"r = planner.plan({str(RESNET18)!r}, '256MB')\n"
        "assert r.success\n"
        "assert 'fit' in dir(planner)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_the_torch_names_load_on_first_use_or_name_the_extra():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import planner\n"
        "try:\n"
        "    from planner import fit\n"
        "except planner.MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "planner.fit needs torch" in proc.stdout and "edgeplan[torch]" in proc.stdout
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        planner.nope  # noqa: B018
