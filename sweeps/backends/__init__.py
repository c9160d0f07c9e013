"""Backend registry: name → "module:Class", imported only when asked for.

Why strings: the Ray backend imports Ray, which the serial path must never do (it is slow to import
and the pruning library must run without it), so nothing here imports a backend module eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sweeps.backends.base import Backend, RayOptions, RunSummary

if TYPE_CHECKING:
    from sweeps.spec import Spec

BACKENDS: dict[str, str] = {
    "serial": "sweeps.backends.serial:SerialBackend",
    "ray": "sweeps.backends.ray_tune:RayBackend",
}


def backend_class(name: str) -> type:
    """The class of backend `name`; unknown or not importable → one-line ValueError."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: choose from {', '.join(sorted(BACKENDS))}")
    module, _, attr = BACKENDS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"backend {name!r}: not available ({e})") from None


def make_backend(spec: Spec, options: RayOptions | None = None) -> Backend:
    """The spec's backend, built with its resources (and Ray's options for the Ray backend)."""
    return backend_class(spec.backend).from_spec(spec, options)


__all__ = ["BACKENDS", "Backend", "RayOptions", "RunSummary", "backend_class", "make_backend"]
