"""The course's two float models: the forum question's small CNN and a BasicBlock ResNet-18.

Both come ready for eager-mode static quantization: QuantStub / DeQuantStub mark where tensors
enter and leave int8, and `fuse_model()` names the Conv+BN(+ReLU) / Linear+ReLU groups to fold.
The ResNet also has a plain variant written like torchvision's, with `out += identity` and one
ReLU module used twice, to show (notebook 04) why quantization needs the other one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub, fuse_modules

from .errors import NotQuantizableError, check_whole


class SeedNet(nn.Module):
    """The CNN of the forum question: four Conv-BN-ReLU, dropout, Linear-ReLU, dropout, Linear.

    28x28 input: 3x3 stride-2 convolutions take it to 14, 7, 4, then a 2x2 stride-2 one to 2,
    so 64 channels x 2 x 2 = 256 features. The module order and indices match the printout in
    the question: after fusion each BN and ReLU becomes an Identity placeholder.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.quant = QuantStub()
        self.dequant = DeQuantStub()
        layers = []
        for c_in, c_out, kernel, padding in ((in_channels, 16, 3, 1), (16, 32, 3, 1),
                                            (32, 64, 3, 1), (64, 64, 2, 0)):
            layers += [nn.Conv2d(c_in, c_out, kernel, stride=2, padding=padding, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(256, 100), nn.ReLU(), nn.Dropout(0.2), nn.Linear(100, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.features(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return self.dequant(x)

    def fuse_groups(self) -> list[list[str]]:
        """The module names fuse_modules folds together: conv+bn+relu four times, linear+relu once."""
        convs = [[f"features.{i}", f"features.{i + 1}", f"features.{i + 2}"] for i in range(0, 12, 3)]
        return convs + [["classifier.1", "classifier.2"]]

    def fuse_model(self) -> "SeedNet":
        """Fuse in place (eval mode: BN folding uses the running statistics)."""
        fuse_modules(self, self.fuse_groups(), inplace=True)
        return self


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: the skip connection is a bare `+=`, one ReLU module used twice."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class QuantizableBasicBlock(BasicBlock):
    """The same block, quantizable: the add is a FloatFunctional, each ReLU a module of its own.

    `skip_add.add_relu` records the observer of the sum and becomes a quantized add+ReLU after
    conversion; a bare `+` has no observer and would meet quantized tensors it cannot add.
    ReLU modules have no parameters, so the state dicts of both blocks stay interchangeable.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__(c_in, c_out, stride, downsample)
        del self.relu
        self.relu1 = nn.ReLU()
        self.skip_add = FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.skip_add.add_relu(out, identity)

    def fuse_groups(self, prefix: str = "") -> list[list[str]]:
        groups = [[f"{prefix}conv1", f"{prefix}bn1", f"{prefix}relu1"], [f"{prefix}conv2", f"{prefix}bn2"]]
        if self.downsample is not None:
            groups.append([f"{prefix}downsample.0", f"{prefix}downsample.1"])
        return groups


class ResNet(nn.Module):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a width knob and a small-input stem.

    With the defaults its state dict has torchvision.models.resnet18()'s keys and shapes.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 64,
                 small_input: bool = False, quantizable: bool = False, layers=(2, 2, 2, 2)):
        super().__init__()
        for value, what in ((num_classes, "num_classes"), (in_channels, "in_channels"), (width, "width")):
            check_whole(value, what, 1)
        self.quantizable = quantizable
        block = QuantizableBasicBlock if quantizable else BasicBlock
        if small_input:  # 28x28 or 32x32 images: keep the resolution, as CIFAR ResNets do.
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=not quantizable)
        self.inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)
        del self.inplanes
        if quantizable:
            self.quant = QuantStub()
            self.dequant = DeQuantStub()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [block(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantizable:
            x = self.quant(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        x = self.fc(x)
        return self.dequant(x) if self.quantizable else x

    def fuse_groups(self) -> list[list[str]]:
        """Conv+BN+ReLU of the stem, then each block's groups (see QuantizableBasicBlock)."""
        if not self.quantizable:
            raise NotQuantizableError("Only resnet18(..., quantizable=True) can be fused: the plain variant "
                            "reuses one ReLU module twice, so fusing it would fold the same ReLU "
                            "into two places. Build it with quantizable=True and load the same "
                            "state dict.")
        groups = [["conv1", "bn1", "relu"]]
        for layer_name in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(self, layer_name)):
                groups += block.fuse_groups(prefix=f"{layer_name}.{index}.")
        return groups

    def fuse_model(self) -> "ResNet":
        """Fuse in place (eval mode: BN folding uses the running statistics)."""
        fuse_modules(self, self.fuse_groups(), inplace=True)
        return self


def resnet18(num_classes: int = 1000, in_channels: int = 3, width: int = 64,
             small_input: bool = False, quantizable: bool = False) -> ResNet:
    """BasicBlock ResNet-18; `quantizable=True` gives the FloatFunctional, fusable variant."""
    return ResNet(num_classes, in_channels, width, small_input, quantizable)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable and non-trainable parameters (BN running stats are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())
