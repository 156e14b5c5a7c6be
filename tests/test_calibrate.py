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


# --- the one-call entry on a model: every usable measure, several exits ---------------------------------
def _model_and_text():
    from ease.model import EarlyExitLM, ModelConfig

    torch.manual_seed(0)
    model = EarlyExitLM(ModelConfig(vocab_size=11, n_layers=4, dim=32, n_heads=4, max_seq_len=16)).eval()
    with torch.no_grad():
        model.head.weight.mul_(6)
    ids = torch.randint(0, 11, (8 * 16 * 12 + 1,), generator=torch.Generator().manual_seed(3))
    return model, ids


@pytest.mark.parametrize("measure", ["max_prob", "entropy", "margin"])
def test_calibrate_certifies_by_the_chosen_measure(measure):
    from ease.calibrate import calibrate, measure_thresholds

    model, ids = _model_and_text()
    kwargs = dict(measure=measure, seq_len=16, batch_size=8, block_tokens=64, delta=0.2)
    loose = calibrate(model, ids, epsilon=0.99, **kwargs)  # everything passes: the lowest threshold
    assert loose.threshold == min(measure_thresholds(measure, 11)) and loose.n_blocks == 24
    # 24 blocks cannot certify a risk of 1e-3 even where nothing exits ((1 - 1e-3)^24 > delta): never exit
    assert calibrate(model, ids, epsilon=1e-3, **kwargs).threshold is None
    middle = calibrate(model, ids, epsilon=0.3, **kwargs)
    assert middle.threshold is not None and middle.threshold > loose.threshold
    chosen = middle.thresholds.index(middle.threshold)
    assert middle.empirical_risk[chosen] < 0.3 and middle.p_values[chosen] <= 0.2
    with pytest.raises(ValueError, match="cosine"):
        calibrate(model, ids, measure="cosine", **{k: v for k, v in kwargs.items() if k != "measure"})


def test_several_exits_share_one_threshold():
    from ease.calibrate import calibrate, multi_block_risks
    from ease.data import make_batches
    from ease.exits import MultiExitStats, collect_multi_exit_stats, route_multi

    model, ids = _model_and_text()
    x, y = make_batches(ids, 16, 8)
    stats = collect_multi_exit_stats(model, x, y, (1, 2))
    thresholds = [0.0, 0.5, 1.01]
    risks = multi_block_risks(stats, thresholds, 4, "inconsistency")
    # nobody exits above 1: no risk; everyone exits at 0, at the first exit: layer 1's disagreement rate
    assert np.all(risks[:, 2] == 0)
    assert risks[:, 0].mean() == pytest.approx((~stats.agree[0]).double().mean().item(), rel=1e-9)
    # by hand: token 0 leaves at layer 1 (CE 1.2, disagreeing), token 1 at layer 2 (CE 1.1, disagreeing)
    hand = MultiExitStats((1, 2), 4, confidence=torch.tensor([[0.9, 0.1], [0.2, 0.9]]),
                          ce=torch.tensor([[1.2, 1.0], [1.0, 1.1], [1.0, 1.0]]),
                          agree=torch.tensor([[False, True], [True, False]]))
    assert multi_block_risks(hand, [0.5], 1, "inconsistency")[0, 0] == 1.0
    assert multi_block_risks(hand, [0.5], 1, "ppl_increase")[0, 0] == pytest.approx(math.expm1(0.15), rel=1e-6)
    assert route_multi(hand, 0.5)["ppl"] == pytest.approx(math.exp(1.15), rel=1e-6)
    chosen = calibrate(model, ids, exits=(1, 2), epsilon=0.99, seq_len=16, batch_size=8, block_tokens=64)
    assert chosen.threshold == 0.0
    with pytest.raises(ValueError, match="max probability"):
        calibrate(model, ids, exits=(1, 2), measure="entropy", seq_len=16, batch_size=8)
