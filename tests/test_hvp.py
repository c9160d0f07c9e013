"""HVP operators (`pruning.hvp`) against the exact Hessian (torch.func.hessian), and what they cost."""

import warnings

import pytest
import torch
from torch import nn

from hessian_nets import tiny_cnn, tiny_data, tiny_mlp
from pruning.hvp import (
    HVP_MODES, CountedBackend, HVPBackend, HVPStats, LocalHVPBackend, dense_hessian,
    hessian_param_names, mean_hvp, restoring,
)


@pytest.mark.parametrize("mode", HVP_MODES)
@pytest.mark.parametrize("build,shape", [(tiny_mlp, (6,)), (tiny_cnn, (1, 6, 6))])
def test_hvp_equals_exact_hessian(build, shape, mode):
    model = build()
    x, y = tiny_data(shape, classes=3 if build is tiny_cnn else 4)
    H = dense_hessian(model, x, y)
    be = LocalHVPBackend(model, None, [(x[:15], y[:15]), (x[15:], y[15:])], mode=mode)
    assert isinstance(be, HVPBackend) and be.dim == H.shape[0]
    V = torch.randn(be.dim, 3, dtype=torch.float64)
    S, n = be.hvp_sum(V)
    assert n == 40
    torch.testing.assert_close(S / n, H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mean_hvp(be, V), H @ V, rtol=1e-10, atol=1e-12)


def test_param_subsets_exclude_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert hessian_param_names(model) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert hessian_param_names(model, "prunable") == ["0.weight", "3.weight"]
    with pytest.raises(ValueError, match="params"):
        hessian_param_names(model, ["nope"])
def test_data_parallel_shards_sum_to_local():
    model = tiny_mlp()
    x, y = tiny_data((6,))
    whole = LocalHVPBackend(model, None, [(x, y)])
    shards = [  # mean_hvp adds the shards' sums and counts: the local view of data parallelism
        LocalHVPBackend.from_state_dict(tiny_mlp(1), model.state_dict(), [(x[:13], y[:13])]),
        LocalHVPBackend.from_state_dict(tiny_mlp(2), model.state_dict(), [(x[13:], y[13:])]),
    ]
    V = torch.randn(whole.dim, 2, dtype=torch.float64)
    torch.testing.assert_close(mean_hvp(shards, V), mean_hvp(whole, V), rtol=1e-12, atol=1e-14)


def test_auto_mode_settles_and_stays_exact():
    model = tiny_mlp()
    x, y = tiny_data((6,))
    H = dense_hessian(model, x, y)
    be = LocalHVPBackend(model, None, [(x, y)], mode="auto")
    V = torch.randn(be.dim, 2, dtype=torch.float64)
    for _ in range(10):  # 3 rounds × 3 candidates, then the winner
        torch.testing.assert_close(mean_hvp(be, V), H @ V, rtol=1e-10, atol=1e-12)
    assert be.mode in ("fwd_rev_cached", "rev_rev_cached", "autograd_cached")
    assert {k[0] for k in be._cache} == {be.mode}  # the loser's cache is freed


@pytest.mark.parametrize("times,settles_after,winner", [
    ([9, 9, 9, 1.0, 2.0, 3.0], 6, "fwd_rev"),              # one timed call each, a clear winner
    ([9, 9, 9, 1.0, 1.2, 3.0, 1.1, 0.9, 3.0], 9, "rev_rev"),  # close: a third round decides
])
def test_auto_settles_early_only_on_a_clear_winner(times, settles_after, winner):
    model = tiny_mlp()
    x, y = tiny_data((6,))
    be = LocalHVPBackend(model, None, [(x, y)], cache_bytes=0)   # the three recomputing candidates
    assert be._candidates == ["fwd_rev", "rev_rev", "autograd"]
    for i, t in enumerate(times):
        assert be.mode == "auto", i
        be._record(be._next_mode(), t)
    assert len(times) == settles_after and be.mode == winner


def test_forward_mode_notes_are_silenced_per_call_not_globally():
    """torch's forward-AD notes are ignored inside the products only: no filter stays installed."""
    assert not any("jit" in str(f[1]) for f in warnings.filters)
    model = tiny_cnn()
    x, y = tiny_data((1, 6, 6), classes=3)
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in ("fwd_rev", "fwd_rev_cached"):
            LocalHVPBackend(model, None, [(x, y)], mode=mode).hvp_sum(V)
        dense_hessian(model, x[:4], y[:4])
    assert not any("jit" in str(f[1]) for f in warnings.filters)


def test_counted_backend_adds_calls_and_directions():
    model = tiny_mlp()
    x, y = tiny_data((6,))
    stats = HVPStats()
    be = CountedBackend(LocalHVPBackend(model, None, [(x, y)], mode="rev_rev"), stats)
    for b in (3, 1, 2):
        be.hvp_sum(torch.randn(be.dim, b, dtype=torch.float64))
    assert (stats.calls, stats.products) == (3, 6) and stats.seconds > 0


def test_float32_data_on_a_float64_model_are_cast():
    """A Split holds float32; the backend casts floating data to the parameters' dtype."""
    model = tiny_mlp()
    x, y = tiny_data((6,))
    x32 = x.float()
    H = dense_hessian(model, x32.double(), y)
    be = LocalHVPBackend(model, None, [(x32, y)], mode="fwd_rev_cached")
    V = torch.randn(be.dim, 2, dtype=torch.float64)
    torch.testing.assert_close(mean_hvp(be, V), H @ V, rtol=1e-10, atol=1e-12)


def test_restoring_gives_back_each_module_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    model[2].eval()  # mixed: one submodule already in eval
    with restoring(model):
        LocalHVPBackend(model, None, [(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))])
        assert not any(m.training for m in model.modules())  # the backend needs eval mode
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
