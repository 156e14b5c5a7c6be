"""Confidence routing and its metrics, on hand-built token stats and on a tiny model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ease.config import FINE_THRESHOLDS
from ease.data import make_batches
from ease.exits import (TokenStats, block_bounds, block_sums, collect_token_stats, layer_losses, matched_exits,
                        matched_ppl, per_block, route, summary, sweep)
from ease.model import EarlyExitLM, ModelConfig

VOCAB = 11


def hand_stats(exit_layer=1, n_layers=3):
    # confidences are exact binary fractions, so ">= threshold" has no rounding doubt
    return TokenStats(confidence=torch.tensor([0.75, 0.5, 0.875, 0.25]),
                      ce_exit=torch.tensor([0.1, 2.0, 0.2, 3.0]),
                      ce_last=torch.tensor([0.5, 1.0, 0.4, 1.5]),
                      exit_layer=exit_layer, n_layers=n_layers)


@pytest.mark.parametrize("threshold, routed_ce, shallow", [
    (0.75, [0.1, 1.0, 0.2, 1.5], 0.5),    # 0.75 and 0.875 exit (">=": the boundary exits)
    (0.8, [0.5, 1.0, 0.2, 1.5], 0.25),    # only 0.875 exits
    (0.5, [0.1, 2.0, 0.2, 1.5], 0.75),
    (0.0, [0.1, 2.0, 0.2, 3.0], 1.0),     # every token exits
    (1.01, [0.5, 1.0, 0.4, 1.5], 0.0),    # none exits
])
def test_route_on_hand_built_stats(threshold, routed_ce, shallow):
    m = route(hand_stats(), threshold)
    assert m["threshold"] == threshold
    assert m["ppl"] == pytest.approx(math.exp(sum(routed_ce) / 4), rel=1e-6)
    assert m["shallow_frac"] == shallow
    # an exited token costs 1 of 3 layers, a deep one all 3
    assert m["compute_frac"] == pytest.approx((shallow * 4 * 1 + (1 - shallow) * 4 * 3) / (4 * 3))


def test_compute_frac_with_four_layers_exit_at_two():
    m = route(hand_stats(exit_layer=2, n_layers=4), 0.75)
    # two tokens stop after 2 of 4 layers, two run all 4: (2*2 + 2*4) / (4*4)
    assert m["compute_frac"] == pytest.approx(12 / 16)
    assert m["compute_frac"] == pytest.approx(m["shallow_frac"] * 2 / 4 + (1 - m["shallow_frac"]))


def test_summary_on_hand_built_stats():
    s = summary(hand_stats(), 0.8)
    assert "threshold" not in s
    assert s["ppl_shallow"] == pytest.approx(math.exp(5.3 / 4), rel=1e-6)
    assert s["ppl_deep"] == pytest.approx(math.exp(3.4 / 4), rel=1e-6)
    assert s["ppl"] == pytest.approx(math.exp(3.2 / 4), rel=1e-6)
    assert s["shallow_frac"] == 0.25


def test_sweep_on_hand_built_stats_keeps_the_order_given():
    rows = sweep(hand_stats(), [0.9, 0.0, 0.75])
    assert [r["threshold"] for r in rows] == [0.9, 0.0, 0.75]
    assert [r["shallow_frac"] for r in rows] == [0.0, 1.0, 0.5]


# --- on a tiny model ------------------------------------------------------------------------

def tiny_model(n_layers=3, seed=0):
    torch.manual_seed(seed)
    return EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=n_layers, dim=16, n_heads=2, max_seq_len=16))


@pytest.fixture(scope="module")
def batches():
    # a learnable-looking id sequence with some noise: 3 batches of 4 windows of 16
    gen = torch.Generator().manual_seed(0)
    ids = (torch.arange(3 * 4 * 16 + 1) * 3 + torch.randint(2, (3 * 4 * 16 + 1,), generator=gen)) % VOCAB
    return make_batches(ids, seq_len=16, batch_size=4)


def direct_stats(model, inputs, targets, exit_layer):
    """Per-token confidence and CEs computed plainly, batch by batch."""
    conf, ce_exit, ce_last = [], [], []
    model.eval()
    with torch.no_grad():
        for x, y in zip(inputs, targets):
            out = model(x, layers=list(range(1, model.cfg.n_layers + 1)))
            shallow = out[exit_layer].reshape(-1, VOCAB)
            deep = out[model.cfg.n_layers].reshape(-1, VOCAB)
            conf.append(torch.softmax(shallow, dim=-1).max(dim=-1).values)
            ce_exit.append(F.cross_entropy(shallow, y.reshape(-1), reduction="none"))
            ce_last.append(F.cross_entropy(deep, y.reshape(-1), reduction="none"))
    return torch.cat(conf), torch.cat(ce_exit), torch.cat(ce_last)


@pytest.mark.parametrize("n_layers, exit_layer", [(3, 1), (3, 2), (4, 2)])
def test_collect_token_stats_matches_direct_computation(batches, n_layers, exit_layer):
    model = tiny_model(n_layers)
    stats = collect_token_stats(model, *batches, exit_layer=exit_layer)
    conf, ce_exit, ce_last = direct_stats(model, *batches, exit_layer)
    assert len(stats) == 3 * 4 * 16
    assert (stats.exit_layer, stats.n_layers) == (exit_layer, n_layers)
    assert torch.allclose(stats.confidence, conf, atol=1e-6)
    assert torch.allclose(stats.ce_exit, ce_exit, atol=1e-5)
    assert torch.allclose(stats.ce_last, ce_last, atol=1e-5)


def test_collect_token_stats_restores_training_mode(batches):
    model = tiny_model().train()
    collect_token_stats(model, *batches)
    assert model.training
    collect_token_stats(model.eval(), *batches)
    assert not model.training


@pytest.mark.parametrize("exit_layer", [0, 4])
def test_collect_token_stats_bad_exit_layer(batches, exit_layer):
    with pytest.raises(ValueError, match=f"exit_layer must be within 1..3, got {exit_layer}"):
        collect_token_stats(tiny_model(), *batches, exit_layer=exit_layer)


def test_summary_ppls_equal_cross_entropy_of_the_model(batches):
    model = tiny_model()
    s = summary(collect_token_stats(model, *batches), 0.5)
    inputs, targets = batches
    with torch.no_grad():
        out = [model(x, layers=[1, 3]) for x in inputs]
    flat_y = targets.reshape(-1)
    shallow = torch.cat([o[1].reshape(-1, VOCAB) for o in out])
    deep = torch.cat([o[3].reshape(-1, VOCAB) for o in out])
    assert s["ppl_shallow"] == pytest.approx(math.exp(F.cross_entropy(shallow, flat_y).item()), rel=1e-5)
    assert s["ppl_deep"] == pytest.approx(math.exp(F.cross_entropy(deep, flat_y).item()), rel=1e-5)


def test_routed_ppl_equals_cross_entropy_of_routed_predictions(batches):
    model = tiny_model()
    inputs, targets = batches
    conf, _, _ = direct_stats(model, inputs, targets, 1)
    threshold = conf.median().item()  # about half the tokens exit
    with torch.no_grad():
        out = [model(x, layers=[1, 3]) for x in inputs]
    shallow = torch.cat([o[1].reshape(-1, VOCAB) for o in out])
    deep = torch.cat([o[3].reshape(-1, VOCAB) for o in out])
    exits = torch.softmax(shallow, dim=-1).max(dim=-1).values >= threshold
    routed = torch.where(exits[:, None], shallow, deep)  # the logits each token is answered with
    expected_ppl = math.exp(F.cross_entropy(routed, targets.reshape(-1)).item())
    m = route(collect_token_stats(model, inputs, targets), threshold)
    assert 0 < m["shallow_frac"] < 1
    assert m["shallow_frac"] == pytest.approx(exits.double().mean().item())
    assert m["ppl"] == pytest.approx(expected_ppl, rel=1e-5)


@pytest.mark.parametrize("n_layers, exit_layer", [(3, 1), (4, 2)])
def test_sweep_equals_routing_each_threshold_separately(batches, n_layers, exit_layer):
    model = tiny_model(n_layers)
    thresholds = list(FINE_THRESHOLDS) + [1.5]
    rows = sweep(collect_token_stats(model, *batches, exit_layer=exit_layer), thresholds)
    assert [r["threshold"] for r in rows] == thresholds
    for row, t in zip(rows, thresholds):
        fresh = route(collect_token_stats(model, *batches, exit_layer=exit_layer), t)
        assert row == fresh
        assert row["compute_frac"] == pytest.approx(row["shallow_frac"] * exit_layer / n_layers
                                                    + (1 - row["shallow_frac"]))


def test_threshold_extremes_on_a_model(batches):
    model = tiny_model()
    stats = collect_token_stats(model, *batches)
    everyone = route(stats, 0.0)
    nobody = route(stats, 1.0001)
    s = summary(stats, 0.0)
    assert everyone["shallow_frac"] == 1.0 and everyone["compute_frac"] == pytest.approx(1 / 3)
    assert everyone["ppl"] == pytest.approx(s["ppl_shallow"])
    assert nobody["shallow_frac"] == 0.0 and nobody["compute_frac"] == 1.0
    assert nobody["ppl"] == pytest.approx(s["ppl_deep"])


def test_shallow_fraction_never_grows_with_the_threshold(batches):
    rows = sweep(collect_token_stats(tiny_model(seed=3), *batches), FINE_THRESHOLDS)
    fracs = [r["shallow_frac"] for r in rows]
    assert fracs == sorted(fracs, reverse=True)
    assert fracs[0] == 1.0


# --- other confidence measures and the oracle -----------------------------------------------------
def test_measure_scores_on_hand_built_logits():
    from ease.exits import measure_scores

    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])
    states = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    s = measure_scores(probs.log(), *states)
    assert s["max_prob"].tolist() == pytest.approx([0.7, 0.4])
    assert s["margin"].tolist() == pytest.approx([0.5, 0.0])
    entropy = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
               -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2))]
    assert s["entropy"].tolist() == pytest.approx([-e for e in entropy], rel=1e-5)
    assert s["cosine"].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)  # orthogonal, then parallel


def test_matched_ppl_exits_the_highest_scores_first():
    from ease.exits import matched_ppl

    scores = torch.tensor([0.9, 0.1, 0.5, 0.7])
    ce_exit = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ce_last = torch.tensor([0.5, 0.5, 0.5, 0.5])
    got = matched_ppl(scores, ce_exit, ce_last, [0.0, 0.25, 0.5, 1.0])
    # 25%: token 0 exits; 50%: tokens 0 and 3; 100%: all
    expected = [math.exp(0.5), math.exp((1.0 + 1.5) / 4), math.exp((1.0 + 4.0 + 1.0) / 4), math.exp(10.0 / 4)]
    assert got == pytest.approx(expected)


def test_oracle_is_the_best_any_rule_can_do():
    from ease.exits import matched_ppl, oracle_ppl

    ce_exit = torch.tensor([0.2, 3.0, 1.0, 0.6])
    ce_last = torch.tensor([0.5, 0.5, 0.5, 0.5])
    # at one exit the best token is 0 (it gains 0.3), at two tokens 0 and 3 (+0.3, -0.1)
    oracle = oracle_ppl(ce_exit, ce_last, [0.25, 0.5])
    assert oracle == pytest.approx([math.exp(1.7 / 4), math.exp((0.2 + 0.6 + 1.0) / 4)])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # no ranking of the tokens does better at any fraction
        scores = torch.rand(4, generator=generator)
        other = matched_ppl(scores, ce_exit, ce_last, [0.25, 0.5])
        assert all(o <= x + 1e-12 for o, x in zip(oracle, other))


def test_matched_ppl_bad_input():
    from ease.exits import matched_ppl

    with pytest.raises(ValueError, match="same length"):
        matched_ppl(torch.ones(3), torch.ones(2), torch.ones(3), [0.5])
    with pytest.raises(ValueError, match="within"):
        matched_ppl(torch.ones(2), torch.ones(2), torch.ones(2), [1.5])


def test_collect_exit_measures_agrees_with_collect_token_stats():
    from ease.exits import collect_exit_measures

    torch.manual_seed(0)
    model = EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=3, dim=16, n_heads=2, max_seq_len=8))
    ids = torch.randint(0, VOCAB, (200,))
    x, y = make_batches(ids, 8, 4)
    m = collect_exit_measures(model, x, y, exit_layer=1)
    s = collect_token_stats(model, x, y, exit_layer=1)
    assert torch.allclose(m.scores["max_prob"], s.confidence, atol=1e-6)
    assert torch.allclose(m.ce_exit, s.ce_exit, atol=1e-5) and torch.allclose(m.ce_last, s.ce_last, atol=1e-5)
    # the agreement is that of the two heads' argmaxes, recomputed here from the model's own logits
    logits = model(x.reshape(-1, 8), layers=[1, 3])
    agree = (logits[1].argmax(-1) == logits[3].argmax(-1)).reshape(-1)
    assert torch.equal(m.agree, agree)
    with pytest.raises(ValueError, match="below the last layer"):
        collect_exit_measures(model, x, y, exit_layer=3)


# --- held-out text: block sums and per-layer losses ------------------------------------------------

def test_block_sums_add_up_to_the_routed_totals(batches):
    stats = collect_token_stats(tiny_model(), *batches, exit_layer=1)
    thresholds = (0.0, 0.1, 0.2, 1.1)
    sums = block_sums(stats, thresholds, n_blocks=5)
    n = len(stats)
    assert sum(sums["tokens"]) == n and len(sums["tokens"]) == 5 and min(sums["tokens"]) >= n // 5
    assert math.exp(sum(sums["ce_last"]) / n) == pytest.approx(summary(stats, 0.5)["ppl_deep"], rel=1e-12)
    for t, exits, ce in zip(thresholds, sums["sweep_exits"], sums["sweep_ce"]):
        routed = route(stats, t)
        assert sum(exits) / n == routed["shallow_frac"]
        assert math.exp(sum(ce) / n) == pytest.approx(routed["ppl"], rel=1e-12)
    assert sum(sums["consistency_exits"]) == int(stats.agree.sum())
    better = torch.minimum(stats.ce_exit, stats.ce_last).double().sum().item()
    assert sum(sums["ce_label_oracle"]) == pytest.approx(better, rel=1e-12)


def test_block_sums_keep_token_order():
    # each block holds a contiguous stretch: the CE sums of 4 blocks of 2 tokens follow the tokens
    ce = torch.arange(8, dtype=torch.float32)
    stats = TokenStats(torch.zeros(8), ce, ce, 1, 3, torch.zeros(8, dtype=torch.bool))
    assert block_sums(stats, [0.5], 4)["ce_exit"] == [1.0, 5.0, 9.0, 13.0]
    with pytest.raises(ValueError, match="n_blocks"):
        block_sums(stats, [0.5], 9)


def test_agree_is_whether_the_two_layers_predict_the_same_token(batches):
    model = tiny_model()
    stats = collect_token_stats(model, *batches, exit_layer=1)
    with torch.no_grad():
        out = [model.eval()(x, layers=[1, 3]) for x in batches[0]]
    expected = torch.cat([(o[1].argmax(-1) == o[3].argmax(-1)).reshape(-1) for o in out])
    assert torch.equal(stats.agree, expected)


def test_layer_losses_are_each_layers_mean_cross_entropy(batches):
    model = tiny_model()
    _, ce_exit, ce_last = direct_stats(model, *batches, exit_layer=2)
    losses = layer_losses(model, *batches, layers=[3, 2])
    assert losses[2] == pytest.approx(ce_exit.double().mean().item(), rel=1e-6)
    assert losses[3] == pytest.approx(ce_last.double().mean().item(), rel=1e-6)


def test_matched_exits_are_the_top_scores_and_give_matched_ppl(batches):
    stats = collect_token_stats(tiny_model(), *batches, exit_layer=1)
    n = len(stats)
    for f in (0.0, 0.25, 0.5, 1.0):
        exits = matched_exits(stats.confidence, f)
        assert int(exits.sum()) == round(f * n)
        if 0 < exits.sum() < n:  # every exited token is at least as confident as every deep one
            assert stats.confidence[exits].min() >= stats.confidence[~exits].max()
        routed = torch.where(exits, stats.ce_exit, stats.ce_last).double().mean().item()
        assert math.exp(routed) == pytest.approx(
            matched_ppl(stats.confidence, stats.ce_exit, stats.ce_last, [f])[0], rel=1e-12)
    ties = matched_exits(torch.tensor([0.5, 0.9, 0.5, 0.5]), 0.5)  # ties keep token order
    assert ties.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="within"):
        matched_exits(stats.confidence, 1.5)


def test_per_block_sums_follow_the_bounds():
    bounds = block_bounds(10, 3)
    assert bounds[0] == 0 and bounds[-1] == 10 and len(bounds) == 4
    assert per_block(torch.arange(10.0), bounds) == [float(sum(range(a, b))) for a, b in zip(bounds, bounds[1:])]
    with pytest.raises(ValueError, match="n_blocks"):
        block_bounds(3, 4)
