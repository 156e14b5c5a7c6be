"""Training recipes for early exit (issue 14): layer dropout, self-distillation, exit-weight warm-up and
training with state propagation, at the level of the model and the loss (ease.model, ease.losses)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ease.config import RunConfig
from ease.losses import recipe_loss, weighted_loss
from ease.model import EarlyExitLM, ModelConfig

VOCAB = 13


def tiny_model(norm: str = "post") -> EarlyExitLM:
    torch.manual_seed(0)
    model = EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=4, dim=32, n_heads=4, norm=norm))
    with torch.no_grad():
        model.head.weight.mul_(8)
    return model


def ids(shape=(3, 12)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_a_skipped_block_passes_its_rows_input_through(norm):
    model, x = tiny_model(norm), ids()
    plain = model.hidden_states(x, layers=[1, 2, 3, 4])
    skip = torch.zeros(3, 4, dtype=torch.bool)
    skip[1, 1] = True  # row 1 skips block 2
    dropped = model.hidden_states(x, layers=[1, 2, 3, 4], skip=skip)
    torch.testing.assert_close(dropped[2][1], dropped[1][1])  # row 1: layer 2 is layer 1's state
    torch.testing.assert_close(dropped[4][0], plain[4][0])  # other rows untouched
    assert not torch.allclose(dropped[4][1], plain[4][1])
    torch.testing.assert_close(model.hidden_states(x, layers=[4], skip=torch.zeros(3, 4, dtype=torch.bool))[4],
                               plain[4])


def test_propagation_keeps_confident_tokens_exit_state():
    model, x = tiny_model(), ids()
    plain = model.hidden_states(x, layers=[1, 4])
    everyone = model.hidden_states(x, layers=[1, 4], propagate=(1, 0.0))
    torch.testing.assert_close(everyone[4], everyone[1])  # every token keeps layer 1's state
    torch.testing.assert_close(model.hidden_states(x, layers=[4], propagate=(1, 1.5))[4], plain[4])  # nobody
    confidence = F.softmax(model.head(plain[1]), dim=-1).amax(-1)
    threshold = confidence.median().item()
    some = model.hidden_states(x, layers=[1, 4], propagate=(1, threshold))
    kept = confidence >= threshold
    torch.testing.assert_close(some[4][kept], some[1][kept])
    assert not torch.allclose(some[4][~kept], some[1][~kept])


def test_propagated_training_matches_real_exit():
    # the state a training pass with propagation gives is what real exit computes (ease.decode)
    from ease.decode import real_exit_forward

    model, x = tiny_model().eval(), ids()
    confidence = F.softmax(model(x, layers=[1])[1], dim=-1).amax(-1)
    threshold = confidence.median().item()
    trained_view = model(x, layers=[4], propagate=(1, threshold))[4]
    real = real_exit_forward(model, x, threshold, 1)
    deep = ~real["exits"]
    torch.testing.assert_close(trained_view[deep], real["logits"][deep], rtol=1e-5, atol=1e-5)


def test_recipe_loss_is_the_weighted_loss_plus_the_recipes():
    model, x = tiny_model(), ids()
    y = torch.roll(x, -1, dims=1)
    weights = {1: 0.5, 2: 0.25, 4: 0.25}
    logits = model(x, layers=[1, 2, 4])
    one = torch.tensor(1.0)
    torch.testing.assert_close(recipe_loss(logits, y, weights, one), weighted_loss(logits, y, weights))
    # warm-up at 0: only the last layer's loss is left
    torch.testing.assert_close(recipe_loss(logits, y, weights, torch.tensor(0.0)),
                               0.25 * F.cross_entropy(logits[4].reshape(-1, VOCAB), y.reshape(-1)))
    # distillation: KL(last || layer) per token, averaged, for each lower layer with a weight
    p_last = F.softmax(logits[4].reshape(-1, VOCAB), dim=-1)

    def kl(layer):
        log_q = F.log_softmax(logits[layer].reshape(-1, VOCAB), dim=-1)
        return (p_last * (p_last.log() - log_q)).sum(-1).mean()
    expected = weighted_loss(logits, y, weights) + 0.3 * (kl(1) + kl(2))
    torch.testing.assert_close(recipe_loss(logits, y, weights, one, distill=0.3), expected)


def test_the_teacher_gets_no_gradient_from_distillation():
    model, x = tiny_model(), ids()
    logits = model(x, layers=[1, 4])
    last = logits[4].detach().requires_grad_(True)
    loss = recipe_loss({1: logits[1], 4: last}, torch.roll(x, -1, 1), {1: 1.0, 4: 1.0}, torch.tensor(1.0),
                       distill=1.0)
    loss.backward()
    ce_only = torch.autograd.grad(F.cross_entropy(last.reshape(-1, VOCAB), torch.roll(x, -1, 1).reshape(-1)), last)[0]
    torch.testing.assert_close(last.grad, ce_only)  # the last layer learns from its own CE only


@pytest.mark.parametrize("field, value, message", [
    ("layer_dropout", 1.0, "layer_dropout must be a probability"), ("distill", -0.1, "distill must be"),
    ("exit_warmup", -1, "exit_warmup must be"), ("train_propagation", 1, "train_propagation must be"),
])
def test_recipe_knobs_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{field: value})


def test_recipes_off_keep_every_run_id():
    assert RunConfig().run_id == RunConfig(layer_dropout=0.0, distill=0.0, exit_warmup=0,
                                           train_propagation=False).run_id
    ids_ = {RunConfig(**{k: v}).run_id for k, v in (("layer_dropout", 0.1), ("distill", 0.5), ("exit_warmup", 2),
                                                   ("train_propagation", True))}
    assert len(ids_) == 4 and RunConfig().run_id not in ids_
