"""Models with several exits: simulated routing (ease.exits), real exit with state propagation and its
cost (ease.decode), LayerSkip-style loss weights (ease.losses), on tiny random models."""
from __future__ import annotations

import math

import pytest
import torch

from ease.data import make_batches
from ease.decode import multi_exit_eval, multi_exit_forward, multi_exit_macs, real_exit_forward, token_macs
from ease.exits import MultiExitStats, collect_multi_exit_stats, route_multi
from ease.losses import layerskip_weights, weighted_loss
from ease.model import EarlyExitLM, ModelConfig

VOCAB, LAYERS = 17, 5
TOL = {"rtol": 1e-5, "atol": 1e-5}


def tiny_model(norm: str = "post", seed: int = 0) -> EarlyExitLM:
    torch.manual_seed(seed)
    model = EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=LAYERS, dim=32, n_heads=4, norm=norm)).eval()
    with torch.no_grad():
        model.head.weight.mul_(8)  # confidences spread over (0, 1)
    return model


def ids(seed: int = 1, shape=(3, 20)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("exits", [(1,), (1, 2), (2, 4), (1, 3, 4)])
@pytest.mark.parametrize("threshold", [1.5, None, [2.0, 7.0, 1.01, 3.0]])
def test_thresholds_above_one_give_the_full_model(norm, exits, threshold):
    model, x = tiny_model(norm), ids()
    thresholds = threshold[:len(exits)] if isinstance(threshold, list) else threshold
    out = multi_exit_forward(model, x, exits, thresholds)
    assert not out["exits"].any() and (out["layers"] == LAYERS).all()
    torch.testing.assert_close(out["logits"], model(x)[LAYERS], **TOL)


@pytest.mark.parametrize("exits", [(1, 3), (2, 4)])
def test_threshold_zero_never_calls_the_deeper_layers(exits):
    model, x = tiny_model(), ids()
    calls = [0] * LAYERS
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    out = multi_exit_forward(model, x, exits, 0.0)
    assert calls == [1] * exits[0] + [0] * (LAYERS - exits[0])  # the blocks above the first exit never run
    assert out["exits"].all() and (out["layers"] == exits[0]).all()
    torch.testing.assert_close(out["logits"], model(x, layers=[exits[0]])[exits[0]], **TOL)


def test_per_exit_thresholds_pick_the_exit():
    model, x = tiny_model(), ids()
    out = multi_exit_forward(model, x, (1, 3), [2.0, 0.0])  # the first never fires, the second always
    assert (out["layers"] == 3).all()
    torch.testing.assert_close(out["logits"], model(x, layers=[3])[3], **TOL)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("exit_layer", [1, 2])
def test_one_exit_is_the_single_exit_real_exit(norm, exit_layer):
    # the same propagation of exited states as ease.decode.real_exit_forward, computed another way
    model, x = tiny_model(norm), ids(2)
    conf = torch.softmax(model(x, layers=[exit_layer])[exit_layer], dim=-1).amax(dim=-1)
    threshold = conf.median().item()
    multi = multi_exit_forward(model, x, (exit_layer,), threshold)
    single = real_exit_forward(model, x, threshold, exit_layer)
    assert 0 < multi["exits"].sum() < multi["exits"].numel()
    assert torch.equal(multi["exits"], single["exits"])
    torch.testing.assert_close(multi["logits"], single["logits"], **TOL)


def test_real_exit_decides_the_first_exit_as_the_simulated_one_and_costs_what_it_says():
    model = tiny_model()
    inputs, targets = make_batches(ids(3, (1, 4 * 4 * 20 + 1)).reshape(-1), 20, 4)
    exits = (1, 3)
    stats = collect_multi_exit_stats(model, inputs, targets, exits)
    thresholds = [stats.confidence[0].median().item(), stats.confidence[1].quantile(0.3).item()]
    simulated = route_multi(stats, thresholds)
    real = multi_exit_eval(model, inputs, targets, exits, thresholds)
    # the first exit sees the same states either way; later ones see propagated states in real exit
    assert real["shares"][1] == pytest.approx(simulated["shares"][1], abs=1e-12)
    assert sum(real["shares"].values()) == pytest.approx(1.0)
    assert real["compute_frac"] == pytest.approx(sum(s * layer / LAYERS for layer, s in real["shares"].items()))
    macs = multi_exit_macs(model.cfg, exits)
    assert real["flop_compute_frac"] == pytest.approx(sum(s * macs[layer] for layer, s in real["shares"].items())
                                                      / macs["full"])
    assert math.isfinite(real["ppl"]) and real["ppl"] > 1


def test_route_multi_by_hand():
    # 4 tokens, exits at layers 1 and 2 of 4: token 0 leaves at layer 1, tokens 1 and 2 at layer 2, token 3 goes deep
    stats = MultiExitStats((1, 2), 4, confidence=torch.tensor([[0.9, 0.2, 0.5, 0.1], [0.9, 0.8, 0.6, 0.3]]),
                           ce=torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 0.5, 1.5, 6.0], [7.0, 8.0, 9.0, 0.25]]))
    r = route_multi(stats, [0.7, 0.55])
    assert r["shares"] == {1: 0.25, 2: 0.5, 4: 0.25}
    assert r["ppl"] == pytest.approx(math.exp((1.0 + 0.5 + 1.5 + 0.25) / 4))
    assert r["compute_frac"] == pytest.approx(0.25 * 1 / 4 + 0.5 * 2 / 4 + 0.25)
    assert route_multi(stats, 2.0)["shares"] == {1: 0.0, 2: 0.0, 4: 1.0}
    with pytest.raises(ValueError, match="one per exit"):
        route_multi(stats, [0.5])


def test_multi_exit_macs_with_one_exit_are_token_macs():
    cfg = tiny_model().cfg
    for e in (1, 2, 4):
        one, m = multi_exit_macs(cfg, (e,)), token_macs(cfg, e)
        assert one[e] == m["exit"] and one[LAYERS] == m["deep"] and one["full"] == m["full"]
    two = multi_exit_macs(cfg, (1, 3))
    assert two[1] < two[3] < two[LAYERS]  # leaving later costs more; going deep pays every head
    with pytest.raises(ValueError, match="exits"):
        multi_exit_macs(cfg, (3, 1))


def test_layerskip_weights_rise_with_depth():
    w = layerskip_weights(4, (1, 2, 3))
    assert w == pytest.approx({1: 0.0, 2: 1 / 7, 3: 3 / 7, 4: 3 / 7})
    assert sum(layerskip_weights(12, (3, 6, 9), e_scale=0.5).values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="exits"):
        layerskip_weights(4, (4,))


def test_a_multi_exit_model_trains_every_exit():
    torch.manual_seed(0)
    model = EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=4, dim=32, n_heads=4))
    weights = layerskip_weights(4, (2, 3))
    x = (torch.arange(8 * 21) % 7).reshape(8, 21)
    inputs, targets = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def per_layer():
        with torch.no_grad():
            out = model(inputs, layers=[2, 3, 4])
        return {k: torch.nn.functional.cross_entropy(v.reshape(-1, VOCAB), targets.reshape(-1)).item()
                for k, v in out.items()}
    before = per_layer()
    for _ in range(40):
        opt.zero_grad()
        weighted_loss(model(inputs, layers=[2, 3, 4]), targets, weights).backward()
        opt.step()
    after = per_layer()
    assert all(after[k] < 0.5 * before[k] for k in before)  # every weighted exit learned the pattern
