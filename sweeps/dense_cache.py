"""The dense-model cache: train each dense model once, share it across pruners and sparsities.

Why: a post-training pruner (magnitude, LAMP, IMP's first round, LOMP) starts from the same trained
dense network at every sparsity; training it once per cell would multiply a sweep's cost by the
number of sparsities. Entries live in `<storage>/_cache/dense/<key>/`, where `key` hashes exactly
what determines the trained weights (model, data set and its options, seed, training config incl.
the L1 term of LOMP), so any change to those yields a new key and nothing stale is ever reused.

Each item (the dense checkpoint, an SLQ of it) is one file written atomically and read with
`torch.load(weights_only=True)` (no pickled code runs). Two processes racing for one key: the first
takes a lock file (`os.open(O_CREAT | O_EXCL)`), refreshed by a heartbeat while it computes; the
other waits and reuses the winner's file. A lock whose owner died (same host, dead pid) or whose
heartbeat stopped (`stale_after` seconds) is broken. The lock only saves work: correctness rests on
the atomic replace, so even a broken lock can at worst cause one duplicate computation.
Object stores (pyarrow.fs URIs) get no lock: compute, then one atomic PUT.

Every computation appends a line to `<key>/computed.log` (item, host, pid, time): the record of how
often a model was really trained, which the tests count.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from sweeps import paths, store

log = logging.getLogger(__name__)

DENSE_ITEM = "dense.pt"
LOG_NAME = "computed.log"


def key_of(fields: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of the JSON of `fields`: the cache key."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dense_fields(*, model: str, dataset: str, data_options: Mapping[str, Any], seed: int,
                 train: Mapping[str, Any], model_variant: str | None = None) -> dict[str, Any]:
    """Exactly what determines a trained dense model (`train` includes LOMP's `l1`).

    The trial passes the cell's *hashed* sections (fields at their original defaults left out, as
    in the cell id), so a field added to TrainConfig later does not orphan every cached model."""
    out = {"model": model, "dataset": dataset, "data": dict(data_options), "seed": seed, "train": dict(train)}
    if model_variant is not None:
        out["model_variant"] = model_variant
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat:
    """Touches the lock file every `period` seconds so that waiters know its owner is alive."""

    def __init__(self, path: str, period: float):
        self.path, self.period = path, period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class DenseCache:
    """Items (files) under `<storage>/_cache/dense/<key>/`, computed at most once per key."""

    def __init__(self, storage: str, *, stale_after: float = 120.0, poll: float = 0.2):
        self.storage = storage
        self.loc = store.locate(storage)
        self.stale_after = stale_after
        self.poll = poll

    def path(self, key: str, item: str = "") -> str:
        return self.loc.join(*paths.dense_cache_parts(key, item))

    def load(self, key: str, item: str) -> dict[str, Any] | None:
        """The stored item, or None when absent or unreadable (then it is recomputed)."""
        try:
            with self.loc.fs.open_input_file(self.path(key, item)) as f:
                data = f.read()
        except (FileNotFoundError, OSError):
            return None
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            # a torn or foreign file is recomputed, but say so: silence here once hid a format bug
            log.warning("dense cache %s/%s unreadable, recomputing: %s", key, item,
                        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            return None

    def save(self, key: str, item: str, value: Mapping[str, Any],
             describe: Mapping[str, Any] | None = None) -> None:
        buf = io.BytesIO()
        torch.save(dict(value), buf)
        if describe is not None:
            store.write_bytes(self.storage, self.path(key, "key.json"),
                              json.dumps(describe, sort_keys=True, indent=1, default=list).encode())
        store.write_bytes(self.storage, self.path(key, item), buf.getvalue())

    def computations(self, key: str, item: str = DENSE_ITEM) -> int:
        """How many times `item` of `key` was computed (lines of computed.log)."""
        try:
            with self.loc.fs.open_input_stream(self.path(key, LOG_NAME)) as f:
                lines = f.read().decode().splitlines()
        except (FileNotFoundError, OSError):
            return 0
        return sum(1 for line in lines if line.split(" ", 1)[0] == item)

    def _log(self, key: str, item: str) -> None:
        line = f"{item} {socket.gethostname()} {os.getpid()} {time.time():.3f}\n"
        if self.loc.local:
            fd = os.open(self.path(key, LOG_NAME), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        else:  # object stores cannot append: rewrite (a lost line only affects the count)
            old = b""
            try:
                with self.loc.fs.open_input_stream(self.path(key, LOG_NAME)) as f:
                    old = f.read()
            except (FileNotFoundError, OSError):
                pass
            store.write_bytes(self.storage, self.path(key, LOG_NAME), old + line.encode())

    def get_or_compute(self, key: str, item: str, compute: Callable[[], Mapping[str, Any]], *,
                       describe: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        """(value, computed_here): the cached item, or compute it once and store it.

        `compute` returns a mapping of tensors and plain values (what weights_only loading allows).
        """
        if (hit := self.load(key, item)) is not None:
            return hit, False
        if not self.loc.local:
            value = dict(compute())
            self.save(key, item, value, describe)
            self._log(key, item)
            return value, True
        os.makedirs(self.path(key), exist_ok=True)
        lock = self.path(key, f".{item}.lock")
        while True:
            if (hit := self.load(key, item)) is not None:
                return hit, False
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale(lock):
                    self._break(lock)
                else:
                    time.sleep(self.poll)
                continue
            try:
                os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
                os.close(fd)
                with _Heartbeat(lock, max(self.stale_after / 4, 0.05)):
                    if (hit := self.load(key, item)) is not None:  # finished while we waited
                        return hit, False
                    value = dict(compute())
                    self.save(key, item, value, describe)
                    self._log(key, item)
                    return value, True
            finally:
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass

    def _stale(self, lock: str) -> bool:
        """A lock is stale when its owner is a dead process here, or its heartbeat stopped."""
        try:
            owner = open(lock).read().split()
            age = time.time() - os.stat(lock).st_mtime
        except (FileNotFoundError, OSError):
            return False  # gone already: just retry
        if len(owner) == 2 and owner[0] == socket.gethostname() and owner[1].isdigit():
            if not _pid_alive(int(owner[1])):
                return True
        return age > self.stale_after

    def _break(self, lock: str) -> None:
        """Remove a stale lock; renaming first means only one waiter removes it."""
        grave = f"{lock}.{secrets.token_hex(4)}.stale"
        try:
            os.rename(lock, grave)
            os.unlink(grave)
        except FileNotFoundError:
            pass
