"""Model registry: the architectures of the two papers, each built for a data set's input shape.

Every builder takes `(input_shape, num_classes)` with `input_shape = (C, H, W)`. A combination that
cannot work (more downsampling than the input allows) is refused up front with one line naming the
minimum size, instead of failing deep inside a forward pass. `build` records `model.input_shape` so
that input-dependent analyses (effective sparsity's all-ones input) know what to feed.

Prunable weights are the weights of every Conv*d and Linear layer (see `pruning.masks`); the counts
in docs/algorithms.md §8 are test fixtures.

Variants. `build(..., variant="default")` — the default — gives the architectures below with
PyTorch's own initialization: it is what every existing sweep and result was computed with, so it
stays the default. `variant="authors"` gives LeNet-300-100 and LeNet-5 as the effective-sparsity
authors built them in Keras (avysogorets/effective-sparsity), to reproduce their numbers: BatchNorm
after *every* Dense/conv layer (the classifier included, before the softmax) and Keras'
`VarianceScaling(scale=2, mode="fan_avg", distribution="normal")` on the kernels with zero biases.
Same layers, so the same prunable weights N; BatchNorm adds 2 parameters per unit, not prunable.
BatchNorm's epsilon is Keras' 1e-3. One deliberate difference from their code: their BatchNorm is
called with `training=True`, so it uses batch statistics even at test time (a test prediction then
depends on the rest of its batch); here it evaluates with running statistics (PyTorch's momentum
0.1; their running averages were never used). Their Keras `l2(5e-4)` sits on kernels only: train
these with `TrainConfig(decay="kernels", weight_decay=1e-3)` (Keras l2(λ) = PyTorch 2λ).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import scipy.stats
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
    authors: Callable[[Shape, int], nn.Module] | None = None  # variant="authors", where it exists


VARIANTS = ("default", "authors")
KERAS_BN_EPS = 1e-3  # Keras BatchNormalization's epsilon (PyTorch's default is 1e-5)


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


# --- the effective-sparsity authors' variants (Keras) ----------------------------------------

# std of a standard normal truncated to [-2, 2]: Keras divides by it so that the *truncated*
# draw has the requested std (VarianceScaling's "normal" is a truncated normal since TF 2)
_TRUNC2_STD = float(scipy.stats.truncnorm.std(-2.0, 2.0))


def keras_fan_avg_init_(weight: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    """Keras `VarianceScaling(scale, mode="fan_avg", distribution="normal")`, in place.

    fan_avg = (fan_in + fan_out) / 2 with the receptive field counted in both fans; the weight is
    drawn from a normal truncated at ±2 of its own std, with that std enlarged by 1/0.8796 so that
    the truncated draw has std √(scale / fan_avg) exactly.
    """
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2.0
    std = (scale / fan_avg) ** 0.5 / _TRUNC2_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def _authors_init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            keras_fan_avg_init_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _bn(kind: type[nn.Module], features: int) -> nn.Module:
    return kind(features, eps=KERAS_BN_EPS)


def lenet300100_authors(shape: Shape, num_classes: int) -> nn.Module:
    """LeNet-300-100 as the authors: Dense → BatchNorm → ReLU, BatchNorm after the classifier too."""
    layers: list[nn.Module] = [nn.Flatten()]
    prev = _numel(shape)
    for w in (300, 100):
        layers += [nn.Linear(prev, w), _bn(nn.BatchNorm1d, w), nn.ReLU()]
        prev = w
    layers += [nn.Linear(prev, num_classes), _bn(nn.BatchNorm1d, num_classes)]
    return _authors_init(nn.Sequential(*layers))


def lenet5_authors(shape: Shape, num_classes: int) -> nn.Module:
    """LeNet-5 as the authors: every conv and Dense followed by BatchNorm (then ReLU, avg-pool)."""
    c, h, w = shape
    fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return _authors_init(nn.Sequential(
        nn.Conv2d(c, 6, 5), _bn(nn.BatchNorm2d, 6), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), _bn(nn.BatchNorm2d, 16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * fh * fw, 120), _bn(nn.BatchNorm1d, 120), nn.ReLU(),
        nn.Linear(120, 84), _bn(nn.BatchNorm1d, 84), nn.ReLU(),
        nn.Linear(84, num_classes), _bn(nn.BatchNorm1d, num_classes),
    ))


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
    10 classes: 46,787,978 parameters (docs/algorithms.md §8).
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
    "lenet300100": ModelInfo(lenet300100, 1, "LeNet-300-100: MLP with hidden widths 300, 100",
                             lenet300100_authors),
    "lenet5": ModelInfo(lenet5, 16, "LeNet-5: two 5×5 convs (6, 16) with avg-pool, FC 120-84", lenet5_authors),
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


def check(name: str, input_shape: Sequence[int], variant: str = "default") -> None:
    """Raise ValueError (one line) if `name` is unknown, lacks `variant` or cannot take `input_shape`."""
    if name not in MODELS:
        raise ValueError(f"model {name!r}: choose from {', '.join(sorted(MODELS))}")
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: choose from {', '.join(VARIANTS)}")
    if variant == "authors" and MODELS[name].authors is None:
        have = ", ".join(n for n, m in MODELS.items() if m.authors is not None)
        raise ValueError(f"variant 'authors': model {name!r} has none; it exists for {have}")
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape {tuple(input_shape)}: expected (channels, height, width)")
    _, h, w = (int(d) for d in input_shape)
    need = MODELS[name].min_hw
    if h < need or w < need:
        raise ValueError(
            f"model {name!r} needs inputs of at least {need}×{need} (its downsampling), "
            f"got {h}×{w}; choose another model or data set"
        )


def build(name: str, *, input_shape: Sequence[int], num_classes: int, variant: str = "default") -> nn.Module:
    """Build model `name` for inputs of shape (C, H, W) and `num_classes` outputs.

    `variant`: "default" (our architectures, PyTorch initialization) or "authors" (the
    effective-sparsity authors' BatchNorm LeNets and Keras initialization; see the module docstring).
    """
    check(name, input_shape, variant)
    if num_classes < 2:
        raise ValueError(f"num_classes {num_classes}: must be ≥ 2")
    shape = tuple(int(d) for d in input_shape)
    info = MODELS[name]
    builder = info.authors if variant == "authors" else info.builder
    model = builder(shape, int(num_classes))  # type: ignore[arg-type, misc]
    model.input_shape = shape  # read by effective sparsity (all-ones input) and the trial
    model.model_name = name
    model.variant = variant
    return model


def count_parameters(model: nn.Module) -> int:
    """All parameters, biases and BatchNorm included (the §8 'total' fixtures)."""
    return sum(p.numel() for p in model.parameters())
