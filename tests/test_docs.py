"""The documentation matches the program: every command documented, with help and an example.

(After sqlite-utils' tests/test_docs.py.)
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = sorted(main.commands)

INSTALL_AND_RUN = "pip install -e . && edgeplan solve examples/resnet18.json --memory 256MB -o schedule.json"
RUN_TESTS = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q'


def test_readme_has_the_two_commands():
    assert INSTALL_AND_RUN in README
    assert RUN_TESTS in README
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert INSTALL_AND_RUN in quick and RUN_TESTS in quick


def _readme_commands():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / "scripts" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_takes_the_two_commands_from_the_readme():
    """.ci/run runs what scripts/readme_commands.py reads, and it reads the two commands."""
    commands = _readme_commands()
    assert commands.quick_start_commands(README) == (INSTALL_AND_RUN, RUN_TESTS)
    assert "scripts/readme_commands.py README.md" in (ROOT / ".ci" / "run").read_text()
    broken = [
        README.replace("## Quick start", "## Start"),
        README.replace(RUN_TESTS, RUN_TESTS + "\nsecond line"),
        "## Quick start\n\n```\nonly one block\n```\n",
    ]
    for text in broken:
        with pytest.raises(ValueError, match="Quick start"):
            commands.quick_start_commands(text)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_in_the_readme(command):
    assert f"edgeplan {command}" in README, f"README.md does not mention `edgeplan {command}`"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "Example" in text, f"`edgeplan {command} --help` shows no example"
    assert f"edgeplan {command} " in text
    help_text = main.commands[command].help or ""
    assert len(help_text.split()) >= 10, f"`{command}` needs a real help text"
    for name, option in ((p.name, p) for p in main.commands[command].params):
        if getattr(option, "param_type_name", "") == "option":
            assert option.help, f"`edgeplan {command}`: option {name} has no help text"


def test_readme_links_resolve():
    for target in re.findall(r"\]\(((?:docs|schedules|examples|scripts)/[^)#\s]+)", README):
        assert (ROOT / target).exists(), target
    for doc in ("docs/format.md", "docs/costs.md", "docs/pytorch.md", "docs/ci.md", "docs/strategies.md"):
        assert doc in README, doc
        assert (ROOT / doc).exists(), doc


def test_quick_start_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "schedule.json"
    args = shlex.split(INSTALL_AND_RUN.split("&& ", 1)[1])[1:]
    args[-1] = str(out)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert out.exists()


def _readme_runs():
    """``$ edgeplan solve|compare|simulate ...`` lines of README.md's pasted output."""
    runs = []
    for line in README.splitlines():
        if line.startswith("$ edgeplan "):
            args = shlex.split(line[2:])[1:]
            if args[0] in ("solve", "compare", "simulate", "sweep") and "--plot" not in args:
                runs.append(args)
    return runs


def test_readme_output_comes_from_real_commands(tmp_path, monkeypatch):
    """Every pasted command still runs, in the order shown, with the exit code the README implies."""
    runs = _readme_runs()
    assert len(runs) >= 4
    assert {args[0] for args in runs} >= {"solve", "compare", "simulate", "sweep"}
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    ran = 0
    for args in runs:
        if not Path(args[1]).exists():
            continue  # made by a command this test does not run (profile, import)
        ran += 1
        r = CliRunner().invoke(main, args)
        assert r.exit_code in (0, 1), (args, r.output)
        assert "Traceback" not in r.output
    assert ran >= 4


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_mention_only_existing_commands(doc):
    text = doc.read_text(encoding="utf-8")
    # commands as written in code: `edgeplan solve ...` inline, and command lines of code blocks
    code = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S))
    found = re.findall(r"`edgeplan ([a-z][a-z-]*)", text)
    found += re.findall(r"^(?:\$ |\s*(?:- )?(?:run: )?)edgeplan ([a-z][a-z-]*)", code, flags=re.M)
    for command in found:
        assert command in main.commands, (doc.name, command)


def test_architecture_is_one_screen_and_names_real_modules():
    import importlib.util

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 60
    for name in set(re.findall(r"\bplanner\.[a-z_]+(?:\.[a-z_]+)?", text)):
        parent, _, attr = name.rpartition(".")
        assert importlib.util.find_spec(name) is not None or hasattr(importlib.import_module(parent), attr), name
    for path in re.findall(r"`((?:planner|schedules|tests|docs)/[^`<>*]+)`", text):
        assert (ROOT / path).exists(), path
