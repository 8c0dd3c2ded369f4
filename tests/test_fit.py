"""planner.fit: profile -> plan -> wrap, trained in the user's own loop (issue 18)."""

import copy
import gc

import pytest

torch = pytest.importorskip("torch")

from planner import InfeasibleError, ModelError, ScheduledModule, fit, plan  # noqa: E402
from planner.torch.measure import allocation_trace  # noqa: E402
from tests.models_train import bn_dropout_chain, resnet_dag  # noqa: E402

MEMORY_TOLERANCE = 0.02
STEPS = 3


def _batches(shape, n, classes=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen), torch.randint(0, classes, (shape[0],), generator=gen))
            for _ in range(n)]


def _token_batches(shape, n, vocab=500, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, shape, generator=gen), torch.randint(0, vocab, shape, generator=gen))
            for _ in range(n)]


def _small_gpt():
    from tests.models_torch import SmallGPT

    return SmallGPT(vocab=500, d=32, heads=2, layers=2, block_size=16)


def _train(net, call, batches):
    """The user's loop: SGD with momentum, ``call(x, y)`` the loss."""
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(123)
    for x, y in batches:
        call(x, y).backward()
        opt.step()
        opt.zero_grad()


def _cross_entropy(out, y):
    return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _tight(net, example, fraction, stages="auto"):
    """A memory at which fit must recompute: fixed memory + ``fraction`` of store-all's activations."""
    roomy = fit(net, example, memory="1GB", repeats=1, strategy="store-all", stages=stages)
    split = roomy.plan.split
    return split.fixed_bytes + int(roomy.plan.peak_bytes * fraction)


def _measured_peak(wrapped, step, held):
    """The allocator's peak over ``step().backward()`` above what was allocated before, plus ``held``.

    ``held``: the tensors the caller holds through the step (inputs and target), as
    ``peak_bytes`` counts them; parameter gradients are allocated before (fixed memory).
    """
    for p in wrapped.parameters():
        p.grad = torch.zeros_like(p)
    gc.collect()
    gc.disable()
    try:
        _, peak, _ = allocation_trace(lambda: step().backward(), torch.device("cpu"))
    finally:
        gc.enable()
    for p in wrapped.parameters():
        p.grad = None
    return peak + sum(t.numel() * t.element_size() for t in held)


@pytest.mark.parametrize("make, batches, stages, fraction", [
    (resnet_dag, _batches((4, 3, 16, 16), STEPS), "auto", 0.7),     # a DAG, traced into ops; dropout, BatchNorm
    (bn_dropout_chain, _batches((4, 3, 8, 8), STEPS), "auto", 0.6),  # an nn.Sequential: a chain of modules
    (_small_gpt, _token_batches((2, 16), STEPS), "modules", 0.6),   # token ids, a tied LM head, (B, T, V) logits
])
def test_three_steps_through_fit_equal_plain_training_within_the_predicted_memory(make, batches, stages, fraction):
    torch.manual_seed(0)
    net = make()
    plain = copy.deepcopy(net)
    example = batches[0]
    memory = _tight(net, example, fraction, stages)
    wrapped = fit(net, example, memory=memory, loss="cross_entropy", stages=stages, repeats=1)
    assert isinstance(wrapped, ScheduledModule)
    result = wrapped.plan
    assert result.success and result.simulation.forwards > len(result.model) - 1  # it recomputes
    assert result.peak_bytes <= result.split.activation_bytes
    assert result.schedule.fingerprint == result.model.fingerprint and result.model.document["loss"] == "cross_entropy"

    _train(net, lambda x, y: wrapped(x, target=y), batches)
    _train(plain, lambda x, y: _cross_entropy(plain(x), y), batches)
    for (name, p), q in zip(net.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), name

    x, y = batches[0]
    measured = _measured_peak(wrapped, lambda: wrapped(x, target=y), [x, y])
    assert abs(measured / result.peak_bytes - 1) <= MEMORY_TOLERANCE, (measured, result.peak_bytes)


def test_fit_leaves_the_module_as_it_found_it():
    net = resnet_dag().eval()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(4, 3, 16, 16)
    wrapped = fit(net, x, memory="1GB", loss=None, repeats=1)
    assert not any(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert wrapped.plan.model.document.get("loss") is None
    wrapped.train()
    wrapped(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_fit_refuses_with_the_least_memory_that_works():
    net = bn_dropout_chain()
    with pytest.raises(InfeasibleError, match="least memory that works") as info:
        fit(net, _batches((4, 3, 8, 8), 1)[0], memory="10kB", repeats=1)
    assert info.value.least_bytes > 0 and info.value.fields["least_memory_bytes"] > 10_000


@pytest.mark.parametrize("example, message", [
    ("x", "example must be a tensor"),
    ((), "example must be a tensor"),
    ((torch.zeros(2), "y", 3), "tensors only"),
])
def test_fit_names_a_bad_example(example, message):
    with pytest.raises(ModelError, match=message):
        fit(resnet_dag(), example, memory="1GB", repeats=1)


def test_an_example_pair_is_input_and_target_when_forward_takes_one_input():
    from planner.torch.fit import _split_example

    x, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    net = resnet_dag()
    assert _split_example((x, y), net, torch)[1] is y
    assert _split_example(((x,), y), net, torch) == ((x,), y)
    assert _split_example(x, net, torch) == ((x,), None)

    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    inputs, target = _split_example((x, x), Two(), torch)
    assert len(inputs) == 2 and target is None


# ------------------------------------------------------------ transformers models as they come


def _hf_step(wrapped, kwargs, target):
    return wrapped(**kwargs, target=target) if target is not None else wrapped(**kwargs)


@pytest.mark.parametrize("family, loss", [
    ("gpt2", "cross_entropy"),  # (kwargs, target): the loss reads the logits of a CausalLMOutput
    ("bert", "output"),         # labels in the kwargs, a padding mask: the model's own loss
    ("qwen2", "cross_entropy"),       # families the capture was not written against
    ("distilbert", "cross_entropy"),  # (masked LM, dropout)
    ("swin", "cross_entropy"),        # (image classification, windows)
])
def test_fit_trains_a_transformers_model_as_it_comes(family, loss):
    pytest.importorskip("transformers")
    import tests.models_hf as hf

    batch = getattr(hf, f"{family}_batch" if loss != "output" else f"{family}_labels")()
    kwargs, target = batch if isinstance(batch, tuple) else (batch, None)
    example = (kwargs, target) if target is not None else kwargs
    torch.manual_seed(0)
    net = getattr(hf, family)()
    plain = copy.deepcopy(net)
    roomy = fit(net, example, memory="1GB", loss=loss, stages="modules", strategy="store-all", repeats=1)
    fixed = roomy.plan.split.fixed_bytes
    least = plan(roomy.plan.model, fixed).least_activation_bytes
    memory = fixed + (least + roomy.plan.peak_bytes) // 2  # between the least that works and store-all
    wrapped = fit(net, example, memory=memory, loss=loss, stages="modules", repeats=1)
    result = wrapped.plan
    assert result.success and result.simulation.forwards > len(result.model) - 1  # it recomputes

    def plain_loss():
        out = plain(**kwargs)
        if loss == "output":
            return out.loss
        logits = out.logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    for module, call in ((net, lambda: _hf_step(wrapped, kwargs, target)), (plain, plain_loss)):
        opt = torch.optim.SGD(module.parameters(), lr=0.05)
        torch.manual_seed(123)
        for _ in range(STEPS):
            call().backward()
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(net.named_parameters(), plain.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name

    held = [t for t in kwargs.values() if isinstance(t, torch.Tensor)] + ([target] if target is not None else [])
    measured = _measured_peak(wrapped, lambda: _hf_step(wrapped, kwargs, target), held)
    assert abs(measured / result.peak_bytes - 1) <= MEMORY_TOLERANCE, (measured, result.peak_bytes)
