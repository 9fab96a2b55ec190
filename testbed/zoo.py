"""Model definitions the harness profiles and partitions, written out (no torchvision).

Holds the classic 224x224 ImageNet architectures used by the split-inference packet study
(AlexNet, VGG-16, ResNet-18, ResNet-50, layer for layer as in their papers / torchvision's
reference definitions) and ``cut_points``: the named places where a model can be split across
devices (every module of a sequential trunk, every residual block). Weights are random unless a
caller loads some; nothing is downloaded.

It also holds the two small networks every students bundle is made of: ``Student``, a
wearable's CNN (its ``feature_map`` is the last conv layer's output, for attention transfer),
and ``MergeFC``, the edge's merge layer. The spine's jointly trained model (testbed/model.py)
and the partition methods' distilled students (testbed/partition/students.py) both build on
them, so this module sits below both: it imports torch and nothing of ours.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class AlexNet(nn.Module):
    """AlexNet (one-GPU variant, as in torchvision): 5 conv + 3 FC, 224x224 input."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """VGG-16 (configuration D): 13 conv + 3 FC; pool5 output is 7x7x512 at 224x224."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(4096, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                           if stride != 1 or cin != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_c = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)   # stride on 3x3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, out_c, 1, stride, bias=False), nn.BatchNorm2d(out_c))
                           if stride != 1 or cin != out_c else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    """ResNet-18/50 as in He et al. 2016 (torchvision's layer layout)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Student(nn.Module):
    """Three conv blocks (two 2x2 max-pools), global average, FC, ReLU: N x C x H x W -> N x part_dim."""

    def __init__(self, *, in_channels: int, width: int, part_dim: int, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(4 * width, part_dim), nn.ReLU())

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv layer's output after BN + ReLU (attention-transfer source)."""
        return self.body((x - self.mean) / self.std)

    def vector_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(x)
        return self.head(fmap.mean(dim=(2, 3))), fmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_map(x).mean(dim=(2, 3)))


class MergeFC(nn.Module):
    """The edge shard: N x (slots * part_dim) merged vector -> N x classes logits."""

    def __init__(self, *, inputs: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(inputs, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)



ZOO: dict[str, Callable[[], nn.Module]] = {
    "alexnet": AlexNet,
    "vgg16": VGG16,
    "resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2]),
    "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3]),
}


def build(name: str) -> nn.Module:
    """A zoo model by name; unknown names list the known ones."""
    try:
        return ZOO[name]()
    except KeyError:
        raise KeyError(f"unknown model {name!r}; expected one of {', '.join(sorted(ZOO))}") from None


def cut_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named modules whose outputs are the places the model can be split, in forward order.

    Sequential trunks (``features``, ``classifier``) contribute each child; a ResNet its stem
    modules, each residual block, ``avgpool`` and ``fc``. Children of other modules are listed
    as they are (the profiler's hooks then see them in call order).
    """
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
        else:
            out.append((name, child))
    return out
