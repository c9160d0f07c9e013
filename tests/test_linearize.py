"""The linearized copy shared by effective sparsity and SynFlow (docs/algorithms.md §2 step 1), by hand."""

import pytest
import torch
from torch import nn

from pruning import masks
from pruning.linearize import linearized_copy
from pruning.pruners.synflow import linearized


def net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2, stride=2),
                      nn.Dropout(0.2), nn.Flatten(), nn.Linear(8, 3))
    masks.apply_masks(m, {"0": torch.rand(2, 1, 3, 3) > 0.5, "6": torch.rand(3, 8) > 0.5})
    return m


def test_structure_and_a_hand_computed_forward():
    model = net()
    lin, weights = linearized_copy(model, torch.float64)
    assert [type(m).__name__ for m in lin] == ["Conv2d", "Identity", "Identity", "AvgPool2d", "Identity",
                                               "Flatten", "Linear"]
    assert (lin[3].kernel_size, lin[3].stride) == (2, 2)
    assert [tuple(w.shape) for w in weights] == [(2, 1, 3, 3), (3, 8)]
    assert all(w.dtype == torch.float64 and not w.any() and not w.requires_grad for w in weights)
    assert lin[0].bias is None and lin[6].bias is None and not masks.is_masked(lin[0])
    assert not lin.training and masks.is_masked(model[0]) and model[1].__class__ is nn.BatchNorm2d
    with torch.no_grad():  # all-ones weights, all-ones 4×4 input: conv counts the taps inside the
        for w in weights:  # padding, the 2×2 average keeps the mean, the linear sums the 8 units
            w.fill_(1.0)
        out = lin(torch.ones(1, 1, 4, 4, dtype=torch.float64))
    taps = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float64)
    pooled = taps.reshape(2, 2, 2, 2).mean(dim=(1, 3))            # (2, 2) windows
    assert torch.allclose(out, torch.full((1, 3), 2 * pooled.sum().item(), dtype=torch.float64))


def test_synflow_writes_abs_of_the_masked_weights():
    model = net()
    lin = linearized(model)
    for w, dense in zip([lin[0].weight, lin[6].weight], masks.weights(model).values()):
        assert torch.equal(w, dense.abs().double())


def test_a_module_with_its_own_parameters_is_refused():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.s * x

    with pytest.raises(ValueError, match="layer '1' \\(Scale\\) has parameters \\['s'\\]"):
        linearized_copy(nn.Sequential(nn.Linear(2, 2), Scale()), torch.float32)
