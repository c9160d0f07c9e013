"""Provenance columns of a trials row: which code, which libraries, which machine, when.

Why a module of its own: every backend writes the same columns, and a result that cannot be traced
to a commit and a library version cannot be compared later. Versions come from
`importlib.metadata`, never from importing the library, so the serial path never imports Ray.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata as metadata
import socket
import subprocess
import tomllib
from pathlib import Path

import torch

from pruning import data as data_lib
from pruning import models as models_lib
from pruning import pruners as pruners_lib
from pruning.plugins import Origin
from sweeps.schema import PLUGIN_ROLES

_REPO = Path(__file__).resolve().parent.parent


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC (the store's timestamps are UTC)."""
    return dt.datetime.now(dt.timezone.utc)


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def git_commit(repo: Path = _REPO) -> str | None:
    """The commit of the checkout the code runs from (with '+dirty' if modified), or None."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{out}+dirty" if dirty else out or None


def device_name(device: str) -> str:
    """A human name for `device`: the GPU model for CUDA devices, else 'cpu'."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return device


def prunetune_version() -> str | None:
    """The installed version, else the checkout's pyproject.toml version (running from a clone)."""
    if (v := package_version("prunetune")) is not None:
        return v
    try:
        return tomllib.loads((_REPO / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        return None


def provenance(device: str, backend: str) -> dict[str, object]:
    """The static provenance columns of a trials row (timestamps are added by the trial)."""
    return {
        "prunetune_version": prunetune_version(),
        "git_commit": git_commit(),
        "torch_version": package_version("torch"),
        "ray_version": package_version("ray"),
        "device": device_name(device),
        "host": socket.gethostname(),
        "backend": backend,
    }


def plugin_origins(pruner: str, model: str, dataset: str) -> dict[str, Origin]:
    """role → Origin of each of the names that a plugin registered (built-ins have none), as this
    process loaded it: the code that really ran the cell."""
    infos = {"pruner": pruners_lib.PRUNERS.get(pruner), "model": models_lib.MODELS.get(model),
             "dataset": data_lib.DATASETS.get(dataset)}
    return {role: info.plugin for role, info in infos.items() if info is not None and info.plugin is not None}


def plugin_columns(pruner: str, model: str, dataset: str) -> dict[str, str | None]:
    """The trials row's `<role>_plugin` and `<role>_plugin_version` columns (null for a built-in)."""
    origins = plugin_origins(pruner, model, dataset)
    out: dict[str, str | None] = {}
    for role in PLUGIN_ROLES:
        origin = origins.get(role)
        out[f"{role}_plugin"] = origin.module if origin is not None else None
        out[f"{role}_plugin_version"] = origin.version if origin is not None else None
    return out
