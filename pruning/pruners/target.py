"""Pruning to a target *effective* sparsity (docs/algorithms.md §3): integer bisection on k removed.

Along a nested family of masks the effective sparsity E(k) never decreases, so the largest k with
E(k) ≤ target is found in ⌈log2 N⌉ evaluations. E jumps (one removal can disconnect many weights),
so the achieved value may sit below the target: it is returned, never rounded up to the target.
Since E(k) ≥ k/N (effective ≥ direct), the search starts from hi = ⌊target·N⌋ + 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bisection:
    removed: int  # k: the largest k found with E(k) ≤ target
    effective_sparsity: float  # E(k)
    evaluations: int  # effective-mask evaluations spent
    met: bool  # False when even E(0) exceeds the target (k = 0 is returned)


def largest_removal(effective: Callable[[int], float], n: int, target: float, limit: int | None = None) -> Bisection:
    """Largest k in [0, limit] with effective(k) ≤ target, assuming effective(k) is non-decreasing.

    Returns k with E(k) ≤ target < E(k + 1) (E(k + 1) is not evaluated when k = limit < N, a quota
    that cannot go further). Without monotonicity the loop invariant E(lo) ≤ target < E(hi) still
    guarantees that pair of neighbours.
    """
    limit = n if limit is None else limit
    evals = [0]

    def e(k: int) -> float:
        evals[0] += 1
        return effective(k)

    lo, e_lo = 0, e(0)
    if e_lo > target:
        log.warning("effective sparsity %.6f of the unpruned net already exceeds the target %.6f", e_lo, target)
        return Bisection(0, e_lo, evals[0], False)
    hi = min(math.floor(target * n) + 1, n)  # E(hi) ≥ hi/N > target: no need to evaluate it
    if hi > limit:
        e_limit = e(limit)
        if e_limit <= target:
            return Bisection(limit, e_limit, evals[0], True)
        hi = limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        e_mid = e(mid)
        if e_mid <= target:
            lo, e_lo = mid, e_mid
        else:
            hi = mid
    return Bisection(lo, e_lo, evals[0], True)
