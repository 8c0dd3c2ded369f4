"""VGG-16 with batch norm, written out with ``torch.nn`` (torchvision's layout), as a 52-layer chain.

    edgeplan profile examples/vgg16_bn.py:vgg16_bn --input 4,3,64,64 -o examples/vgg16_bn.json

The 13 convolutions with their BatchNorm and ReLU, the 5 max-pools, ``Flatten`` and the
7-layer classifier make 52 stages.  Made for 64x64 inputs (the classifier reads 512 x 2 x 2);
``width`` scales the channel counts (1.0 is torchvision's 64..512).
"""

import torch
from torch import nn

_PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_bn(num_classes=100, width=0.25):
    torch.manual_seed(0)
    layers = []
    channels = 3
    for item in _PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = max(8, int(item * width))
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    hidden = max(64, int(4096 * width))
    layers += [
        nn.Flatten(),
        nn.Linear(channels * 2 * 2, hidden),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)
