"""Models for the training-executor tests: a ResNet-like DAG and a chain with BatchNorm and dropout.

Neither is made for one strategy: the DAG is ordinary ``forward`` code that
``edgeplan profile --stages ops`` cuts into torch.fx ops (skip connections
give tensors read by two layers), the chain is an ``nn.Sequential``.
Every factory seeds torch so that two calls build the same weights.
"""

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + x)


class ResNetDAG(nn.Module):
    """A stem, ``blocks`` residual blocks at one width, a pooled linear head: a DAG of fx ops."""

    def __init__(self, blocks=3, width=8, classes=10):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(blocks))
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))
        return self.fc(self.drop(x))


def resnet_dag(blocks=3):
    return ResNetDAG(blocks)


def bn_dropout_chain():
    """Conv-BatchNorm-ReLU-Dropout blocks, then a linear head: a chain of 15 stages."""
    torch.manual_seed(0)
    layers = []
    channels = 3
    for _ in range(3):
        layers += [nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1)]
        channels = 8
    layers += [nn.Flatten(), nn.Linear(8 * 8 * 8, 10)]
    return nn.Sequential(*layers)


class ForkNet(nn.Module):
    """One wide tensor read by three convolutions whose outputs are summed: a gradient made three times.

    The stem's output is read by ``a``, ``b`` and ``c``; in the backward each
    of them makes its own gradient for it, and all but the first coexist with
    the one held (docs/fidelity.md, "the DAG gap").
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 4, 3, padding=1)
        self.b = nn.Conv2d(16, 4, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        h = self.stem(x)
        y = self.a(h) + self.b(h) + self.c(h)
        return self.fc(y.mean(dim=(2, 3)))


def fork_net():
    return ForkNet()


class AliasNet(nn.Module):
    """``add``'s backward hands one tensor to both its inputs, and a later consumer adds into one of them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l0 = nn.Linear(6, 6)
        self.a = nn.Linear(6, 6)
        self.c = nn.Linear(6, 6)

    def forward(self, x):
        z = torch.tanh(self.l0(x))
        a = self.a(z)
        c = self.c(z)  # between a and the add: its backward runs after the add's
        return (a + z) * c


def alias_net():
    return AliasNet()
