"""Model registry: docs/algorithms.md §8 parameter-count fixtures, every model × data set pair."""

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


REJECTED = ({(m, d) for m in ("lenet5", "vgg16", "vgg19", "alexnet224") for d in ("digits", "synthetic")}
            | {(m, d) for m in ("vgg16", "vgg19") for d in ("mnist", "fashion_mnist")})


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


# --- the effective-sparsity authors' variants (BatchNorm everywhere, Keras initialization) ----------

AUTHORS = [("lenet300100", (1, 28, 28), 10, 266_200), ("lenet5", (3, 32, 32), 10, 61_770)]


@pytest.mark.parametrize("name,shape,classes,n", AUTHORS)
def test_authors_variant_same_prunable_weights_bn_after_every_layer(name, shape, classes, n):
    torch.manual_seed(0)
    default = models.build(name, input_shape=shape, num_classes=classes)
    authors = models.build(name, input_shape=shape, num_classes=classes, variant="authors")
    assert masks.count_prunable(authors) == masks.count_prunable(default) == n
    assert [tuple(w.shape) for w in masks.weights(authors).values()] == \
        [tuple(w.shape) for w in masks.weights(default).values()]
    mods = [m for m in authors.modules() if not isinstance(m, torch.nn.Sequential)]
    bn_features = 0
    for i, m in enumerate(mods):  # every conv/Dense, the classifier included, is followed by BatchNorm
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            bn = mods[i + 1]
            assert isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) and bn.num_features == m.weight.shape[0]
            assert bn.eps == 1e-3  # Keras' epsilon
            bn_features += bn.num_features
    biases = sum(m.bias.numel() for _, m in masks.prunable_layers(authors))
    # BatchNorm's scale and shift are parameters but not prunable: counted apart from N
    assert models.count_parameters(authors) == n + biases + 2 * bn_features
    assert models.count_parameters(authors) - models.count_parameters(default) == 2 * bn_features
    assert authors.variant == "authors" and default.variant == "default"


@pytest.mark.parametrize("name,shape,classes,n", AUTHORS)
def test_authors_init_is_keras_fan_avg_truncated_normal(name, shape, classes, n):
    torch.manual_seed(0)
    model = models.build(name, input_shape=shape, num_classes=classes, variant="authors")
    for _, layer in masks.prunable_layers(model):
        w = layer.weight.detach()
        receptive = w[0][0].numel() if w.dim() > 2 else 1
        fan_avg = (w.shape[0] + w.shape[1]) * receptive / 2
        want = (2 / fan_avg) ** 0.5  # the std *after* truncation, as Keras' VarianceScaling
        assert float(w.std()) == pytest.approx(want, rel=0.05)
        assert float(w.abs().max()) <= 2 * want / 0.87962566103423978 + 1e-6  # truncated at ±2 pre-std
        assert torch.count_nonzero(layer.bias) == 0


def test_keras_fan_avg_init_on_a_large_tensor():
    """Keras divides the pre-truncation std by 0.8796 (the std of N(0,1) truncated to ±2): on 10⁶
    draws the truncated std is √(scale/fan_avg) to well under 1%, and the bound is ±2 pre-std."""
    torch.manual_seed(1)
    w = torch.empty(1000, 1000)
    models.keras_fan_avg_init_(w, scale=2.0)
    assert float(w.std()) == pytest.approx((2 / 1000) ** 0.5, rel=0.005)
    pre = (2 / 1000) ** 0.5 / 0.87962566103423978
    assert float(w.abs().max()) <= 2 * pre and float(w.abs().max()) > 1.9 * pre
    conv = torch.empty(64, 32, 3, 3)
    models.keras_fan_avg_init_(conv, scale=2.0)
    assert float(conv.std()) == pytest.approx((2 / ((64 + 32) * 9 / 2)) ** 0.5, rel=0.02)


@pytest.mark.parametrize("name,shape", [("lenet300100", (1, 8, 8)), ("lenet5", (3, 32, 32))])
def test_effective_sparsity_on_the_bn_variant_matches_the_plain_one(name, shape):
    """The linearized copy drops BatchNorm, so the same masks give the same effective masks on both
    variants; for the MLP they also match the boolean-product oracle."""
    import numpy as np
    from oracle_graph import mlp_effective

    from pruning.sparsity import effective_masks_from

    authors = models.build(name, input_shape=shape, num_classes=10, variant="authors")
    default = models.build(name, input_shape=shape, num_classes=10)
    g = torch.Generator().manual_seed(0)
    for density in (0.5, 0.05, 0.01):
        cand = {k: torch.rand(w.shape, generator=g) < density for k, w in masks.weights(authors).items()}
        got = effective_masks_from(authors, cand)
        # layer names differ (the BatchNorms shift Sequential indices): compare in model order
        want = effective_masks_from(default, dict(zip(masks.weights(default), cand.values())))
        assert [m.tolist() for m in got.values()] == [m.tolist() for m in want.values()]
        if name == "lenet300100":
            oracle = mlp_effective([m.numpy() for m in cand.values()])
            assert all(np.array_equal(m.numpy().astype(bool), o) for m, o in zip(got.values(), oracle))


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match=r"^variant 'keras': choose from default, authors$"):
        models.build("lenet5", input_shape=(3, 32, 32), num_classes=10, variant="keras")
    with pytest.raises(ValueError, match=r"^variant 'authors': model 'vgg16' has none; it exists for lenet300100, lenet5$"):
        models.build("vgg16", input_shape=(3, 32, 32), num_classes=10, variant="authors")
