"""The early-exit LM: shapes, requested layers, causality, norms and rotary positions."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ease.model import EarlyExitLM, ModelConfig, apply_rotary, rotary_tables

VOCAB, B, T = 13, 4, 16


def make_model(norm="post", n_layers=3, seed=0):
    torch.manual_seed(seed)
    return EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=n_layers, dim=16, n_heads=2,
                                   max_seq_len=T, norm=norm)).eval()


def random_ids(seed=1, shape=(B, T)):
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def count_block_calls(model):
    calls = [0] * len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda mod, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_output_shapes_and_keys(norm):
    model = make_model(norm)
    out = model(random_ids(), layers=[3, 1, 2, 1])
    assert list(out) == [1, 2, 3]
    for logits in out.values():
        assert logits.shape == (B, T, VOCAB)
        assert torch.isfinite(logits).all()


def test_default_is_the_last_layer():
    model = make_model()
    out = model(random_ids())
    assert list(out) == [3]
    assert torch.equal(out[3], model(random_ids(), layers=[3])[3])


def test_shorter_sequences_work():
    out = make_model()(random_ids(shape=(2, 5)), layers=[1])
    assert out[1].shape == (2, 5, VOCAB)


def test_only_requested_layers_are_computed():
    model = make_model()
    calls = count_block_calls(model)
    head_calls = []
    model.head.register_forward_hook(lambda mod, inp, out: head_calls.append(1))
    out = model(random_ids(), layers=[1])
    assert list(out) == [1]
    assert calls == [1, 0, 0] and len(head_calls) == 1
    model(random_ids(), layers=[2])
    assert calls == [2, 1, 0] and len(head_calls) == 2


def test_a_layer_gives_the_same_logits_whatever_else_is_requested():
    model = make_model()
    x = random_ids()
    alone = model(x, layers=[1])[1]
    together = model(x, layers=[1, 2, 3])
    assert torch.allclose(alone, together[1], atol=1e-6)
    assert not torch.allclose(together[1], together[3])  # layers really differ


@pytest.mark.parametrize("layers", [[0], [4], [], [1, 4], [-1]])
def test_bad_layers_raise(layers):
    with pytest.raises(ValueError, match="layers must be within 1..3"):
        make_model()(random_ids(), layers=layers)


def test_too_long_sequence_raises():
    with pytest.raises(ValueError, match=f"sequence length {T + 1} exceeds max_seq_len {T}"):
        make_model()(random_ids(shape=(1, T + 1)))


def test_bad_norm_raises():
    with pytest.raises(ValueError, match="norm must be 'post' or 'pre', got 'mid'"):
        EarlyExitLM(ModelConfig(vocab_size=VOCAB, dim=16, n_heads=2, norm="mid"))


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("changed", [0, 7, T - 1])
def test_causal_future_tokens_do_not_change_earlier_logits(norm, changed):
    model = make_model(norm)
    x = random_ids()
    x2 = x.clone()
    x2[:, changed] = (x2[:, changed] + 1) % VOCAB
    a, b = model(x, layers=[1, 2, 3]), model(x2, layers=[1, 2, 3])
    for layer in (1, 2, 3):
        assert torch.allclose(a[layer][:, :changed], b[layer][:, :changed], atol=1e-6), layer
        # the changed position itself does see the change (the test can tell the difference)
        assert not torch.allclose(a[layer][:, changed], b[layer][:, changed], atol=1e-6), layer


def test_pre_norm_has_a_final_norm_and_post_norm_does_not():
    assert isinstance(make_model("pre").final_norm, nn.RMSNorm)
    assert isinstance(make_model("post").final_norm, nn.Identity)
    # same seed, different block wiring: different outputs
    x = random_ids()
    assert not torch.allclose(make_model("pre")(x)[3], make_model("post")(x)[3])


def test_pre_norm_trains_one_step():
    model = make_model("pre").train()
    x, y = random_ids(1), random_ids(2)
    out = model(x, layers=[1, 3])
    loss = sum(nn.functional.cross_entropy(o.reshape(-1, VOCAB), y.reshape(-1)) for o in out.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert model.final_norm.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0


def test_same_seed_same_weights():
    a, b = make_model(seed=5), make_model(seed=5)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.head.weight, make_model(seed=6).head.weight)


def test_head_is_shared_by_every_exit():
    model = make_model()
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == VOCAB]
    assert heads == [model.head]


def test_rotary_makes_order_of_earlier_tokens_matter():
    # Without position information, layer 1's output at the last position is a function of the
    # *set* of earlier tokens (attention is a weighted sum over keys). With rotary it is not.
    model = make_model()
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    swapped = torch.tensor([[2, 1, 3, 5, 4, 6]])
    with_rope = model(x, layers=[1])[1][0, -1], model(swapped, layers=[1])[1][0, -1]
    assert not torch.allclose(*with_rope, atol=1e-5)
    model.rope_cos.fill_(1.0)  # rotation by angle 0: no position information at all
    model.rope_sin.zero_()
    without = model(x, layers=[1])[1][0, -1], model(swapped, layers=[1])[1][0, -1]
    assert torch.allclose(*without, atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    head_dim, n = 8, 12
    cos, sin = rotary_tables(n, head_dim)
    gen = torch.Generator().manual_seed(0)
    q_vec, k_vec = torch.randn(head_dim, generator=gen), torch.randn(head_dim, generator=gen)
    q = apply_rotary(q_vec.expand(1, 1, n, head_dim), cos, sin)[0, 0]
    k = apply_rotary(k_vec.expand(1, 1, n, head_dim), cos, sin)[0, 0]
    # the score of (query at m, key at m - d) is the same for every m
    for d in (0, 1, 3):
        scores = torch.stack([q[m] @ k[m - d] for m in range(d, n)])
        assert torch.allclose(scores, scores[0].expand_as(scores), atol=1e-5)
    # rotation keeps lengths; position 0 is not rotated
    assert torch.allclose(q.norm(dim=-1), q_vec.norm().expand(n), atol=1e-5)
    assert torch.allclose(q[0], q_vec)
    assert not torch.allclose(q[1], q_vec)


def test_rotary_is_the_pairwise_rotation_exactly():
    head_dim, n = 16, 10
    cos, sin = rotary_tables(n, head_dim)
    x = torch.randn(3, 2, n, head_dim, generator=torch.Generator().manual_seed(0))
    x1, x2 = x.chunk(2, dim=-1)
    pairwise = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    assert torch.equal(apply_rotary(x, cos, sin), pairwise)  # bit for bit, not merely close
