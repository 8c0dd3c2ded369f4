"""Train a small GPT-like model on the CPU under an edgeplan schedule at half the memory.

    python examples/train.py            # 50 steps
    python examples/train.py --steps 5

The model is written here with torch.nn: token and position embeddings, then
an ``nn.Sequential`` of transformer blocks (causal self-attention with a split
``qkv``, an MLP, LayerNorm, dropout), a final LayerNorm and an LM head.  The
embeddings take integer token ids, so they stay outside the scheduled part:
the schedule covers the blocks and the head, whose input (the embeddings'
output) requires grad; its gradient flows back into the embeddings.

The script profiles the scheduled part (``edgeplan profile`` does the same),
plans a schedule for half of what plain autograd needs, then trains two copies
from the same start on the same batches: one plainly, one through
:class:`planner.torch.executor.ScheduledModule`, with the same AdamW and
cross-entropy.  It prints both loss curves, the measured peak of a step of
each, and the largest difference between the parameters at the end, and
exits 1 when that is above 1e-5.
"""

import argparse
import copy
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from planner import solvers  # noqa: E402
from planner.torch.measure import allocation_trace
from planner.torch.profile import profile_model  # noqa: E402
from planner.model import model_from_dict  # noqa: E402
from planner.torch.executor import ScheduledModule  # noqa: E402

VOCAB, WIDTH, HEADS, LAYERS, CONTEXT, BATCH = 512, 128, 4, 4, 64, 8


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then an MLP."""

    def __init__(self, width=WIDTH, heads=HEADS, dropout=0.1):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, c)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.ln2(x)))


class Embed(nn.Module):
    """Token and learned position embeddings."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Parameter(torch.randn(1, CONTEXT, WIDTH) * 0.02)

    def forward(self, ids):
        return self.tokens(ids) + self.positions[:, : ids.shape[1]]


def gpt():
    """``(embed, body)``: the embeddings, and the blocks plus the LM head as an nn.Sequential."""
    torch.manual_seed(0)
    embed = Embed()
    body = nn.Sequential(*[Block() for _ in range(LAYERS)], nn.LayerNorm(WIDTH), nn.Linear(WIDTH, VOCAB))
    return embed, body


def batches(steps):
    """Sequences that count up modulo the vocabulary from a random start: learnable in a few steps."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        start = torch.randint(0, VOCAB, (BATCH, 1), generator=gen)
        seq = (start + torch.arange(CONTEXT + 1)) % VOCAB
        yield seq[:, :-1], seq[:, 1:]


def train(embed, body, steps):
    """The ordinary loop; returns the losses and the measured peak of the first step."""
    params = list(embed.parameters()) + list(body.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    for p in params:  # gradients are fixed memory, allocated before the measured step
        p.grad = torch.zeros_like(p)
    torch.manual_seed(2)
    losses, peak = [], None
    for ids, target in batches(steps):

        def step():
            loss = F.cross_entropy(body(embed(ids)).reshape(-1, VOCAB), target.reshape(-1))
            loss.backward()
            return loss.item()

        if peak is None:
            loss, peak, _ = allocation_trace(step, torch.device("cpu"))
        else:
            loss = step()
        opt.step()
        opt.zero_grad(set_to_none=False)
        losses.append(loss)
    return losses, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    args = parser.parse_args(argv)

    embed, body = gpt()
    shape = (BATCH, CONTEXT, WIDTH)
    model = model_from_dict(profile_model(copy.deepcopy(body), shape, repeats=1, name="gpt-body"))
    plain_peak = solvers.solve(model, None, "store-all").result.peak_bytes
    solution = solvers.solve(model, plain_peak // 2, "auto")
    r = solution.result
    print(f"model: {len(model)} stages; plain autograd needs {plain_peak:,} B (predicted)")
    print(f"schedule: {solution.strategy} at {plain_peak // 2:,} B: predicted peak {r.peak_bytes:,} B, "
          f"overhead {r.overhead:.1%}, {r.forwards} forwards")

    plain_embed, plain_body = copy.deepcopy(embed), copy.deepcopy(body)
    scheduled = ScheduledModule(body, model, solution.schedule)
    plain_losses, plain_measured = train(plain_embed, plain_body, args.steps)
    losses, measured = train(embed, scheduled, args.steps)

    print("step  loss (plain)  loss (scheduled)")
    for k, (a, b) in enumerate(zip(plain_losses, losses)):
        if k < 5 or k % 10 == 9 or k == len(losses) - 1:
            print(f"{k + 1:4d}  {a:12.6f}  {b:16.6f}")
    # The measured peaks include the embeddings and the loss, which the model file does not describe.
    print(f"measured peak of a step: plain {plain_measured:,} B, scheduled {measured:,} B "
          f"({measured / plain_measured:.0%} of plain)")
    print(f"  predicted for the blocks and head: plain {plain_peak:,} B, scheduled {r.peak_bytes:,} B; "
          "the measured peaks also hold the loss (logits-sized) and the embeddings' tensors")
    diff = max(
        (p - q).abs().max().item()
        for p, q in zip(
            list(embed.parameters()) + list(body.parameters()),
            list(plain_embed.parameters()) + list(plain_body.parameters()),
        )
    )
    print(f"max abs difference of the parameters after {args.steps} steps: {diff:.3g}")
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
