"""Plugin modules written by the plugin tests (not a test module), and a fixture that restores the
registries after each test.

A plugin is a file in a temporary directory, as a user would write it: tests import it through a
spec's `plugins:` or `--plugin`, never by putting it on the path themselves, so the loading is tested
too. `LAB` registers a pruner of |w|^power at initialization (with and without the IGQ quota), the
same ranking after training, a tiny MLP and a blob data set; each has an independent oracle among
the built-ins (`magnitude/global`, `magnitude/igq`) or by hand.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import pytest

from pruning import data, models, pruners

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # examples/fisher_pruner.py is a plugin too

LAB = '''
"""A lab's methods: a pruner, a model and a data set registered for prunetune."""

from dataclasses import dataclass

import torch
from torch import nn

from pruning import data, models
from pruning.masks import prunable_layers
from pruning.options import option, validate
from pruning.pruners import register_pruner


@dataclass(frozen=True)
class PowerOptions:
    power: float = option(1.0, "exponent of |w|", gt=0)
    scale: int = option(1, "a multiplier that changes nothing", ge=1)

    def __post_init__(self):
        validate(self)


def abs_weight(model, *, data, seed, power, scale):
    """|w| ** power of every prunable weight"""
    return [scale * m.weight.detach().abs() ** power for _, m in prunable_layers(model)]


register_pruner("absw", abs_weight, needs_data=False, options=PowerOptions)
register_pruner("absw/igq", abs_weight, needs_data=False, options=PowerOptions, quota="igq")
register_pruner("absw/after", abs_weight, when="after", needs_data=False, options=PowerOptions)


def tiny_mlp(input_shape, num_classes):
    """Flatten, 24 hidden ReLU units, the classifier"""
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 24), nn.ReLU(), nn.Linear(24, num_classes))


models.register_model("tiny_mlp", tiny_mlp)


@dataclass(frozen=True)
class BlobOptions:
    seed: int = option(0, "seed of the draw", ge=0)
    n_train: int = option(300, "training samples", ge=3)

    def __post_init__(self):
        validate(self)


def blobs(*, root, seed, n_train):
    """Three Gaussian blobs on 4x4 images"""
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(3, 1, 4, 4, generator=g)

    def split(n):
        y = torch.arange(n) % 3
        return data.Split("blobs", means[y] + torch.randn(n, 1, 4, 4, generator=g), y, 3, (0.0,), (1.0,))

    return split(n_train), split(90)


data.register_dataset("blobs", blobs, options=BlobOptions, input_shape=(1, 4, 4), num_classes=3)
'''


def write_plugin(directory: Path, module: str = "lab_plugin", text: str = LAB) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{module}.py"
    path.write_text(text)
    return path


def source_hash(path: Path) -> str:
    """The version a single-file plugin must record: sha256 of its name and bytes (pruning.plugins)."""
    return "sha256:" + hashlib.sha256(path.name.encode() + b"\0" + path.read_bytes() + b"\0").hexdigest()[:16]


@pytest.fixture
def registries(monkeypatch):
    """The registries, the imported modules and sys.path as they were, after the test."""
    from sweeps.spec import entry_point_problems

    saved = [(r, dict(r)) for r in (pruners.PRUNERS, models.MODELS, data.DATASETS)]
    modules, path = set(sys.modules), list(sys.path)
    entry_point_problems.cache_clear()
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)
    homes = (Path(tempfile.gettempdir()).resolve(), EXAMPLES)
    for name in set(sys.modules) - modules:  # the plugins the test imported (in tmp, or the example)
        file = getattr(sys.modules[name], "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(home) for home in homes):
            del sys.modules[name]
    sys.path[:] = path
    entry_point_problems.cache_clear()
