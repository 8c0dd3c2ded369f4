"""A small CNN to try ``edgeplan profile`` and ``edgeplan verify`` on (CPU, a few seconds).

    edgeplan profile examples/tiny_cnn.py:tiny_cnn --input 8,3,32,32 -o tiny_cnn.json
"""

import torch
from torch import nn


def tiny_cnn(num_classes=10):
    """An ``nn.Sequential`` of Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten and Linear.

    Made for 32x32 inputs with 3 channels.
    """
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, num_classes),
    )
