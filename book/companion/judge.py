"""The book's one judge for "X is better / higher / lower than Y": a paired comparison over seeds.

Two conditions run with the same seeds on the same data are compared by their per-seed differences
(second minus first); the 95% Student-t interval of those differences decides, through
`ease.stats.verdict`, whether a claimed sign is reproduced, not reproduced or inconclusive.

    from companion import judge
    c = judge.compare(b7, a7, "ppl", -1)     # PPL(A) − PPL(B) per seed, claimed negative
    c.stat, c.verdict, c.holds                # interval, verdict code, seeds with the claimed sign
    judge.verdict_word(c.verdict, "en")       # the verdict as the book prints it (from labels)
    judge.lowest({0.3: [...], 0.7: [...]}, "ppl")  # the lowest mean, judged against every other condition
    judge.lowest({...}, "ppl", key=0.7)        # a claimed condition, judged against every other

Any chapter that orders two conditions uses `compare` (or `Comparison` on differences it pairs
itself), and shows `c.stat` (core.fmt_diff) beside the verdict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

from ease.stats import INCONCLUSIVE, Stat, combine, holds_count, mean_ci, verdict

from companion import core


@dataclass
class Comparison:
    """One paired comparison: per-seed differences (second minus first) and the claimed sign (−1 or +1)."""

    metric: str
    diffs: list[float]
    sign: int

    @property
    def stat(self) -> Stat:
        return mean_ci(self.diffs)

    @property
    def verdict(self) -> str:
        return verdict(self.stat, self.sign)

    @property
    def holds(self) -> int:
        return holds_count(self.diffs, self.sign)


def compare(first: Sequence[dict], second: Sequence[dict], metric: str, sign: int,
            threshold_first: float | None = None, threshold_second: float | None = None) -> Comparison:
    """second − first per seed (records in seed order, the same seeds on both sides), claimed to have `sign`.

    A threshold reads the metric from the run's sweep at that threshold instead of its operating point."""
    core.paired(first, second)
    diffs = [core.value(s, metric, threshold_second) - core.value(f, metric, threshold_first)
             for f, s in zip(first, second)]
    return Comparison(metric, diffs, sign)


@dataclass
class Lowest:
    """One condition (the lowest mean, or one a claim names) compared paired by seed with every other."""

    key: Hashable
    stat: Stat  # its own values over seeds
    against: dict[Hashable, Comparison]  # other condition -> value(key) − value(other) per seed, claimed < 0

    @property
    def verdict(self) -> str:
        """Reproduced only if it is lower than every other condition with an interval below zero."""
        return overall(list(self.against.values()))

    @property
    def case(self) -> str:
        """The verdict, or 'single' when one seed leaves no interval."""
        return "single" if self.stat.half is None else self.verdict

    @property
    def closest(self) -> Hashable:
        """The other condition it is least clearly lower than: the highest upper end of the interval."""
        return max(self.against, key=lambda k: self.against[k].stat.hi)


def lowest(per_seed: dict[Hashable, Sequence[float]], metric: str, key: Hashable | None = None) -> Lowest:
    """`key` against every other condition; without a key, the condition with the lowest mean of `metric`.
    Values in seed order, the same seeds for every condition."""
    sizes = {len(v) for v in per_seed.values()}
    if len(sizes) != 1:
        raise ValueError(f"paired comparison needs one value per seed for every condition, got sizes {sizes}")
    if key is None:
        key = min(per_seed, key=lambda k: sum(per_seed[k]) / len(per_seed[k]))
    mine = per_seed[key]
    return Lowest(key, mean_ci(mine), {k: Comparison(metric, [m - o for m, o in zip(mine, v)], -1)
                                       for k, v in per_seed.items() if k != key})


def overall(comparisons: Sequence[Comparison]) -> str:
    """A claim made of several comparisons: reproduced only if all are, not reproduced if any is."""
    return combine(c.verdict for c in comparisons)


def verdict_word(code: str, lang: str) -> str:
    """The verdict as a noun from labels (`verdict:`), bold when the interval decides."""
    word = core.labels(lang)["verdict"][code]
    return word if code == INCONCLUSIVE else f"**{word}**"


def fmt_diff(stat: Stat, metric: str, lang: str) -> str:
    """core.fmt_diff with the language's percentage-point unit (labels `judge.points`)."""
    return core.fmt_diff(stat, metric).replace(" pp", core.labels(lang)["judge"]["points"])
