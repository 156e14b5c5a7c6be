"""Learn-then-Test calibration (ease.calibrate): the p-value's validity and the guarantee itself, on
synthetic risks with a known risk curve (no model, no timing)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ease.calibrate import block_risks, hoeffding_bentkus_p, learn_then_test, validity
from ease.exits import TokenStats


def test_hoeffding_bentkus_p_is_valid_and_monotone():
    # under the null at its boundary (true mean = epsilon), P(p <= delta) <= delta
    rng = np.random.default_rng(0)
    n, eps, delta = 200, 0.1, 0.1
    p = [hoeffding_bentkus_p(rng.binomial(1, eps, n).mean(), n, eps) for _ in range(4000)]
    assert np.mean(np.array(p) <= delta) <= delta
    assert hoeffding_bentkus_p(0.0, n, eps) < 1e-8 < hoeffding_bentkus_p(0.09, n, eps) < hoeffding_bentkus_p(0.2, n, eps)
    assert hoeffding_bentkus_p(0.5, n, eps) == 1.0
    with pytest.raises(ValueError):
        hoeffding_bentkus_p(0.1, 0, eps)


def true_risk(t):
    """The synthetic risk curve: 0 for thresholds above 0.8, rising linearly to 0.4 at threshold 0."""
    return np.clip((0.8 - np.asarray(t)) * 0.5, 0, None)


@pytest.mark.parametrize("epsilon, delta", [(0.05, 0.1), (0.1, 0.05)])
def test_the_guarantee_holds_over_many_calibration_draws(epsilon, delta):
    thresholds = np.round(np.linspace(0, 1, 41), 3)
    rng = np.random.default_rng(1)
    violations, chosen = 0, []
    draws = 500
    for _ in range(draws):
        risks = rng.binomial(1, true_risk(thresholds), size=(100, thresholds.size)).astype(float)
        cal = learn_then_test(risks, thresholds, epsilon, delta)
        t = 1.1 if cal.threshold is None else cal.threshold
        violations += true_risk(t) > epsilon
        chosen.append(t)
    assert violations / draws <= delta  # the promise
    # and it is not vacuous: it usually certifies a threshold that lets tokens exit
    assert np.median(chosen) < 0.8


def test_fixed_sequence_stops_at_the_first_failure_and_never_exits_when_nothing_is_certified():
    thresholds = [1.0, 0.9, 0.5]
    # the middle threshold fails, so the aggressive one (risk 0 here) is not reached
    risks = np.zeros((50, 3))
    risks[:, 1] = 1.0
    cal = learn_then_test(risks, thresholds, 0.1, 0.1)
    assert cal.threshold == 1.0 and cal.thresholds == [1.0, 0.9]
    cal = learn_then_test(np.ones((50, 3)), thresholds, 0.1, 0.1)
    assert cal.threshold is None
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        learn_then_test(np.full((5, 3), 2.0), thresholds, 0.1, 0.1)


def test_block_risks_by_hand():
    # 4 tokens in 2 blocks; confidences 0.9, 0.2 | 0.9, 0.9; the exit layer disagrees on tokens 1 and 4
    stats = TokenStats(torch.tensor([0.9, 0.2, 0.9, 0.9]), torch.tensor([1.0, 1.0, 1.0, 2.0]),
                       torch.tensor([1.0, 1.0, 1.0, 1.0]), 1, 3, torch.tensor([False, True, True, False]))
    assert block_risks(stats, [0.5, 1.1], 2, "inconsistency").tolist() == [[0.5, 0.0], [0.5, 0.0]]
    ppl = block_risks(stats, [0.5], 2, "ppl_increase")
    assert ppl[0, 0] == 0.0 and ppl[1, 0] == pytest.approx(math.exp(0.5) - 1)


def test_validity_on_a_model_like_score_distribution():
    # tokens whose exit-layer argmax disagrees with the last layer's are the less confident ones, as in a
    # real model: the risk curve falls with the threshold
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    conf = torch.rand(n, generator=gen)
    agree = torch.rand(n, generator=gen) < conf  # P(agree) = confidence
    stats = TokenStats(conf, torch.ones(n), torch.ones(n), 1, 3, agree)
    thresholds = [i / 20 for i in range(21)]
    v = validity(stats, thresholds, n_blocks=200, risk="inconsistency", epsilon=0.05, delta=0.1, splits=100)
    assert len(v.test_risk) == 100 and v.exceeded <= 0.1
    # true risk at threshold t: P(conf >= t and disagree) = (1 - t)^2 / 2 <= 0.05 from t = 0.684: hindsight 0.7
    assert v.oracle_threshold == pytest.approx(0.7)
    assert np.mean([t is not None and t < 0.65 for t in v.thresholds]) <= 0.1  # true risk above epsilon there
    assert 0 < np.mean(v.shallow) <= v.oracle_shallow  # the guarantee costs some early exits
