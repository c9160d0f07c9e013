"""The R-operator HVPs of ReLU MLPs (`pruning.hvp_mlp`, hvp mode "mlp_rop") against torch.func.hessian."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from pruning.hvp import LocalHVPBackend, dense_hessian, mean_hvp
from pruning.slq import slq
from pruning.hvp_mlp import mlp_chain


def data(n=30, shape=(2, 3, 2), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def relu_mlp(seed=0, bias_last=True):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 9), nn.ReLU(), nn.Dropout(0.5), nn.Linear(9, 7, bias=False), nn.ReLU(),
        nn.Identity(), nn.Linear(7, 4, bias=bias_last),
    ).double().eval()


def check(model, x, y, params=None, batches=2, b=3):
    H = dense_hessian(model, x, y, params)
    step = -(-len(y) // batches)
    be = LocalHVPBackend(model, None, [(x[i:i + step], y[i:i + step]) for i in range(0, len(y), step)],
                         params=params, mode="mlp_rop")
    assert be.dim == H.shape[0]
    V = torch.randn(be.dim, b, dtype=torch.float64)
    for _ in range(2):  # the second call reuses the cached forward and the workspace
        torch.testing.assert_close(mean_hvp(be, V), H @ V, rtol=1e-10, atol=1e-12)
    return be


@pytest.mark.parametrize("bias_last", [True, False])
def test_equals_the_exact_hessian(bias_last):
    x, y = data(n=31)
    check(relu_mlp(bias_last=bias_last), x, y)
    check(relu_mlp(bias_last=bias_last), x, y, batches=3)      # 11 + 11 + 9 samples: shared buffers


def test_masked_layers_and_parameter_subsets():
    x, y = data(seed=1)
    model = relu_mlp(seed=1)
    prune.random_unstructured(model[1], "weight", amount=0.5)
    prune.random_unstructured(model[7], "weight", amount=0.3)
    check(model, x, y)                                        # weight_orig of masked layers
    check(model, x, y, params="prunable")                     # weights only, no biases
    check(model, x, y, params=["4.weight", "7.bias"])          # one hidden weight and the last bias
    check(model, x, y, params=["1.bias"], b=1)


def test_dead_units_and_a_single_direction():
    x, y = data(seed=2)
    model = relu_mlp(seed=2)
    with torch.no_grad():
        model[1].bias[:4] = -100.0                             # four units never active: zero rows
    be = check(model, x, y, b=1)
    V = torch.zeros(be.dim, 1, dtype=torch.float64)
    V[:12] = 1.0                                               # a dead unit's incoming weights
    assert mean_hvp(be, V).abs().max() == 0


def test_auto_takes_it_and_slq_agrees_with_the_generic_modes():
    x, y = data(n=60, seed=3)
    model = relu_mlp(seed=3)
    be = LocalHVPBackend(model, None, [(x, y)])
    assert be.mode == "mlp_rop"
    kw = dict(probes=3, iterations=20, seed=5, deflate=False)
    fast = slq(model, None, [(x, y)], **kw)
    generic = slq(model, None, [(x, y)], hvp_mode="rev_rev", **kw)
    assert fast.info["hvp_mode"] == "mlp_rop"
    np.testing.assert_allclose(fast.nodes, generic.nodes, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fast.weights, generic.weights, rtol=1e-6, atol=1e-10)


def test_lenet300100_float32_matches_rev_rev():
    """The registry's LeNet-300-100 is eligible, and float32 products agree with torch.func's."""
    from pruning.models import build

    torch.manual_seed(0)
    model = build("lenet300100", input_shape=(1, 8, 8), num_classes=10).eval()
    x, y = torch.randn(50, 1, 8, 8), torch.randint(0, 10, (50,))
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2)
    fast = LocalHVPBackend(model, None, [(x, y)])
    assert fast.mode == "mlp_rop"
    slow = LocalHVPBackend(model, None, [(x, y)], mode="rev_rev")
    torch.testing.assert_close(fast.hvp_sum(V)[0], slow.hvp_sum(V)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model,loss,why", [
    (nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), None, "Tanh"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)), None, "Conv2d"),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), None, "without a ReLU"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU()), None, "end with a Linear"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 2)), None, "Flatten"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), F.mse_loss, "cross_entropy"),
    (nn.ModuleList([nn.Linear(4, 2)]), None, "not an nn.Sequential"),
])
def test_ineligible_models_say_why(model, loss, why):
    reason = mlp_chain(model, loss)
    assert isinstance(reason, str) and why in reason


def test_unflattened_inputs_of_more_than_two_dims_are_not_an_mlp():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert not isinstance(mlp_chain(model, None, input_ndim=2), str)
    reason = mlp_chain(model, None, input_ndim=3)
    assert isinstance(reason, str) and "3-D inputs reach the first Linear" in reason
    assert not isinstance(mlp_chain(nn.Sequential(nn.Flatten(), *model), None, input_ndim=4), str)
    x, y = torch.randn(5, 2, 4), torch.randint(0, 2, (5, 2))
    assert LocalHVPBackend(model, None, [(x, y)]).mode == "auto"


def test_forcing_it_on_an_ineligible_model_is_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    with pytest.raises(ValueError, match=r"hvp mode 'mlp_rop': not applicable, layer 1 is a Tanh"):
        LocalHVPBackend(model, None, [(x, y)], mode="mlp_rop")
    assert LocalHVPBackend(model, None, [(x, y)]).mode == "auto"   # auto measures the generic modes


@pytest.mark.parametrize("params", [None, "prunable", ["4.weight_orig", "7.bias"], ["1.bias"]])
def test_steps_over_the_samples_sum_to_the_exact_hessian(params):
    """MLPHVP walks its samples in steps of `chunk` rows (7 here: 31 samples from two batches give
    steps of 7, 7, 7, 7, 3 that cross the batch boundary); the accumulated products are exact."""
    from pruning.hvp import hessian_param_names
    from pruning.hvp_mlp import MLPHVP

    x, y = data(n=31, seed=4)
    model = relu_mlp(seed=4)
    prune.random_unstructured(model[4], "weight", amount=0.4)
    names = hessian_param_names(model, params)
    H = dense_hessian(model, x, y, params)
    values = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    values = {k: v.detach() for k, v in values.items()}
    op = MLPHVP(mlp_chain(model, None, x.ndim), values, names, [(x[:13], y[:13]), (x[13:], y[13:])], chunk=7)
    V = torch.randn(H.shape[0], 3, dtype=torch.float64)
    shapes = [values[n].shape for n in names]
    T, start = {}, 0
    for n, s in zip(names, shapes):
        T[n] = V[start:start + s.numel()].T.reshape(3, *s)
        start += s.numel()
    for _ in range(2):  # the second call reuses the buffers of the first
        out = op.products(T)
        HV = torch.cat([out[n].reshape(3, -1) for n in names], dim=1).T
        torch.testing.assert_close(HV, H @ V * len(y), rtol=1e-10, atol=1e-10)


def test_a_step_of_no_samples_is_refused():
    from pruning.hvp_mlp import MLPHVP

    x, y = data()
    model = relu_mlp()
    values = {k: v.detach() for k, v in model.named_parameters()}
    with pytest.raises(ValueError, match="chunk: 0, expected a positive number of samples"):
        MLPHVP(mlp_chain(model, None, x.ndim), values, list(values), [(x, y)], chunk=0)


@pytest.mark.parametrize("bias_last", [True, False])
def test_the_benchs_gemm_count_is_what_a_pass_multiplies(bias_last):
    """bench/slq_vs_pyhessian.py's roofline divides `mlp_rop_gemm_flops` by the GEMM rate: the count
    must be the matrix-product work of one `products` call, as torch's FLOP counter sees it."""
    import sys
    from pathlib import Path

    from torch.utils.flop_counter import FlopCounterMode

    from pruning.hvp import hessian_param_names
    from pruning.hvp_mlp import MLPHVP

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from slq_vs_pyhessian import mlp_rop_gemm_flops

    x, y = data(n=23, seed=5)
    model = relu_mlp(seed=5, bias_last=bias_last)
    names = hessian_param_names(model, None)
    values = {k: v.detach() for k, v in model.named_parameters()}
    op = MLPHVP(mlp_chain(model, None, x.ndim), values, names, [(x, y)], chunk=10)
    T = {n: torch.randn(3, *values[n].shape, dtype=torch.float64) for n in names}
    # torch's counter knows mm and addmm; the in-place addmm_ that accumulates is taught here
    def addmm_(self_shape, a_shape, b_shape, *args, **kwargs):
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_}) as counter:
        op.products(T)
    assert counter.get_total_flops() == mlp_rop_gemm_flops(model, len(y), 3)
