"""ResNet-18 and MobileNetV2 (torchvision's layouts) written out with ``torch.nn``, as the chains
of examples/resnet18.json and examples/mobilenet_v2.json, to count their FLOPs.

The example models were timed on an x86 CPU (``ms``); an edge device's own speed is given in
FLOP/s (``edgeplan devices``).  This counts each stage's FLOPs on fake tensors and writes
``examples/flop/NAME.json``: the example model with its forward and backward times replaced by
FLOP counts (``time_unit`` ``flop``; sizes and fingerprint unchanged)::

    python examples/edge_flops.py

VGG-16-BN comes from examples/vgg16_bn.py, at the example's input (4 x 3 x 64 x 64).  It also
writes ``examples/flop/small_gpt.json``, a small transformer (the test suite's ``SmallGPT``: 4
blocks, d 128, 5,000 tokens, batch 4 x 128, with its cross-entropy loss), counted the same way.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def _conv_bn(cin, cout, kernel, stride, groups=1, act=nn.ReLU6):
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride, act=nn.ReLU), _conv_bn(cout, cout, 3, 1, act=None))
        self.down = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = [_conv_bn(cin, hidden, 1, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def resnet18(num_classes=1000):
    """10 stages: stem, 8 basic blocks, pooling + classifier."""
    stages = [nn.Sequential(_conv_bn(3, 64, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1))]
    cin = 64
    for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
        stages.append(BasicBlock(cin, cout, stride))
        cin = cout
    stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)))
    return nn.Sequential(*stages)


def mobilenet_v2(num_classes=1000):
    """20 stages: stem, 17 inverted residuals, 1x1 conv to 1280, pooling + classifier."""
    stages = [_conv_bn(3, 32, 3, 2)]
    cin = 32
    for expand, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for k in range(repeats):
            stages.append(InvertedResidual(cin, cout, stride if k == 0 else 1, expand))
            cin = cout
    stages.append(_conv_bn(cin, 1280, 1, 1))
    stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, num_classes)))
    return nn.Sequential(*stages)


MODELS = (
    ("resnet18", "examples/edge_flops.py:resnet18", "8,3,224,224"),
    ("mobilenet_v2", "examples/edge_flops.py:mobilenet_v2", "8,3,224,224"),
    ("vgg16_bn", "examples/vgg16_bn.py:vgg16_bn", "4,3,64,64"),
)


def main():
    root = HERE.parent
    for name, target, shape in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "m.json"
            subprocess.run([sys.executable, str(root / "cli.py"), "profile", target, "--input", shape, "--estimate",
                            "-o", str(out)], check=True, cwd=root)
            counted = json.loads(out.read_text())
        doc = json.loads((HERE / f"{name}.json").read_text())
        if len(counted["layers"]) != len(doc["layers"]):
            raise SystemExit(f"{name}: {len(counted['layers'])} stages counted, the example has {len(doc['layers'])}")
        for layer, flops in zip(doc["layers"], counted["layers"]):
            layer["forward"], layer["backward"] = flops["forward"], flops["backward"]
        doc["time_unit"] = "flop"
        doc["source"] += f"; times: FLOPs counted by examples/edge_flops.py ({counted['source']})"
        (HERE / "flop" / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote examples/flop/{name}.json: {sum(l['forward'] for l in doc['layers']) / 1e9:.2f} GFLOP forward")
    subprocess.run([sys.executable, str(root / "cli.py"), "profile", "tests/models_torch.py:small_gpt", "--example",
                    "tests/models_torch.py:small_gpt_example", "--loss", "cross_entropy", "--stages", "modules",
                    "--estimate", "-o", str(HERE / "flop" / "small_gpt.json")], check=True, cwd=root)


if __name__ == "__main__":
    main()
