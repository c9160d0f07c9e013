"""Wall time by phase, exclusive: one helper instead of hand-placed counters.

Why exclusive: phases nest (IMP trains inside its pruning call, the limit's curve evaluates inside
the limit step), and a time counted in two phases makes the parts exceed the whole. Entering a
phase pauses the one around it, so the phases of a run always add up to at most its wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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


class Throttle:
    """`Throttle(fn, every)(values)` forwards `values` to `fn` at most once per `every` seconds.

    Why here and not in each loop: progress of a long computation (a Lanczos step, a curve point) is
    wanted every few seconds, while its loop may turn thousands of times a second; one monotonic
    clock read per turn is all the loop pays (bench/progress_overhead.py). The first call after
    `every` seconds goes through; `force=True` always does (a last report)."""

    def __init__(self, fn: Callable[[dict], None], every: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fn, self.every, self.clock = fn, float(every), clock
        self._last = clock()

    def __call__(self, values: dict, *, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last >= self.every:
            self._last = now
            self.fn(values)
