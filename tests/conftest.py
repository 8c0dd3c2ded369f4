"""Shared test setup: paths, CLI runners, and the hypothesis profiles.

Paths: :data:`ROOT` (the checkout), :data:`EXAMPLES`, :data:`RESNET18` (the
quick start's model), :data:`DATA` (``tests/data``: copies of the measured
models and the revolve grid, see its README) and :data:`MOCCASIN` (the
GPL-3.0 Moccasin graphs, outside the repository in ``../shared``; their tests
are skipped, with that reason, where it is absent).

Runners: :func:`run` invokes the CLI in-process (click's ``CliRunner``),
:func:`run_edgeplan` in a fresh interpreter, as the ``edgeplan`` script does;
the ``runner`` fixture is a ``CliRunner``.

The hypothesis profiles:

``HYPOTHESIS_PROFILE`` selects one (default ``ci``):

* ``dev``: a fifth of the CI examples, for a quick local loop;
* ``ci``: what CI runs on every push (hundreds of random models, about a minute);
* ``nightly``: twenty times the CI examples, for a scheduled job
  (``HYPOTHESIS_PROFILE=nightly python -m pytest tests/test_properties.py``).

Tests scale their example counts with :func:`tests.strategies.examples`, so a
profile changes every property test at once.  No deadline: solve times vary on
shared CI machines.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

from cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RESNET18 = EXAMPLES / "resnet18.json"
DATA = ROOT / "tests" / "data"
MOCCASIN = ROOT.parent / "shared" / "benchmarks" / "moccasin" / "data"


def run(*args):
    """``edgeplan ARGS`` in-process; exceptions other than exits propagate."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_edgeplan(*args, env=None, prelude="", timeout=120):
    """``edgeplan ARGS`` in a fresh interpreter (as the ``edgeplan`` script runs).

    ``prelude`` is Python run before the CLI is imported (e.g. hiding a
    module: ``"sys.modules['torch'] = None; "``).
    """
    code = f"import sys; {prelude}from cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def runner():
    return CliRunner()


_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=20, **_COMMON)
settings.register_profile("ci", max_examples=100, **_COMMON)
settings.register_profile("nightly", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def schema_errors(document, filename):
    """Every violation of ``document`` against a published schema, found by jsonschema itself.

    jsonschema is the reference the package's fastjsonschema validator is held to.
    """
    import jsonschema

    from planner.schemas import load_schema

    return list(jsonschema.Draft202012Validator(load_schema(filename)).iter_errors(document))


def fast_accepts(document, filename):
    """True when the package's compiled (fastjsonschema) validator accepts ``document``."""
    import fastjsonschema

    from planner.schemas import validator

    try:
        validator(filename)(document)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


# ---- shared documents: a two-layer model, and a document with one item changed ----------

def chain_document(name, layers, *, input_bytes=10):
    """A chain's model document from ``(name, forward, backward, output_bytes)`` tuples."""
    return {
        "format": "edgeplan-model/1",
        "name": name,
        "input_bytes": input_bytes,
        "layers": [{"name": n, "forward": f, "backward": b, "output_bytes": o} for n, f, b, o in layers],
    }


TWO_LAYER_MODEL = chain_document("m", [("a", 1, 2, 100), ("b", 1, 2, 50)])
"""A chain of two layers ``a`` and ``b`` (copy it before changing it)."""


def fork_document(*, input_bytes=1, trunk=5000, left=10, right=20, sink=40):
    """A fork's model document: ``a`` (the trunk) read by ``b`` and ``c``, both read by ``d``.

    ``a``'s gradient is started by the first of ``b`` and ``c`` whose backward
    runs; the other's backward makes a fresh gradient of ``a``'s size (SPEC
    section 3).  The sizes are ``output_bytes``; times are 1.
    """
    layers = [
        {"name": "a", "inputs": ["input"], "output_bytes": trunk},
        {"name": "b", "inputs": ["a"], "output_bytes": left},
        {"name": "c", "inputs": ["a"], "output_bytes": right},
        {"name": "d", "inputs": ["b", "c"], "output_bytes": sink},
    ]
    for layer in layers:
        layer.update(forward=1, backward=1)
    return {"format": "edgeplan-model/1", "name": "fork", "input_bytes": input_bytes, "layers": layers}


def mutated(document, path, value, *, delete):
    """A deep copy of ``document`` with the item at ``path`` set to ``value``.

    With ``delete``, a dict's item is removed instead (a list's is still set).
    """
    import copy

    doc = copy.deepcopy(document)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if delete and isinstance(target, dict):
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return doc


# The profiled training models of the executor's tests (test_executor.py,
# test_runtime_paging.py): tests.models_train's chain and DAG, as model files.
# Each test module profiles its own (module scope); torch is imported only here.

CHAIN_SHAPE = (4, 3, 8, 8)
DAG_SHAPE = (4, 3, 16, 16)


@pytest.fixture(scope="module")
def chain():
    """``bn_dropout_chain`` profiled for a ``CHAIN_SHAPE`` input (BatchNorm and dropout: a chain)."""
    from planner.torch.profile import profile_model
    from planner.model import model_from_dict
    from tests.models_train import bn_dropout_chain

    return model_from_dict(profile_model(bn_dropout_chain(), CHAIN_SHAPE, repeats=1, name="chain"))


@pytest.fixture(scope="module")
def dag():
    """``resnet_dag`` profiled by ops for a ``DAG_SHAPE`` input (residual joins: a DAG)."""
    from planner.torch.profile import profile_model
    from planner.model import model_from_dict
    from tests.models_train import resnet_dag

    return model_from_dict(profile_model(resnet_dag(), DAG_SHAPE, repeats=1, stages="ops", name="dag"))
