"""The executor runs pageout/pagein (SPEC section 5, issue 14 point 4): files on the CPU.

Gradients equal plain autograd's, the measured peak is within 2% of the
simulator's, the transfer time is measured, and the temporary files are gone
after the step, also when it fails or is interrupted.
"""

import dataclasses
import json
import os
import tempfile

import pytest
import torch
from click.testing import CliRunner

import planner.torch.verify as runtime
from cli import main
from planner import solvers
from planner.device import Storage, time_scale
from planner.errors import InfeasibleError, ScheduleError
from planner.torch.profile import prepare, profile_model
from planner.model import model_from_dict
from planner.torch.executor import ScheduledModule, StepRunner, _Plan
from planner.schedule import OpKind, backward, forward, free, pagein, pageout
from planner.simulate import simulate
from tests.conftest import CHAIN_SHAPE, DAG_SHAPE
from tests.models_train import bn_dropout_chain, fork_net, resnet_dag

MEMORY_TOLERANCE = 0.02  # issue 14: measured peak within 2% of predicted
FAST = Storage(20e9, 20e9)  # host-memory-like: paging is cheaper than recomputing a ms-timed layer


@pytest.fixture
def tmpdir_only(tmp_path, monkeypatch):
    """Temporary directories go under a folder of their own, which starts empty."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def _chain_ops(model):
    """A hand-built paging schedule for a chain.

    Forward without save, paging each output out once its consumer ran; then, per
    layer from the end, page its input in, forward it with save, backward.  A
    paged-in output is read by a later forward with save, whose saved graph its
    backward then uses, as a kept output would be.
    """
    n = len(model.layers)
    ops = []
    for i in range(n - 1):
        ops.append(forward(i, False))
        if i > 0:
            ops += [pageout(i - 1), free(i - 1)]
    ops.append(forward(n - 1, True))
    ops += [backward(n - 1), free(n - 1), pageout(n - 2), free(n - 2)]
    for i in range(n - 2, -1, -1):
        if i > 0:
            ops.append(pagein(i - 1))
        ops.append(forward(i, True))
        # An output its backward does not read goes before the backward, as solvers do it.
        early = not model.layers[i].needs_output
        ops += [free(i), backward(i)] if early else [backward(i), free(i)]
        ops += [free(i - 1)] if i > 0 else []
    return ops


def _verify(factory, shape, model, ops, *, stages="auto", storage=FAST, peak=True):
    """Verify ``ops``: the measured peak within 2% of the prediction (with ``peak``), and the
    memory at every pagein not above the simulator's by more than 2% (a paged-out output
    that stayed in memory after its free would show there).  Only above: DAG gradients
    that autograd shares (an add hands one gradient to both inputs) read below it."""
    sim = simulate(model, ops, storage=storage, timeline=True)
    assert sim.valid, sim.error
    assert sim.pageouts > 0 and sim.pageins > 0
    result = runtime.verify(
        factory(), shape, ops, stages=stages, model=model, predicted=sim.peak_bytes,
        predicted_transfer=sim.transfer / time_scale(model), timeline=True,
    )
    assert result.grads_match and result.buffers_match, result
    if peak:
        assert abs(result.relative_error) <= MEMORY_TOLERANCE, result
    for k, op in enumerate(ops):
        if op.kind is OpKind.PAGEIN:
            assert result.op_peaks[k] - sim.timeline[k] <= MEMORY_TOLERANCE * sim.peak_bytes, (k, op)
    assert (result.pageouts, result.pageins) == (sim.pageouts, sim.pageins)
    assert result.transfer_seconds > 0
    assert result.predicted_transfer_seconds == pytest.approx(sim.transfer / 1e3)
    return sim, result


def test_hand_built_chain_schedule(chain, tmpdir_only):
    ops = _chain_ops(chain)
    sim, result = _verify(bn_dropout_chain, CHAIN_SHAPE, chain, ops)
    # Paging really drops the outputs: well under what keeping them costs.
    assert result.measured_peak_bytes < 0.9 * result.reference_peak_bytes
    assert list(tmpdir_only.iterdir()) == []


def test_dp_paging_on_a_chain(chain, tmpdir_only):
    full = solvers.solve(chain, None, "store-all").result.peak_bytes
    solution = solvers.solve(chain, full * 6 // 10, "dp-paging", storage=FAST)
    assert solution.result.pages
    _verify(bn_dropout_chain, CHAIN_SHAPE, chain, solution.ops)
    assert list(tmpdir_only.iterdir()) == []


def test_page_all_on_a_dag(tmpdir_only):
    # fork_net has outputs no saved data pins between two reads: page-all pages them.
    model = model_from_dict(profile_model(fork_net(), DAG_SHAPE, repeats=1, stages="ops", name="fork"))
    assert not model.is_chain
    solution = solvers.solve(model, None, "page-all", storage=FAST)
    assert solution.result.pages
    _, result = _verify(fork_net, DAG_SHAPE, model, solution.ops, stages="ops", peak=False)
    # Its peak is at the backward of an add, which hands one gradient to both inputs:
    # plain store-all measures the same amount below the prediction (no paging op there).
    plain = solvers.solve(model, None, "store-all")
    ref = runtime.verify(fork_net(), DAG_SHAPE, plain.ops, stages="ops", model=model,
                         predicted=plain.result.peak_bytes)
    assert abs(result.relative_error - ref.relative_error) <= 0.005, (result, ref)
    assert list(tmpdir_only.iterdir()) == []


def test_milp_paging_on_a_dag(dag, tmpdir_only):
    full = solvers.solve(dag, None, "store-all").result.peak_bytes
    solution = solvers.solve(dag, full // 2, "milp-paging", storage=FAST, time_limit=10)
    assert solution.result.pages
    _verify(resnet_dag, DAG_SHAPE, dag, solution.ops, stages="ops")
    assert list(tmpdir_only.iterdir()) == []


def _runner(model, ops, factory, shape, *, on_op=None):
    prep = prepare(factory(), shape, dtype="float32", stages="auto", seed=0, device="cpu")
    dev, stage_list = prep.device, prep.stages
    anchor = torch.zeros((), requires_grad=True)
    return StepRunner(stage_list, _Plan(stage_list, ops), prep.inputs, None, anchor=anchor, device=dev,
                      on_op=on_op), stage_list


def _paged_files(tmp):
    return [p for d in tmp.iterdir() for p in d.iterdir()]


def test_files_exist_during_the_step_and_go_after(chain, tmpdir_only):
    ops = _chain_ops(chain)
    seen = []

    def on_op(n):
        if ops[n].kind is OpKind.PAGEOUT:
            seen.append(len(_paged_files(tmpdir_only)))

    runner, _ = _runner(chain, ops, bn_dropout_chain, CHAIN_SHAPE, on_op=on_op)
    out = runner.attach(runner.forward_part())
    assert _paged_files(tmpdir_only)  # the forward part's pageouts are on disk
    out.backward(torch.ones_like(out))
    assert max(seen) >= 2
    assert list(tmpdir_only.iterdir()) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_files_go_on_an_interrupt_in_the_forward_part(chain, tmpdir_only, error):
    ops = _chain_ops(chain)

    def on_op(n):
        if n == 5:
            assert _paged_files(tmpdir_only)
            raise error("stop")

    runner, _ = _runner(chain, ops, bn_dropout_chain, CHAIN_SHAPE, on_op=on_op)
    with pytest.raises(error):
        runner.forward_part()
    assert list(tmpdir_only.iterdir()) == []


def test_files_go_on_an_error_in_the_backward_part(chain, tmpdir_only):
    n = len(chain.layers)
    ops = _chain_ops(chain)
    # Break the schedule after the backward part's first pagein: the layer it pages in
    # has lost its backward's forward.
    k = next(j for j, op in enumerate(ops) if op.kind is OpKind.PAGEIN)
    broken = ops[: k + 1] + [backward(n - 2)]
    runner, _ = _runner(chain, broken, bn_dropout_chain, CHAIN_SHAPE)
    out = runner.attach(runner.forward_part())
    with pytest.raises(ScheduleError, match="saved data is not in memory"):
        out.backward(torch.ones_like(out))
    assert list(tmpdir_only.iterdir()) == []


def test_pagein_without_a_pageout_is_refused(chain, tmpdir_only):
    ops = [forward(0, False), pagein(0)]
    runner, _ = _runner(chain, ops, bn_dropout_chain, CHAIN_SHAPE)
    with pytest.raises(ScheduleError, match="not paged out"):
        runner.forward_part()
    assert list(tmpdir_only.iterdir()) == []


def test_cli_verify_and_scheduled_module_run_a_paging_schedule(chain, tmp_path, tmpdir_only):
    model_path = tmp_path / "chain.json"
    model_path.write_text(json.dumps(chain.document))
    device = tmp_path / "dev.json"
    device.write_text(json.dumps({
        "format": "edgeplan-device/1", "name": "fast", "memory_bytes": 10**9,
        "storage": FAST.to_dict(),
    }))
    full = solvers.solve(chain, None, "store-all").result.peak_bytes
    memory = full * 6 // 10 + 2 * sum(layer.params_bytes for layer in chain.layers)  # sgd: weights, grads
    sched = tmp_path / "s.json"
    runner = CliRunner()
    result = runner.invoke(main, ["solve", str(model_path), "--device", str(device), "--memory", str(memory),
                                  "--strategy", "dp-paging", "-o", str(sched)])
    assert result.exit_code == 0, result.output
    assert json.loads(sched.read_text())["format"] == "edgeplan-schedule/3"  # the device file overlaps
    target = str(os.path.join(os.path.dirname(__file__), "models_train.py")) + ":bn_dropout_chain"
    args = ["verify", target, "--input", ",".join(map(str, CHAIN_SHAPE)), "--schedule", str(sched),
            "--model", str(model_path)]
    result = runner.invoke(main, args + ["--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["grads_match"] is True
    assert abs(doc["relative_error"]) <= MEMORY_TOLERANCE
    assert doc["pageouts"] > 0 and doc["pageins"] > 0 and doc["transfer_seconds"] > 0
    assert doc["predicted_transfer_seconds"] > 0
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "ms measured, predicted" in result.output
    # The training loop's wrapper runs it too, with plain autograd's gradients.
    torch.manual_seed(1)
    net = bn_dropout_chain()
    ref = bn_dropout_chain()
    ref.load_state_dict(net.state_dict())
    x = torch.randn(CHAIN_SHAPE)
    wrapped = ScheduledModule(net, chain, str(sched))
    torch.manual_seed(2)
    wrapped(x).square().sum().backward()
    torch.manual_seed(2)
    ref(x).square().sum().backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    assert list(tmpdir_only.iterdir()) == []


def test_gpu_check_script_runs_on_the_cpu(capsys):
    """scripts/gpu_check.py (the prepared CUDA check) runs its cases on the CPU too."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main("cpu") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.endswith(" ok") for line in lines)
    assert "pageins 0" not in lines[1]  # the dp-paging case really pages


def test_dp_paging_with_transfers_beside_compute(chain, tmpdir_only):
    """An edgeplan-schedule/3 (pageins moved earlier, frees after pageouts later) runs with the
    pager's background thread: gradients exact, peak within 2%, the files gone after the step."""
    import dataclasses

    storage = dataclasses.replace(FAST, overlap=True)
    full = solvers.solve(chain, None, "store-all").result.peak_bytes
    solution = solvers.solve(chain, full * 6 // 10, "dp-paging", storage=storage)
    assert solution.result.pages and solution.schedule.format == "edgeplan-schedule/3"
    _verify(bn_dropout_chain, CHAIN_SHAPE, chain, solution.ops, storage=storage)
    assert list(tmpdir_only.iterdir()) == []


def test_the_pager_copies_on_its_thread_and_hands_errors_back(tmpdir_only):
    from planner.torch.pager import Pager

    pager = Pager(torch.device("cpu"))
    y = torch.arange(1000, dtype=torch.float32)
    pager.pageout(3, y)
    pager.settle(3)
    back = pager.pagein(3)
    pager.settle(3)
    assert torch.equal(back, y) and (pager.pageouts, pager.pageins) == (1, 1) and pager.seconds > 0
    os.remove(pager.copies[3][0])
    pager.pagein(3)
    with pytest.raises(FileNotFoundError):
        pager.settle(3)
    pager.close()
    assert pager.path is None and list(tmpdir_only.iterdir()) == []


# --- backward records (docs/format.md, "Paging backward records") -----------------------------------


def _record_ops(model, budget, storage):
    """Store-all's order with the records held at the peak paged out until it fits ``budget``."""
    from planner.solvers.page_records import page_records

    ops, result = page_records(model, solvers.solve(model, None, "store-all").ops, storage, budget)
    assert result.valid and result.peak_bytes <= budget, result
    return ops


@pytest.mark.parametrize("overlap", [False, True])
def test_a_schedule_paging_backward_records_trains_exactly(chain, tmpdir_only, overlap):
    import dataclasses

    storage = dataclasses.replace(FAST, overlap=overlap)
    full = simulate(chain, solvers.solve(chain, None, "store-all").ops).peak_bytes
    ops = _record_ops(chain, int(full * 0.9), storage)
    kinds = {op.kind for op in ops}
    assert {OpKind.PAGEOUT_SAVED, OpKind.DROP_SAVED, OpKind.PAGEIN_SAVED} <= kinds
    assert sum(op.kind is OpKind.FORWARD for op in ops) == len(chain.layers)  # no recomputation
    _, result = _verify(bn_dropout_chain, CHAIN_SHAPE, chain, ops, storage=storage)
    assert result.measured_peak_bytes < 0.95 * result.reference_peak_bytes  # the records really left
    assert list(tmpdir_only.iterdir()) == []


def test_page_records_plans_run_exactly(chain, tmpdir_only):
    import dataclasses

    storage = dataclasses.replace(FAST, overlap=True)
    full = simulate(chain, solvers.solve(chain, None, "store-all").ops).peak_bytes
    plans = []
    for share in (5, 6, 7, 8, 9):
        try:
            plans.append(solvers.solve(chain, full * share // 10, "page-records", storage=storage))
        except InfeasibleError:
            continue
    paging = [s for s in plans if s.params["records"]]
    assert paging, [s.params for s in plans]  # some budget makes page-records page a record
    _verify(bn_dropout_chain, CHAIN_SHAPE, chain, paging[0].ops, storage=storage)


def test_backward_of_a_dropped_record_is_refused(chain, tmpdir_only):
    from planner.schedule import drop_saved, pageout_saved

    n = len(chain.layers)
    ops = [forward(i, True) for i in range(n)] + [pageout_saved(0), drop_saved(0)]
    ops += [backward(i) for i in range(n - 1, -1, -1)]
    with pytest.raises(ScheduleError, match="paged out"):
        runtime.verify(bn_dropout_chain(), CHAIN_SHAPE, ops, model=chain)
    assert list(tmpdir_only.iterdir()) == []


def _with_record_paged(ops, i):
    """``ops`` with layer ``i``'s record paged out after its forward and back in before its backward."""
    from planner.schedule import drop_saved, pagein_saved, pageout_saved

    out = []
    for op in ops:
        if op.kind is OpKind.BACKWARD and op.layer == i:
            out.append(pagein_saved(i))
        out.append(op)
        if op.kind is OpKind.FORWARD and op.layer == i:
            out += [pageout_saved(i), drop_saved(i)]
    return out


def test_a_paged_record_reads_an_input_its_segment_frees(chain, tmpdir_only):
    # Store-all's "backward L9, free L8, backward L8" runs as one backward call that frees
    # L8's output first; L9's paged record (BatchNorm: it reads its input) read it at
    # unpack time and found it gone (KeyError).
    i = next(k for k, layer in enumerate(chain.layers) if layer.name == "L9_BatchNorm2d")
    assert chain.layers[i].needs_inputs
    ops = _with_record_paged(solvers.solve(chain, None, "store-all").ops, i)
    result = runtime.verify(bn_dropout_chain(), CHAIN_SHAPE, ops, model=chain)
    assert result.grads_match and result.buffers_match, result
    assert list(tmpdir_only.iterdir()) == []


def test_every_single_paged_record_measures_its_prediction(chain, tmpdir_only):
    """Store-all's ops with one record paged, for each layer that has one: peak within 2%.

    Found by the flaky test_page_records_plans_run_exactly: paging the record of the sink's
    producer (Dropout+Flatten) measured 4.0% over the prediction, only in a step run with
    autograd segments (the per-op timeline step, without them, was exact).
    """
    storage = dataclasses.replace(FAST, overlap=True)
    base = solvers.solve(chain, None, "store-all").ops
    recorded = [i for i, layer in enumerate(chain.layers) if layer.saved_bytes > 0]
    assert len(recorded) >= 4
    for i in recorded:
        ops = _with_record_paged(base, i)
        sim = simulate(chain, ops, storage=storage)
        result = runtime.verify(bn_dropout_chain(), CHAIN_SHAPE, ops, model=chain, predicted=sim.peak_bytes)
        assert result.grads_match and result.buffers_match, (chain.layers[i].name, result)
        assert abs(result.relative_error) <= MEMORY_TOLERANCE, (chain.layers[i].name, result.relative_error)
