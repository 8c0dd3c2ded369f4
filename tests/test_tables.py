"""planner.tables: the one view of the model, checked against SPEC section 3 written out per layer,
on every model in tests/data and examples/ and on random ones."""

import numpy as np
import pytest
from hypothesis import given, settings

from planner.model import load_model
from planner.tables import Tables
from tests.conftest import DATA, EXAMPLES
from tests.strategies import examples, models

MODEL_FILES = sorted((DATA / "models").glob("*.json")) + sorted(EXAMPLES.glob("*.json"))


def _expected(model):
    """Each field of the tables, from the layers one by one (SPEC section 3)."""
    layers, n, sink = model.layers, len(model.layers), len(model.layers) - 1
    consumers = [[c for c in range(n) if i in layers[c].inputs] for i in range(n)]
    last = [max(c) if c else -1 for c in consumers]
    new, fresh = [], []
    for b, layer in enumerate(layers):
        # backwards run n-1 .. 0: the highest consumer's backward starts an input's gradient
        new.append((layer.output_bytes if b == sink else 0)
                   + sum(layers[j].output_bytes for j in layer.inputs if last[j] == b))
        fresh.append(sum(layers[j].output_bytes for j in layer.inputs if last[j] != b))
    reads_own = [layer.needs_output or i == sink for i, layer in enumerate(layers)]
    return {
        "n": n,
        "sink": sink,
        "input_bytes": model.input_bytes,
        "output_bytes": [x.output_bytes for x in layers],
        "saved_bytes": [x.saved_bytes for x in layers],
        "workspace_forward": [x.workspace_forward for x in layers],
        "workspace_backward": [x.workspace_backward for x in layers],
        "forward": [x.forward for x in layers],
        "backward": [x.backward for x in layers],
        "needs_inputs": [x.needs_inputs for x in layers],
        "needs_output": [x.needs_output for x in layers],
        "output_at_backward": reads_own,
        "previous_output": [0] + [x.output_bytes for x in layers[:-1]],
        "inputs": tuple(x.inputs for x in layers),
        "consumers": tuple(tuple(c) for c in consumers),
        "last_consumer": last,
        "backward_reads": tuple(
            (x.inputs if x.needs_inputs else ()) + ((i,) if reads_own[i] else ()) for i, x in enumerate(layers)
        ),
        "holds": tuple(
            ((i,) if x.needs_output else ()) + (x.inputs if x.needs_inputs else ()) for i, x in enumerate(layers)
        ),
        "holders": tuple(
            tuple(c for c in range(n) if (i in layers[c].inputs and layers[c].needs_inputs)
                  or (c == i and layers[c].needs_output))
            for i in range(n)
        ),
        "new_gradients": new,
        "fresh_gradients": fresh,
    }


def _check(model):
    tables = model.tables
    assert tables is model.tables  # built once
    for name, want in _expected(model).items():
        got = getattr(tables, name)
        if isinstance(got, np.ndarray):
            assert got.tolist() == list(want), name
        else:
            assert got == want, name
    return tables


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_tables_of_every_data_model(path):
    _check(load_model(path))


@settings(max_examples=examples(60))
@given(models(max_layers=10))
def test_tables_of_random_models(model):
    tables = _check(model)
    unit = 7
    scaled = tables.scaled(unit)
    assert scaled.input_bytes == model.input_bytes // unit
    for name in Tables.SIZES:
        assert getattr(scaled, name).tolist() == [v // unit for v in getattr(tables, name).tolist()], name
    assert scaled.backward_reads is tables.backward_reads
    assert tables.scaled(1) is tables
    with pytest.raises(ValueError, match="read-only"):
        scaled.output_bytes[0] = 1


def test_sizes_past_int64_are_python_ints():
    from planner.model import model_from_dict
    from tests.conftest import chain_document

    big = 2**60  # valid (SPEC's 2**62 total), but three times every output is past int64's safe range
    model = model_from_dict(chain_document("big", [("a", 1, 1, big), ("b", 1, 1, big)], input_bytes=0))
    tables = model.tables
    assert tables.output_bytes.dtype == object
    assert tables.output_bytes.tolist() == [big, big]
    assert (tables.output_bytes + tables.output_bytes).tolist() == [2 * big, 2 * big]  # no wrap-around

