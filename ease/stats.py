"""Statistics over seeds: means with t-intervals, differences, and the verdict rule of the audit.

Every number the book reports across seeds is a `Stat`: the mean with the half-width of its
95% Student-t interval and the number of seeds. Two conditions run with the same seeds on the
same data are compared *paired*: the interval of the per-seed differences, which removes the
part of the seed-to-seed spread that both conditions share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import stats

CI_LEVEL = 0.95
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass(frozen=True)
class Stat:
    """Mean over seeds with the half-width of its t-interval (None with a single seed)."""

    mean: float
    half: float | None
    n: int

    @property
    def lo(self) -> float:
        return self.mean - (self.half or 0.0)

    @property
    def hi(self) -> float:
        return self.mean + (self.half or 0.0)


def mean_ci(values: Iterable[float], level: float = CI_LEVEL) -> Stat:
    """Mean and Student-t interval of the values."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("no values to average")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"non-finite values in a metric: {x.tolist()}")
    if x.size == 1:
        return Stat(float(x[0]), None, 1)
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Stat(float(x.mean()), float(half), int(x.size))


def diff_ci(a: Sequence[float], b: Sequence[float], level: float = CI_LEVEL) -> Stat:
    """mean(b) - mean(a) of two independent samples, with a Welch t-interval."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(b.mean() - a.mean())
    if a.size < 2 or b.size < 2:
        return Stat(diff, None, int(min(a.size, b.size)))
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return Stat(diff, 0.0, int(min(a.size, b.size)))
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    return Stat(diff, float(stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(va + vb)), int(min(a.size, b.size)))


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = CI_LEVEL) -> Stat:
    """Mean of the per-seed differences b_i - a_i with its t-interval (a and b in seed order)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need one value per seed on both sides, got {a.size} and {b.size}")
    return mean_ci(b - a, level)


def verdict(diff: Stat, claimed_sign: int) -> str:
    """The audit's decision rule for a claim that a difference is negative (-1) or positive (+1).

    reproduced: the whole interval lies on the claimed side of 0; not reproduced: the whole
    interval lies on the other side; inconclusive: it contains 0 (or there is one seed only).
    """
    if claimed_sign not in (-1, 1):
        raise ValueError(f"claimed_sign must be -1 or +1, got {claimed_sign!r}")
    if diff.half is None:
        return INCONCLUSIVE
    lo, hi = claimed_sign * diff.lo, claimed_sign * diff.hi
    low, high = min(lo, hi), max(lo, hi)
    if low > 0:
        return REPRODUCED
    if high < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(verdicts: Iterable[str]) -> str:
    """A claim made of several comparisons: reproduced only if all are, not reproduced if any is."""
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("no verdicts to combine")
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return INCONCLUSIVE


def holds_count(diffs: Sequence[float], claimed_sign: int) -> int:
    """In how many seeds the difference has the claimed sign."""
    return int(sum(1 for d in diffs if claimed_sign * d > 0))


def pareto_front(compute: Sequence[float], ppl: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower compute and lower PPL),
    ordered by compute. A point equal to another on both axes is kept once (the first)."""
    points = list(zip(map(float, compute), map(float, ppl)))
    if any(not (math.isfinite(c) and math.isfinite(p)) for c, p in points):
        raise ValueError("pareto_front needs finite points")
    front, best_ppl = [], math.inf
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i)):
        if points[i][1] < best_ppl:
            front.append(i)
            best_ppl = points[i][1]
    return front
