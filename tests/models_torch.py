"""Small hand-written PyTorch models for the profile / verify / fidelity tests.

torchvision is not a dependency: the ResNet-like chain below rebuilds
torchvision's ``BasicBlock`` (in-place ReLUs, ``out += identity``) by hand.
Every factory seeds torch so that two calls build the same weights.
"""

import torch
from torch import nn


def small_cnn(blocks=4):
    """A chain of Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Linear for 3x16x16 inputs.

    ``blocks`` Conv-BatchNorm-ReLU triples at one resolution, then the head.
    """
    torch.manual_seed(0)
    layers = []
    channels = 3
    for _ in range(blocks):
        layers += [nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
        channels = 8
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)]
    return nn.Sequential(*layers)


def deeper_cnn():
    """:func:`small_cnn` with 5 blocks: deep enough that checkpointing halves its memory."""
    return small_cnn(5)


def dropout_mlp():
    """A chain with Dropout: recomputation must reproduce the same masks."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(48, 32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Dropout(0.3),
        nn.Linear(32, 4),
    )


class SkipNet(nn.Module):
    """A module with a skip connection (not a Sequential): profiled as a DAG of fx ops."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        a = torch.relu(self.bn(self.conv1(x)))
        b = self.conv2(a)
        c = torch.relu(a + b)
        return self.fc(c.flatten(1))


def skip_net():
    return SkipNet()


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, written out."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


def resnet_chain(width=16, classes=10):
    """A ResNet-18-shaped chain of 10 stages (stem, 8 basic blocks, head), small channels.

    The stages are the ones of ``shared/models/resnet18.json``: the stem
    (conv 7x7 stride 2, BatchNorm, ReLU, max-pool), four pairs of blocks
    (the first of each pair from the second on downsamples), then average
    pool, flatten and the classifier.
    """
    torch.manual_seed(0)
    w = width
    stages = [
        nn.Sequential(
            nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    ]
    inplanes = w
    for k, planes in enumerate((w, 2 * w, 4 * w, 8 * w)):
        stages.append(BasicBlock(inplanes, planes, stride=1 if k == 0 else 2))
        stages.append(BasicBlock(planes, planes))
        inplanes = planes
    stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, classes)))
    return nn.Sequential(*stages)


def lm_head_mlp(vocab=4096):
    """A small MLP whose last layer, like a language model's head, has the largest output.

    The logits (``vocab`` per row) dominate every other activation; the loss
    reads them until the head's backward (SPEC section 3).
    """
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(48, 32),
        nn.Tanh(),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Linear(32, vocab),
    )
# ------------------------------------------------- four models written the usual way
#
# Not nn.Sequential: forward methods as people write them (nanoGPT, BERT, torchvision's
# ResNet, U-Net), for the profiler's tracing and the fidelity benchmark.  Each has an
# ``*_example()`` for ``--example FILE.py:FUNC`` returning ``(inputs, target)``.

import torch.nn.functional as F  # noqa: E402


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention: one ``qkv`` Linear split in three, heads by view/transpose, SDPA."""

    def __init__(self, d, heads):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.n_head = heads

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class GPTBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class SmallGPT(nn.Module):
    """Token and learned position embeddings (of an ``arange``), blocks, LayerNorm, tied LM head."""

    def __init__(self, vocab=5000, d=128, heads=4, layers=4, block_size=256):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block_size, d)
        self.blocks = nn.ModuleList([GPTBlock(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, idx):
        B, T = idx.shape
        assert T <= self.block_size, f"sequence of {T} is longer than {self.block_size}"
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def small_gpt():
    torch.manual_seed(0)
    return SmallGPT()


def small_gpt_example(batch=4, tokens=128, vocab=5000):
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, vocab, (batch, tokens), generator=gen)
    return idx, torch.randint(0, vocab, (batch, tokens), generator=gen)


def gpt_20m():
    """About 20 M parameters: d 384, 8 blocks, 5,000 tokens (for the profiling-time check)."""
    torch.manual_seed(0)
    return SmallGPT(vocab=5000, d=384, heads=6, layers=8, block_size=256)


class EncoderLayer(nn.Module):
    """A BERT layer: ``qkv`` chunked, SDPA with the padding mask, a GEGLU feed-forward."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.ff_in = nn.Linear(d, 4 * d)
        self.ff_out = nn.Linear(2 * d, d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x, mask):
        B, T, C = x.shape
        q, k, v = (t.reshape(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = self.norm1(x + self.out(a.transpose(1, 2).reshape(B, T, C)))
        h = self.ff_in(x)
        n = h.shape[-1] // 2
        return self.norm2(x + self.ff_out(h[..., :n] * F.gelu(h[..., n:])))


class SmallBERT(nn.Module):
    """Token embedding plus a position parameter used directly, encoder layers, a [CLS] head."""

    def __init__(self, vocab=5000, d=128, heads=4, layers=4, max_len=128, classes=10):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, max_len, d) * 0.02)
        self.norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList([EncoderLayer(d, heads) for _ in range(layers)])
        self.head = nn.Linear(d, classes)

    def forward(self, ids, mask):
        T = ids.shape[1]
        x = self.norm(self.tok(ids) + self.pos[:, :T])
        keep = mask.bool()
        for layer in self.layers:
            x = layer(x, keep)
        return self.head(x[:, 0])


def small_bert():
    torch.manual_seed(0)
    return SmallBERT()


def small_bert_example(batch=8, tokens=128, vocab=5000, classes=10):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (batch, tokens), generator=gen)
    lengths = torch.randint(tokens // 2, tokens + 1, (batch,), generator=gen)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
    return (ids, mask), torch.randint(0, classes, (batch,), generator=gen)


class ResNet(nn.Module):
    """torchvision's ResNet-18 forward (basic blocks with in-place skips), small channels."""

    def __init__(self, width=16, classes=10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet():
    torch.manual_seed(0)
    return ResNet()


def resnet_example(batch=8, size=64, classes=10):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, classes, (batch,), generator=gen)


class DoubleConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(x)), inplace=True)


class UNet(nn.Module):
    """Three levels down, three up, the skips concatenated; a 1x1 head."""

    def __init__(self, cin=3, cout=2, width=8):
        super().__init__()
        w = width
        self.down = nn.ModuleList([DoubleConv(cin, w), DoubleConv(w, 2 * w), DoubleConv(2 * w, 4 * w)])
        self.bottom = DoubleConv(4 * w, 8 * w)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in (8 * w, 4 * w, 2 * w)])
        self.dec = nn.ModuleList([DoubleConv(c, c // 2) for c in (8 * w, 4 * w, 2 * w)])
        self.head = nn.Conv2d(w, cout, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def unet():
    torch.manual_seed(0)
    return UNet()


def unet_example(batch=4, size=64):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(batch, 3, size, size, generator=gen)
    return x, torch.randn(batch, 2, size, size, generator=gen)


def tiny_bert():
    """:class:`SmallBERT` small enough for CLI tests."""
    torch.manual_seed(0)
    return SmallBERT(vocab=100, d=16, heads=2, layers=2, max_len=16, classes=3)


def tiny_bert_example():
    return small_bert_example(batch=2, tokens=16, vocab=100, classes=3)
