"""Statistics helpers of the audit: intervals, paired differences, the verdict rule, the Pareto front."""
from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from ease.stats import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Stat, combine, diff_ci, holds_count, mean_ci,
                        paired_ci, pareto_front, verdict)


def test_mean_ci_of_a_known_sample():
    # 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sample sd sqrt(32/7); t(0.975, 7) = 2.3646
    values = [2, 4, 4, 4, 5, 5, 7, 9]
    stat = mean_ci(values)
    assert stat.mean == 5.0 and stat.n == 8
    assert stat.half == pytest.approx(2.3646243 * math.sqrt(32 / 7) / math.sqrt(8), rel=1e-6)
    lo, hi = sps.t.interval(0.95, 7, loc=5.0, scale=sps.sem(values))  # scipy's own interval agrees
    assert (stat.lo, stat.hi) == pytest.approx((lo, hi))


def test_mean_ci_single_value_and_bad_input():
    assert mean_ci([3.0]) == Stat(3.0, None, 1)
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([1.0, float("inf")])


def test_paired_ci_is_the_interval_of_the_differences():
    a = [10.0, 12.0, 11.0, 13.0]
    b = [9.0, 11.5, 9.8, 12.1]  # b is lower in every pair, by 1.0, 0.5, 1.2, 0.9
    stat = paired_ci(a, b)
    assert stat.mean == pytest.approx(-0.9)
    res = sps.ttest_rel(b, a)
    lo, hi = res.confidence_interval(0.95)
    assert (stat.lo, stat.hi) == pytest.approx((lo, hi))
    # unpaired, the same numbers are far less certain: the spread between seeds dominates
    assert diff_ci(a, b).half > 3 * stat.half


def test_paired_ci_needs_equal_lengths():
    with pytest.raises(ValueError, match="one value per seed"):
        paired_ci([1.0, 2.0], [1.0])


@pytest.mark.parametrize("stat, sign, expected", [
    (Stat(-1.0, 0.5, 5), -1, REPRODUCED),      # [-1.5, -0.5]: all below 0, claimed below
    (Stat(-1.0, 0.5, 5), +1, NOT_REPRODUCED),  # claimed above, all below
    (Stat(-0.2, 0.5, 5), -1, INCONCLUSIVE),    # contains 0
    (Stat(2.0, 1.0, 5), +1, REPRODUCED),
    (Stat(2.0, None, 1), +1, INCONCLUSIVE),    # one seed decides nothing
    (Stat(0.0, 0.0, 5), +1, INCONCLUSIVE),     # no difference at all
])
def test_verdict_rule(stat, sign, expected):
    assert verdict(stat, sign) == expected


def test_verdict_rejects_a_bad_sign():
    with pytest.raises(ValueError, match="claimed_sign"):
        verdict(Stat(1.0, 0.1, 3), 0)


def test_combine_and_holds_count():
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE]) == NOT_REPRODUCED
    with pytest.raises(ValueError):
        combine([])
    assert holds_count([-1.0, 0.5, -0.1, 0.0], -1) == 2  # zero does not hold a strict claim


def test_pareto_front_on_hand_made_points():
    compute = [0.33, 0.50, 0.60, 0.70, 1.00, 0.50, 0.45]
    ppl = [9.0, 7.5, 8.0, 6.9, 6.8, 7.5, 10.0]
    # (0.60, 8.0) is beaten by (0.50, 7.5); (0.45, 10.0) by (0.33, 9.0); the second (0.50, 7.5) is a tie
    assert pareto_front(compute, ppl) == [0, 1, 3, 4]


def test_pareto_front_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        pareto_front([0.5, float("nan")], [1.0, 2.0])
