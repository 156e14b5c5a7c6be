"""Statistics over seeds: means with t-intervals, differences, and the verdict rule of the audit.

Every number the book reports across seeds is a `Stat`: the mean with the half-width of its
95% Student-t interval and the number of seeds. Two conditions run with the same seeds on the
same data are compared *paired*: the interval of the per-seed differences, which removes the
part of the seed-to-seed spread that both conditions share.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

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


# --- intervals that cover the evaluation text too ------------------------------------------------
@dataclass(frozen=True)
class TextAwareDiff:
    """A paired difference averaged over seeds, with a percentile interval and a two-sided p-value from
    a bootstrap that resamples seeds and contiguous blocks of the evaluation text."""

    mean: float
    lo: float
    hi: float
    p: float
    n_seeds: int
    n_blocks: int


def block_ppl(ce_sums: np.ndarray, tokens: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """PPL from per-block CE sums [..., blocks] and block token counts [blocks]; with block weights
    [replicates, blocks] (how often each block is drawn), one PPL per replicate in the last axis."""
    ce_sums, tokens = np.asarray(ce_sums, float), np.asarray(tokens, float)
    if weights is None:
        return np.exp(ce_sums.sum(-1) / tokens.sum())
    return np.exp((ce_sums @ weights.T) / (weights @ tokens))


def text_aware_paired(stat_a: Callable, stat_b: Callable, n_seeds: int, n_blocks: int, replicates: int = 4000,
                      level: float = CI_LEVEL, seed: int = 0) -> TextAwareDiff:
    """mean over seeds of stat_b - stat_a for two conditions run with the same seeds and evaluated on the
    same text cut into `n_blocks` contiguous blocks.

    stat_x(weights) gives the condition's per-seed statistic: with weights None the point values
    [seeds]; with block weights [replicates, blocks] (how often each block is drawn) the values
    [seeds, replicates] on those resampled texts. Each replicate draws blocks with replacement (the same
    blocks for every seed and both sides: the text is shared) and seeds with replacement (the same seeds
    for both sides: paired), so the interval covers the seed-to-seed spread and which text was evaluated.
    The p-value is the two-sided bootstrap p of "no difference" (twice the smaller tail share at 0, at
    most 1). The generator is seeded: the same inputs give the same interval.
    """
    if n_seeds < 2 or n_blocks < 2:
        raise ValueError("a text-aware interval needs at least 2 seeds and 2 blocks")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_blocks, np.full(n_blocks, 1 / n_blocks), size=replicates).astype(float)
    diff = np.asarray(stat_b(weights), float) - np.asarray(stat_a(weights), float)  # [seeds, replicates]
    if diff.shape != (n_seeds, replicates):
        raise ValueError(f"a statistic must give [seeds, replicates] = {(n_seeds, replicates)}, got {diff.shape}")
    seeds = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    boot = diff[seeds, np.arange(replicates)[:, None]].mean(axis=1)
    point = float((np.asarray(stat_b(None), float) - np.asarray(stat_a(None), float)).mean())
    lo, hi = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    p = min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))
    return TextAwareDiff(point, float(lo), float(hi), float(p), n_seeds, n_blocks)


def text_aware_diff(ce_a: Sequence, ce_b: Sequence, tokens: Sequence[int], replicates: int = 4000,
                    level: float = CI_LEVEL, seed: int = 0) -> TextAwareDiff:
    """`text_aware_paired` for PPL: mean over seeds of PPL_b - PPL_a, from CE sums per seed and block
    ([seeds, blocks]) and the blocks' token counts."""
    a, b, n = np.asarray(ce_a, float), np.asarray(ce_b, float), np.asarray(tokens, float)
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] != n.size:
        raise ValueError(f"ce_a and ce_b must be [seeds, blocks] of one shape matching tokens, got "
                         f"{a.shape}, {b.shape} and {n.size} blocks")
    return text_aware_paired(lambda w: block_ppl(a, n, w), lambda w: block_ppl(b, n, w), a.shape[0], a.shape[1],
                             replicates, level, seed)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over the given tests, in their
    order): reject test i at level α when its adjusted p is below α."""
    p = np.asarray(pvalues, float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.any(~np.isfinite(p)):
        raise ValueError(f"p-values must be a list of numbers in [0, 1], got {list(pvalues)}")
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
