"""Synthetic models for tests and benchmarks: uniform chains, random chains and DAGs.

All take a seed or a ``numpy.random.Generator`` and are deterministic for it.
"""

import numpy as np

from planner.model import MODEL_FORMAT, model_from_dict

__all__ = ["uniform_chain", "random_chain", "random_dag", "random_layer", "random_document"]


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def uniform_chain(n, *, output_bytes=100, forward=1.0, backward=2.0, input_bytes=100, name=None):
    """A chain of ``n`` identical layers (revolve's setting).

    Each layer's backward needs only its input (``saved_bytes = 0``,
    ``needs_output = False``), so holding one output is holding one snapshot.
    """
    layers = [
        {
            "name": f"L{i}",
            "forward": forward,
            "backward": backward,
            "output_bytes": output_bytes,
        }
        for i in range(n)
    ]
    doc = {
        "format": MODEL_FORMAT,
        "name": name or f"uniform-{n}",
        "input_bytes": input_bytes,
        "layers": layers,
    }
    return model_from_dict(doc)


def random_layer(rng, name, *, workspaces=True):
    """One layer of a model document, its costs, sizes and flags drawn from ``rng``.

    Parameters
    ----------
    rng : numpy.random.Generator
    name : str
    workspaces : bool, keyword-only
        Draw ``workspace_forward`` and ``workspace_backward`` too (else they
        are left out, that is 0).

    Returns
    -------
    dict
        The layer's fields, without ``inputs``.
    """
    layer = {
        "name": name,
        "forward": float(rng.integers(1, 20)),
        "backward": float(rng.integers(1, 40)),
        "output_bytes": int(rng.integers(1, 100)) * 1000,
        "saved_bytes": int(rng.integers(0, 3)) * int(rng.integers(0, 100)) * 1000,
        "needs_inputs": bool(rng.random() < 0.8),
        "needs_output": bool(rng.random() < 0.4),
    }
    if workspaces:
        layer["workspace_forward"] = int(rng.integers(0, 2)) * int(rng.integers(0, 50)) * 1000
        layer["workspace_backward"] = int(rng.integers(0, 2)) * int(rng.integers(0, 50)) * 1000
    layer["params_bytes"] = int(rng.integers(0, 50)) * 1000
    return layer


def random_document(rng, name, layers):
    """The model document of ``layers``, its input size drawn from ``rng`` (after the layers')."""
    return {
        "format": MODEL_FORMAT,
        "name": name,
        "input_bytes": int(rng.integers(1, 100)) * 1000,
        "layers": layers,
    }


def random_chain(n, seed=0, *, workspaces=True, name=None):
    """A heterogeneous chain of ``n`` layers with random costs and flags."""
    rng = _rng(seed)
    layers = [random_layer(rng, f"L{i}", workspaces=workspaces) for i in range(n)]
    return model_from_dict(random_document(rng, name or f"random-chain-{n}", layers))


def random_dag(n, seed=0, *, max_inputs=3, skip=0.3, workspaces=True, name=None):
    """A random DAG of ``n`` layers in topological order with one sink.

    Each layer reads its predecessor (so the sink is unique and every layer is
    used) and, with probability ``skip`` per extra edge, up to ``max_inputs - 1``
    earlier layers or the model input.
    """
    rng = _rng(seed)
    layers = []
    for i in range(n):
        layer = random_layer(rng, f"N{i}", workspaces=workspaces)
        inputs = ["input"] if i == 0 else [f"N{i - 1}"]
        for _ in range(max_inputs - 1):
            if i >= 1 and rng.random() < skip:
                j = int(rng.integers(-1, i - 1)) if i > 1 else -1
                producer = "input" if j < 0 else f"N{j}"
                if producer not in inputs:
                    inputs.append(producer)
        layer["inputs"] = inputs
        layers.append(layer)
    return model_from_dict(random_document(rng, name or f"random-dag-{n}", layers))


def transformer_dag(n_blocks, seed=0, *, hidden=4096, mask=True, name=None):
    """An op-level DAG shaped like a transformer: blocks of attention and MLP ops around a residual stream.

    Each block reads the residual stream (``hidden`` bytes) through a layer
    norm, q/k/v projections, an attention op that also reads a small shared
    mask (``mask=True``: one 64-byte layer computed from the model input and
    read by every block's attention, as BERT's extended attention mask is),
    an output projection and a residual add, then an MLP (4x wider) and a
    second residual add.  Costs are random around those shapes (seeded), so
    blocks differ a little, as profiled ones do.
    """
    rng = _rng(seed)
    layers = [{"name": "embed", "inputs": ["input"], "forward": 1.0, "backward": 1.0, "output_bytes": hidden}]
    if mask:
        layers.append({"name": "mask", "inputs": ["input"], "forward": 0.01, "backward": 0.0, "output_bytes": 64,
                       "needs_inputs": False})

    def op(name, inputs, size, flops, *, saved=0):
        jitter = float(rng.uniform(0.8, 1.2))
        layers.append({
            "name": name, "inputs": inputs, "forward": round(flops * jitter, 4),
            "backward": round(2 * flops * jitter, 4), "output_bytes": int(size), "saved_bytes": int(saved),
        })

    stream = "embed"
    for b in range(n_blocks):
        p = f"h{b}."
        op(p + "ln1", [stream], hidden, 0.1)
        for x in "qkv":
            op(p + x, [p + "ln1"], hidden, 1.0)
        op(p + "attn", [p + "q", p + "k", p + "v"] + (["mask"] if mask else []), hidden, 1.5, saved=2 * hidden)
        op(p + "proj", [p + "attn"], hidden, 1.0)
        op(p + "add1", [p + "proj", stream], hidden, 0.05)
        op(p + "ln2", [p + "add1"], hidden, 0.1)
        op(p + "fc1", [p + "ln2"], 4 * hidden, 4.0)
        op(p + "act", [p + "fc1"], 4 * hidden, 0.2)
        op(p + "fc2", [p + "act"], hidden, 4.0)
        op(p + "add2", [p + "fc2", p + "add1"], hidden, 0.05)
        stream = p + "add2"
    op("head", [stream], 2 * hidden, 2.0)
    return model_from_dict({
        "format": "edgeplan-model/1", "name": name or f"transformer-{n_blocks}", "input_bytes": 256,
        "layers": layers,
    })
