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
]
TOTAL = [  # (model, input_shape, classes, all parameters incl. biases and BatchNorm)
    ("fc5", (3, 32, 32), 10, 3_885_010),
    ("fc12", (3, 32, 32), 10, 7_269_610),
    ("resnet18", (3, 32, 32), 100, 11_220_132),
    ("resnet50", (3, 32, 32), 100, 23_705_252),
    ("resnet20", (3, 32, 32), 10, 269_722),  # He et al.: 0.27M
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


REJECTED = {(m, d) for m in ("lenet5", "vgg16", "vgg19") for d in ("digits", "synthetic")} | {("vgg16", "mnist"), ("vgg19", "mnist")}


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


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"model 'vgg11': choose from .*lenet300100.*resnet50"):
        models.build("vgg11", input_shape=(3, 32, 32), num_classes=10)


def test_bad_shape_and_classes():
    with pytest.raises(ValueError, match="input_shape"):
        models.build("lenet300100", input_shape=(8, 8), num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        models.build("lenet300100", input_shape=(1, 8, 8), num_classes=1)
