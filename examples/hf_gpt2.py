"""A Hugging Face GPT-2, as it comes, profiled and trained under an edgeplan schedule.

``build`` returns a ``transformers.GPT2LMHeadModel`` built from a small config
(random weights: nothing is downloaded); ``batch`` returns the keyword arguments
of one training batch and the target, ``labelled`` the same with ``labels`` (the
model computes its own loss)::

    edgeplan profile examples/hf_gpt2.py:build --example examples/hf_gpt2.py:batch \\
        --loss cross_entropy --stages modules -o gpt2.json
    edgeplan solve gpt2.json --memory 20MB -o gpt2-schedule.json
    edgeplan verify examples/hf_gpt2.py:build --example examples/hf_gpt2.py:batch \\
        --stages modules --model gpt2.json --schedule gpt2-schedule.json --steps 2

or with the model's own loss: ``--example examples/hf_gpt2.py:labelled --loss output``.
``python examples/hf_gpt2.py`` does it all from Python and trains 3 steps.
Needs ``pip install -e ".[test]"`` (torch and transformers).
"""

import torch

BATCH, SEQ, VOCAB = 4, 64, 512


def build():
    """A 4-layer GPT-2 with hidden size 128 (random weights)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=128, n_layer=4, n_head=4)
    config.attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(config)


def batch():
    """``(kwargs, target)``: token ids, and the next token at each position."""
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids[:, :-1]}, ids[:, 1:]


def labelled():
    """The keyword arguments with ``labels``: the model returns its own ``loss``."""
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def main():
    from planner import solvers
    from planner.model import model_from_dict
    from planner.torch.executor import ScheduledModule
    from planner.torch.profile import profile_model

    doc = profile_model(build(), "examples/hf_gpt2.py:labelled", stages="modules", loss="output", name="gpt2")
    model = model_from_dict(doc)
    full = solvers.solve(model, None, "store-all").result.peak_bytes
    solution = solvers.solve(model, int(full * 0.75), "auto")
    print(f"{len(model.layers)} layers; store-all {full:,} bytes of activations, "
          f"{solution.schedule.strategy} at 75%: {solution.result.peak_bytes:,} bytes, "
          f"overhead {solution.result.overhead:.1%}")
    net = build()
    wrapped = ScheduledModule(net, model, solution.schedule, stages="modules")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    kwargs = labelled()
    for step in range(3):
        loss = wrapped(**kwargs)  # the model's own loss, under the schedule
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
