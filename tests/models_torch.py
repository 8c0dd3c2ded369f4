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
