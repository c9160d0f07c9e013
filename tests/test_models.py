"""Model registry: ALGORITHMS.md §8 parameter-count fixtures, every model × data set pair."""

import pytest
import torch

from pruning import data, masks, models

PRUNABLE = [  # (model, input_shape, classes, N = prunable weights)
    ("lenet300100", (1, 28, 28), 10, 266_200),
    ("lenet5", (3, 32, 32), 10, 61_770),
    ("vgg16", (3, 32, 32), 10, 14_715_584),
    ("vgg19", (3, 32, 32), 100, 20_070_080),
    ("resnet18", (3, 64, 64), 200, 11_261_632),
    ("alexnet224", (3, 32, 32), 10, 46_778_400),  # 46,787,978 less 9,578 biases
]
TOTAL = [  # (model, input_shape, classes, all parameters incl. biases and BatchNorm)
    ("fc5", (3, 32, 32), 10, 3_885_010),
    ("fc12", (3, 32, 32), 10, 7_269_610),
    ("resnet18", (3, 32, 32), 100, 11_220_132),
    ("resnet50", (3, 32, 32), 100, 23_705_252),
    ("resnet20", (3, 32, 32), 10, 269_722),  # He et al.: 0.27M
    ("alexnet224", (3, 32, 32), 10, 46_787_978),  # the limit paper's AlexNet
]


@pytest.mark.parametrize("name,shape,classes,n", PRUNABLE)
def test_prunable_counts(name, shape, classes, n):
    model = models.build(name, input_shape=shape, num_classes=classes)
    assert masks.count_prunable(model) == n


@pytest.mark.parametrize("name,shape,classes,n", TOTAL)
def test_total_counts(name, shape, classes, n):
    assert models.count_parameters(models.build(name, input_shape=shape, num_classes=classes)) == n


def test_prunable_layers_are_convs_and_linears_in_order():
    model = models.build("resnet18", input_shape=(3, 32, 32), num_classes=10)
    names = [n for n, _ in masks.prunable_layers(model)]
    assert names[0] == "conv1" and names[-1] == "fc"
    assert "layer2.0.downsample.0" in names  # the 1×1 projection shortcut is prunable
    assert len(names) == 21
    assert all(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for _, m in masks.prunable_layers(model))


REJECTED = {(m, d) for m in ("lenet5", "vgg16", "vgg19", "alexnet224") for d in ("digits", "synthetic")} | {
    ("vgg16", "mnist"), ("vgg19", "mnist")}


@pytest.mark.parametrize("dataset", sorted(data.DATASETS))
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_pair_builds_or_is_rejected(name, dataset):
    shape, classes = data.info(dataset)
    if (name, dataset) in REJECTED:
        with pytest.raises(ValueError, match=rf"model '{name}' needs inputs of at least \d+×\d+"):
            models.build(name, input_shape=shape, num_classes=classes)
        return
    if name in {"vgg16", "vgg19", "resnet50", "alexnet224", "fc12"} and dataset in {"tinyimagenet", "cifar100"}:
        pytest.skip("same code path as the cifar10 pair; too slow for the 2-core suite")
    model = models.build(name, input_shape=shape, num_classes=classes).eval()
    assert model.input_shape == shape
    with torch.no_grad():
        out = model(torch.zeros(2, *shape))
    assert out.shape == (2, classes)


def test_alexnet224_is_the_authors_layout():
    """Nearest ×7 upsampling, then the layer shapes of the paper; 256·5·5 = 6400 features at 32 px."""
    model = models.build("alexnet224", input_shape=(3, 32, 32), num_classes=10).eval()
    up = model[0]
    assert isinstance(up, torch.nn.Upsample) and up.scale_factor == 7 and up.mode == "nearest"
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
             for m in model if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(3, 96, 11, 4, 1), (96, 256, 5, 1, 2), (256, 384, 3, 1, 1), (384, 384, 3, 1, 1),
                     (384, 256, 3, 1, 1)]
    pools = [(m.kernel_size, m.stride) for m in model if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [(3, 2)] * 3
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, torch.nn.Linear)] == \
        [(6400, 4096), (4096, 4096), (4096, 10)]
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)) for m in model.modules())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        feats = model[:15](x)  # through the flatten
    assert feats.shape == (1, 6400)
    torch.testing.assert_close(model[0](x)[:, :, ::7, ::7], x)  # nearest: every 7th pixel is the input


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"model 'vgg11': choose from .*lenet300100.*resnet50"):
        models.build("vgg11", input_shape=(3, 32, 32), num_classes=10)


def test_bad_shape_and_classes():
    with pytest.raises(ValueError, match="input_shape"):
        models.build("lenet300100", input_shape=(8, 8), num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        models.build("lenet300100", input_shape=(1, 8, 8), num_classes=1)
