import json

import pytest

from planner.errors import InfeasibleError, NotApplicableError
from planner.lowering import RECOMPUTE, STORE
from planner.model import load_model
from planner.solvers import solve
from planner.solvers.sequential import sequential_segments
from planner.synthetic import random_chain, random_dag
from tests.conftest import DATA
from tests.reference import replay_solution
from tests.strategies import with_heavy_sink



def test_segments_follow_checkpoint_sequential():
    # 10 layers, 3 segments: 3 + 3 checkpointed, the last 4 plain.
    assert sequential_segments(10, 3) == [(0, 3, RECOMPUTE), (3, 6, RECOMPUTE), (6, 10, STORE)]
    assert sequential_segments(5, 1) == [(0, 5, STORE)]
    assert sequential_segments(5, 5)[-1] == (4, 5, STORE)
    with pytest.raises(ValueError):
        sequential_segments(5, 6)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("segments", [1, 2, 3, 5, 12])
def test_replays_exactly(seed, segments):
    m = random_chain(12, seed)
    sol = solve(m, None, "sequential", segments=segments)
    ref = replay_solution(m, sol)
    assert ref["valid"]
    assert ref["peak_bytes"] == sol.result.peak_bytes
    assert ref["compute"] == pytest.approx(sol.result.compute)
    size = 12 // segments
    recomputed = (segments - 1) * size
    assert sol.result.forwards == 12 + recomputed


@pytest.mark.parametrize("seed", range(10))
def test_auto_segments_is_cheapest_that_fits(seed):
    m = random_chain(16, seed)
    results = {s: solve(m, None, "sequential", segments=s).result for s in range(1, 17)}
    least = min(r.peak_bytes for r in results.values())
    budget = (least + max(r.peak_bytes for r in results.values())) // 2
    sol = solve(m, budget, "sequential")
    fitting = [r.compute for r in results.values() if r.peak_bytes <= budget]
    assert sol.result.compute == min(fitting)
    assert sol.result.peak_bytes <= budget
    with pytest.raises(InfeasibleError) as info:
        solve(m, least - 1, "sequential")
    assert info.value.least_bytes == least


def test_refuses_dags():
    with pytest.raises(NotApplicableError, match="chains only"):
        solve(random_dag(6, 0), None, "sequential")


def test_vgg16_matches_gpu_measurements():
    m = load_model(DATA / "models" / "vgg16.json")
    measured = json.loads((DATA / "measured" / "vgg16.measured.json").read_text())
    for row in measured["measured"]:
        s = row["segments"]
        if s == 0:
            continue
        predicted = solve(m, None, "sequential", segments=s).result.peak_bytes - m.input_bytes
        assert abs(predicted / row["peak_bytes"] - 1) < 0.01, s


@pytest.mark.parametrize("seed", range(48))
def test_segment_inputs_are_held_as_pytorch_holds_them(seed):
    from planner.lowering import chain_segments_peak
    from planner.schedule import OpKind

    m = random_chain(14, seed)
    if seed >= 40:  # logits dominate; the loss holds them until the head's backward
        m = with_heavy_sink(m, factor=1 + seed % 3)
    for s in (2, 3, 4, 7):
        sol = solve(m, None, "sequential", segments=s)
        ops = list(sol.ops)
        for start, _, mode in sequential_segments(14, s):
            if mode != RECOMPUTE or start == 0:
                continue
            back = ops.index(next(o for o in ops if o.kind is OpKind.BACKWARD and o.layer == start))
            frees = [k for k, o in enumerate(ops) if o.kind is OpKind.FREE and o.layer == start - 1]
            # The segment's input is still there at its first layer's backward.
            assert any(k > back for k in frees)
        starts = [a for a, _, _ in sequential_segments(14, s)]
        assert chain_segments_peak(m, starts, hold_inputs=True) == sol.result.peak_bytes
        assert replay_solution(m, sol)["peak_bytes"] == sol.result.peak_bytes
