"""Model registry: the architectures of the two papers, each built for a data set's input shape.

Every builder takes `(input_shape, num_classes)` with `input_shape = (C, H, W)`. A combination that
cannot work (more downsampling than the input allows) is refused up front with one line naming the
minimum size, instead of failing deep inside a forward pass. `build` records `model.input_shape` so
that input-dependent analyses (effective sparsity's all-ones input) know what to feed.

Prunable weights are the weights of every Conv*d and Linear layer (see `pruning.masks`); the counts
in ALGORITHMS.md §8 are test fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry: the builder and the smallest spatial input it accepts."""

    builder: Callable[[Shape, int], nn.Module]
    min_hw: int  # smallest H and W the architecture's downsampling allows
    doc: str


def _mlp(in_features: int, widths: Sequence[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


def _numel(shape: Shape) -> int:
    c, h, w = shape
    return c * h * w


def lenet300100(shape: Shape, num_classes: int) -> nn.Module:
    return _mlp(_numel(shape), [300, 100], num_classes)


def fc5(shape: Shape, num_classes: int) -> nn.Module:
    return _mlp(_numel(shape), [1000, 600, 300, 100], num_classes)


def fc12(shape: Shape, num_classes: int) -> nn.Module:
    return _mlp(_numel(shape), [1000, 900, 800, 750, 700, 650, 600, 500, 400, 200, 100], num_classes)


def lenet5(shape: Shape, num_classes: int) -> nn.Module:
    """LeNet-5 with 5×5 convs (C→6→16), average pooling, FC 16·h·w→120→84→classes."""
    c, h, w = shape
    fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 6, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * fh * fw, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def alexnet(shape: Shape, num_classes: int) -> nn.Module:
    """A CIFAR-sized AlexNet: five 3×3 convs, three 2× max-pools, FC 4096→4096→classes.

    The limit paper upsamples 32→224 and uses an ImageNet-style AlexNet; that costs ~50× more
    compute, so it is offered separately as `alexnet224`.
    """
    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(256 * (h // 8) * (w // 8), 4096), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


ALEXNET224_UPSAMPLE = 7  # 32 px × 7 = 224 px


def _alexnet224_side(n: int) -> int:
    """Spatial size after alexnet224's features for an input side n (before the ×7 upsampling)."""
    n = (ALEXNET224_UPSAMPLE * n + 2 * 1 - 11) // 4 + 1   # conv k11 s4 p1
    for _ in range(3):                                     # three max-pools 3/2 (convs keep the size)
        n = (n - 3) // 2 + 1
    return n


def alexnet224(shape: Shape, num_classes: int) -> nn.Module:
    """The limit paper's AlexNet as its authors built it (Global-One-shot-Pruning, model.AlexNet).

    The input is upsampled ×7 by nearest neighbour (32 → 224 px, their `F.interpolate(x,
    scale_factor=7)` in the training loop, here the model's first layer); conv C→96 k11 s4 p1,
    max-pool 3/2, conv 96→256 k5 p2, max-pool 3/2, convs 256→384→384→256 k3 p1, max-pool 3/2,
    FC 256·5·5 = 6400 → 4096 → 4096 → classes; ReLU, no BatchNorm, no dropout. On 32×32×3 with
    10 classes: 46,787,978 parameters (ALGORITHMS.md §8).
    """
    c, h, w = shape
    return nn.Sequential(
        nn.Upsample(scale_factor=ALEXNET224_UPSAMPLE, mode="nearest"),
        nn.Conv2d(c, 96, 11, stride=4, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(256 * _alexnet224_side(h) * _alexnet224_side(w), 4096), nn.ReLU(),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


_VGG_CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _vgg(cfg: list, shape: Shape, num_classes: int) -> nn.Module:
    """CIFAR VGG: 3×3 convs with BatchNorm, 2× max-pools, global average pool, one linear layer."""
    layers: list[nn.Module] = []
    prev = shape[0]
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(prev, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            prev = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes)]
    return nn.Sequential(*layers)


def vgg16(shape: Shape, num_classes: int) -> nn.Module:
    return _vgg(_VGG_CFG["vgg16"], shape, num_classes)


def vgg19(shape: Shape, num_classes: int) -> nn.Module:
    return _vgg(_VGG_CFG["vgg19"], shape, num_classes)


def _cifar_resnet(block: type, layers: list[int], shape: Shape, num_classes: int) -> nn.Module:
    """torchvision's ResNet with the CIFAR stem: a 3×3 stride-1 conv and no max-pool."""
    net = ResNet(block, layers, num_classes=num_classes)
    net.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def resnet18(shape: Shape, num_classes: int) -> nn.Module:
    return _cifar_resnet(BasicBlock, [2, 2, 2, 2], shape, num_classes)


def resnet50(shape: Shape, num_classes: int) -> nn.Module:
    return _cifar_resnet(Bottleneck, [3, 4, 6, 3], shape, num_classes)


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by `stride` and zero-pad the new channels.

    Parameter-free and linear, so it stays in the linearized copy used for effective sparsity.
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        front = self.pad // 2
        return nn.functional.pad(x, (0, 0, 0, 0, front, self.pad - front))


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        needs_pad = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride) if needs_pad else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def resnet20(shape: Shape, num_classes: int) -> nn.Module:
    """He et al. (2016) CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels, option A."""
    blocks: list[nn.Module] = []
    in_planes = 16
    for planes, stride in [(16, 1), (32, 2), (64, 2)]:
        for i in range(3):
            blocks.append(CifarBasicBlock(in_planes, planes, stride if i == 0 else 1))
            in_planes = planes
    return nn.Sequential(
        nn.Conv2d(shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        *blocks,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


MODELS: dict[str, ModelInfo] = {
    "lenet300100": ModelInfo(lenet300100, 1, "LeNet-300-100: MLP with hidden widths 300, 100"),
    "lenet5": ModelInfo(lenet5, 16, "LeNet-5: two 5×5 convs (6, 16) with avg-pool, FC 120-84"),
    "fc5": ModelInfo(fc5, 1, "FC5: MLP 1000-600-300-100 (limit paper)"),
    "fc12": ModelInfo(fc12, 1, "FC12: MLP 1000-900-800-750-700-650-600-500-400-200-100"),
    "alexnet": ModelInfo(alexnet, 8, "AlexNet, CIFAR-sized: five 3×3 convs, FC 4096-4096"),
    "alexnet224": ModelInfo(alexnet224, 10, "AlexNet of the limit paper: input upsampled ×7 (32→224), "
                            "convs 96-256-384-384-256, FC 4096-4096, no BN/dropout"),
    "vgg16": ModelInfo(vgg16, 32, "VGG-16 for CIFAR: 13 convs with BN, one linear layer"),
    "vgg19": ModelInfo(vgg19, 32, "VGG-19 for CIFAR: 16 convs with BN, one linear layer"),
    "resnet18": ModelInfo(resnet18, 8, "ResNet-18, CIFAR stem (3×3, no max-pool), projection shortcuts"),
    "resnet20": ModelInfo(resnet20, 4, "ResNet-20 (He et al. CIFAR), option-A shortcuts"),
    "resnet50": ModelInfo(resnet50, 8, "ResNet-50, CIFAR stem (3×3, no max-pool), bottlenecks"),
}


def check(name: str, input_shape: Sequence[int]) -> None:
    """Raise ValueError (one line) if `name` is unknown or cannot take `input_shape`."""
    if name not in MODELS:
        raise ValueError(f"model {name!r}: choose from {', '.join(sorted(MODELS))}")
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape {tuple(input_shape)}: expected (channels, height, width)")
    _, h, w = (int(d) for d in input_shape)
    need = MODELS[name].min_hw
    if h < need or w < need:
        raise ValueError(
            f"model {name!r} needs inputs of at least {need}×{need} (its downsampling), "
            f"got {h}×{w}; choose another model or data set"
        )


def build(name: str, *, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build model `name` for inputs of shape (C, H, W) and `num_classes` outputs."""
    check(name, input_shape)
    if num_classes < 2:
        raise ValueError(f"num_classes {num_classes}: must be ≥ 2")
    shape = tuple(int(d) for d in input_shape)
    model = MODELS[name].builder(shape, int(num_classes))  # type: ignore[arg-type]
    model.input_shape = shape  # read by effective sparsity (all-ones input) and the trial
    model.model_name = name
    return model


def count_parameters(model: nn.Module) -> int:
    """All parameters, biases and BatchNorm included (the §8 'total' fixtures)."""
    return sum(p.numel() for p in model.parameters())
