"""Wall time by phase, exclusive: one helper instead of hand-placed counters.

Why exclusive: phases nest (IMP trains inside its pruning call, the limit's curve evaluates inside
the limit step), and a time counted in two phases makes the parts exceed the whole. Entering a
phase pauses the one around it, so the phases of a run always add up to at most its wall time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Clock:
    """`with clock("train"): ...` adds the seconds spent inside to `clock.seconds["train"]`, minus
    the seconds of phases entered inside it. `add` books time measured elsewhere (a cached result's
    recorded time is not booked: it was not spent here)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._since = time.perf_counter()

    def _book(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self.add(self._stack[-1], now - self._since)
        self._since = now

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + float(seconds)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._book()
        self._stack.append(phase)
        try:
            yield
        finally:
            self._book()
            self._stack.pop()
