"""``hierarchical``'s blocks from the module structure the capture records (the layers' ``module`` field).

The models are tests/data/models/*-hf-ops.json: the tiny transformers models of
tests/models_hf.py profiled op by op by the export capture (see
tests/data/README.md).
"""

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import InfeasibleError
from planner.lowering import insert_frees
from planner.model import Model, load_model, model_from_dict
from planner.simulate import simulate
from planner.solvers import blocks, solve, solving_model
from planner.solvers.blocks import (
    _at_budget,
    _Plan,
    groupings,
    hierarchical,
    model_blocks,
    module_blocks,
    module_key,
)
from tests.strategies import block_dags, examples
from tests.test_hierarchical import check_against_its_class

DATA = Path(__file__).parent / "data" / "models"
# the module of each family's decoder/encoder blocks (or ResNet stages)
BLOCKS = {"gpt2": "transformer.h.", "bert": "bert.encoder.layer.", "llama": "model.layers.", "vit": "vit.layers.",
          "resnet": "resnet.encoder.stages."}


def _model(family):
    return load_model(DATA / f"{family}-hf-ops.json")


def _store_all(model):
    return solve(model, None, "store-all").result.peak_bytes


def _plans(model, budget, shared=None):
    """``{grouping: (plan, least)}`` of ``hierarchical`` on ``model`` (a solving model)."""
    shared = {} if shared is None else shared
    try:
        hierarchical(model, budget=budget, shared=shared)
    except InfeasibleError:
        pass
    return {name: (plan, least) for name, plan, least in shared["plans"]}


def test_module_key_is_the_path_up_to_the_levels_container_item():
    assert module_key("transformer.h.0.attn.c_attn", 1) == "transformer.h.0"
    assert module_key("transformer.h.0.attn.c_attn", 2) == "transformer.h.0"
    assert module_key("resnet.encoder.stages.1.layers.0.layer.1.convolution", 1) == "resnet.encoder.stages.1"
    assert module_key("resnet.encoder.stages.1.layers.0.layer.1.convolution", 2) == "resnet.encoder.stages.1.layers.0"
    assert module_key("lm_head", 1) is None
    assert module_key("", 1) is None


def test_a_layers_module_field_is_read_and_written_back():
    model = _model("gpt2")
    assert model.layers[4].module == "transformer.h.0.attn.c_attn"
    again = model_from_dict(model.to_dict())
    assert [x.module for x in again.layers] == [x.module for x in model.layers]
    assert again.fingerprint == model.fingerprint  # an extra field: not part of the fingerprint


@pytest.mark.parametrize("family", sorted(BLOCKS))
def test_module_blocks_hold_whole_decoder_blocks(family):
    model = solving_model(_model(family))
    found = groupings(model)
    assert "modules-1" in found
    blocks = found["modules-1"]
    assert blocks != found["cuts"] and len(blocks) < len(found["cuts"])
    where = {i: k for k, (lo, hi) in enumerate(blocks) for i in range(lo, hi)}
    keys = {}
    for i, layer in enumerate(model.layers):
        key = module_key(layer.module, 1)
        if key is not None and key.startswith(BLOCKS[family]):
            keys.setdefault(key, set()).add(where[i])
    assert sorted(keys) == [BLOCKS[family] + "0", BLOCKS[family] + "1"]
    # each of the two blocks is one block, and not the same one
    assert all(len(v) == 1 for v in keys.values())
    assert len(set.union(*keys.values())) == 2


def test_a_model_without_module_paths_has_the_cut_point_blocks_alone():
    model = _model("gpt2")
    plain = Model(name="plain", input_bytes=model.input_bytes,
                  layers=tuple(dataclasses.replace(x, module="") for x in model.layers))
    assert groupings(plain) == {"cuts": model_blocks(plain)}


@pytest.mark.parametrize("family", sorted(BLOCKS))
def test_the_plan_is_at_least_as_good_as_the_cut_point_one(family):
    model = _model(family)
    reduced = solving_model(model)
    top = _store_all(model)
    shared = {}
    plans = _plans(reduced, int(top * 0.7), shared)
    cuts_least = plans["cuts"][1][0]
    least = min(least[0] for _, least in plans.values())
    assert least <= cuts_least
    for fraction in (0.45, 0.6, 0.8):
        budget = int(top * fraction)
        cut = _at_budget(plans["cuts"][0], reduced, budget, plans["cuts"][1])
        try:
            ops, _ = hierarchical(reduced, budget=budget, shared=shared)
        except InfeasibleError:
            assert cut is None
            continue
        ours = simulate(reduced, insert_frees(reduced, ops))
        assert ours.valid and ours.peak_bytes <= budget
        if cut is not None:
            assert ours.compute <= cut[0] + 1e-9


@pytest.mark.parametrize(("family", "fraction"), [("llama", 0.55), ("vit", 0.7)])
def test_module_blocks_are_used_where_they_plan_better(monkeypatch, family, fraction):
    """A decoder block as one block, whose menu recomputes across its inner cut points, beats the cut blocks.

    Menus without milp here (what HiGHS proves within its time depends on the
    machine).
    """
    monkeypatch.setattr(blocks, "MILP_MENUS", 0)
    model = _model(family)
    reduced = solving_model(model)
    budget = int(_store_all(model) * fraction)
    ours = solve(model, budget, "hierarchical")
    assert ours.params["grouping"] == "modules-1"
    plan, least = _plans(reduced, budget)["cuts"]
    cut = _at_budget(plan, reduced, budget, least)
    assert ours.result.compute < cut[0] - 1e-9


def test_keep_set_options_lower_llamas_overhead(monkeypatch):
    """Options that keep the cheap-to-store layers and recompute the rest once (Llama's RMSNorm beside its MLP)."""
    monkeypatch.setattr(blocks, "MILP_MENUS", 0)
    model = _model("llama")
    budget = int(_store_all(model) * 0.5)
    with_sets = solve(model, budget, "hierarchical").result
    monkeypatch.setattr(blocks, "_KEEP_SETS", 0)
    without = solve(model, budget, "hierarchical").result
    assert with_sets.peak_bytes <= budget and without.peak_bytes <= budget
    assert with_sets.compute < without.compute * 0.98


def _with_modules(model, per_module):
    """``model`` (from block_dags) whose block ``b``'s layers sit in module ``net.h.{b // per_module}``."""
    layers = tuple(
        dataclasses.replace(x, module=f"net.h.{int(x.name[1:x.name.index('l')]) // per_module}.op")
        if x.name.startswith("b") else x
        for x in model.layers
    )
    return Model(name=model.name, input_bytes=model.input_bytes, layers=layers)


@settings(max_examples=examples(20), deadline=None)
@given(model=block_dags(max_blocks=3, max_block_layers=2, mask=False), levels=st.integers(8, 40))
def test_the_program_on_module_blocks_equals_the_exhaustive_search_of_its_class(model, levels):
    model = _with_modules(model, 2)
    check_against_its_class(model, _Plan(model, {}, module_blocks(model, 1)), levels)


def test_a_thinned_menu_keeps_its_ends():
    """Many blocks: each menu keeps at most ``cap`` options, the least compute, peak and kept among them."""
    model = solving_model(_model("llama"))
    menus = _Plan(model, {}).menus
    menu = max(menus, key=len)
    assert len(menu) > 3
    thin = blocks._thinned(menu, 3)
    assert len(thin) == 3
    for measure in (lambda o: o.compute, lambda o: max(o.fwd_peak, o.bwd_peak), lambda o: o.kept):
        assert min(map(measure, thin)) == min(map(measure, menu))
    assert blocks._thinned(menu, len(menu)) == menu
