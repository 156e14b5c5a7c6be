"""Statistics helpers of the audit: intervals, paired differences, the verdict rule, the Pareto front."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ease.stats import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Stat, combine, diff_ci, holds_count, holm, mean_ci,
                        paired_ci, pareto_front, text_aware_diff, verdict)


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


# --- text-aware intervals and Holm ---------------------------------------------------------------

def test_holm_matches_the_step_down_rule_by_hand():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06, kept monotone), 0.5 (x1)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.4, 0.4]) == pytest.approx([0.8, 0.8])
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def _blocks(rng, seeds, blocks, shift):
    tokens = np.full(blocks, 1000)
    base = rng.normal(1.9, 0.05, size=(1, blocks)) * tokens  # text difficulty shared by every seed
    return tokens, base + rng.normal(0, 5, size=(seeds, blocks)), base + rng.normal(0, 5, size=(seeds, blocks)) + shift


def test_text_aware_diff_point_and_interval():
    rng = np.random.default_rng(1)
    tokens, a, b = _blocks(rng, 5, 40, shift=20.0)  # b is worse: +0.02 nats per token
    result = text_aware_diff(a, b, tokens)
    expected = (np.exp(b.sum(1) / tokens.sum()) - np.exp(a.sum(1) / tokens.sum())).mean()
    assert result.mean == pytest.approx(expected)
    assert 0 < result.lo < result.mean < result.hi and result.p < 0.01
    assert text_aware_diff(a, b, tokens) == result  # seeded: the same interval every time
    same = text_aware_diff(a, a + rng.normal(0, 5, size=a.shape), tokens)
    assert same.lo < 0 < same.hi and same.p > 0.05


def test_text_aware_interval_widens_with_the_texts_own_spread():
    # the same seed-level noise, but a difference that varies from block to block: only an interval
    # that resamples the text sees that spread
    rng = np.random.default_rng(2)
    tokens, a, _ = _blocks(rng, 5, 40, shift=0.0)
    steady = a + 20.0
    uneven = a + 20.0 + np.tile(rng.normal(0, 60, size=(1, 40)), (5, 1))
    assert text_aware_diff(a, uneven, tokens).hi - text_aware_diff(a, uneven, tokens).lo > \
        2 * (text_aware_diff(a, steady, tokens).hi - text_aware_diff(a, steady, tokens).lo)


def test_text_aware_diff_bad_shapes():
    with pytest.raises(ValueError, match="seeds, blocks"):
        text_aware_diff(np.ones((3, 4)), np.ones((3, 5)), np.ones(4))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        text_aware_diff(np.ones((1, 4)), np.ones((1, 4)), np.ones(4))
