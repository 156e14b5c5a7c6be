"""Real early exit (ease.decode) against the model's own full forward, on tiny random models."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ease.data import make_batches
from ease.decode import (compute_fracs, decode_text, flop_compute_frac, generate, real_exit_eval,
                         real_exit_forward, speculative_generate)
from ease.exits import collect_token_stats, sweep
from ease.model import EarlyExitLM, ModelConfig

VOCAB, LAYERS, EXIT = 20, 4, 1
TOL = dict(rtol=1e-4, atol=1e-4)  # float32 rounding of differently shaped matmuls; bugs give O(1) errors


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(norm: str, seed: int = 0) -> EarlyExitLM:
    torch.manual_seed(seed)
    model = EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=LAYERS, dim=32, n_heads=4, norm=norm))
    with torch.no_grad():  # norm weights away from 1, so folding them into the K/V weights is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name == "head.weight":
                p.mul_(8)  # sharper predictions: confidences spread widely
    return model.eval()


def exit_confidence(model, idx, layer=EXIT):
    return F.softmax(model(idx, layers=[layer])[layer], dim=-1).amax(dim=-1)


def middle_threshold(conf: torch.Tensor) -> float:
    """Halfway between the two middle confidences: about half the tokens exit, none sits on the boundary."""
    c = conf.flatten().sort().values
    n = c.numel() // 2
    return float((c[n - 1] + c[n]) / 2)


def dense_reference(model, idx, threshold, exit_layer=EXIT):
    """The propagation rule written densely with the model's own blocks: every layer runs for every
    position, and an exited position's state is reset to its exit-layer state after each deeper layer.
    So the deeper blocks compute K/V from h_e for exited positions, as the real-exit code must."""
    T = idx.size(1)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    h = model.embed(idx)
    for block in model.blocks[:exit_layer]:
        h = block(h, cos, sin)
    h_exit, logits_exit = h, model.head(model.final_norm(h))
    exits = F.softmax(logits_exit, dim=-1).amax(dim=-1) >= threshold
    for block in model.blocks[exit_layer:]:
        h = torch.where(exits[..., None], h_exit, block(h, cos, sin))
    return torch.where(exits[..., None], logits_exit, model.head(model.final_norm(h))), exits


def greedy_full_depth(model, prompt, n):
    """Greedy decoding by re-running the model's full forward on the growing sequence (no cache)."""
    seq, logits = list(prompt), []
    for _ in range(n):
        last = model(torch.tensor([seq]))[LAYERS][0, -1]
        logits.append(last)
        seq.append(int(last.argmax()))
    return seq[len(prompt):], torch.stack(logits)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_no_exit_equals_the_full_model(norm):
    model = tiny_model(norm)
    idx = torch.randint(0, VOCAB, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)[LAYERS]
    out = real_exit_forward(model, idx, threshold=1.5)
    torch.testing.assert_close(out["logits"], full, **TOL)
    assert not out["exits"].any() and (out["layers"] == LAYERS).all()

    prompt = [3, 1, 4, 1, 5]
    with torch.no_grad():
        want_tokens, want_logits = greedy_full_depth(model, prompt, 12)
    for threshold in (None, 2.0):
        gen = generate(model, [prompt], 12, threshold=threshold)
        assert gen.tokens[0].tolist() == want_tokens
        torch.testing.assert_close(gen.logits[0], want_logits, **TOL)
        assert (gen.layers == LAYERS).all()


class CallCounter:
    """Counts forward calls of modules and the rows they were given."""

    def __init__(self, modules):
        self.calls = 0
        self.handles = [m.register_forward_hook(self.hook) for m in modules]

    def hook(self, module, inputs, output):
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_threshold_zero_never_runs_the_skipped_layers(norm):
    model = tiny_model(norm)
    deeper = model.blocks[EXIT:]
    skipped = CallCounter([m for b in deeper for m in (b, b.attn, b.attn.out, b.ffn, b.norm2)])
    # sanity check of the counter itself: the full model calls every one of these modules
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(idx)
    assert skipped.calls == 5 * len(deeper)
    skipped.calls = 0

    out = real_exit_forward(model, idx, threshold=0.0)
    gen = generate(model, [[1, 2, 3], [4, 5]], 8, threshold=0.0)
    skipped.remove()
    assert skipped.calls == 0
    assert out["exits"].all() and (gen.layers == EXIT).all()
    with torch.no_grad():  # layers 1..exit see every token, so the exit layer's logits are the model's
        torch.testing.assert_close(out["logits"], model(idx, layers=[EXIT])[EXIT], **TOL)
        seq = torch.tensor([[4, 5] + gen.tokens[1, :-1].tolist()])
        torch.testing.assert_close(gen.logits[1], model(seq, layers=[EXIT])[EXIT][0, 1:], **TOL)


@pytest.mark.parametrize("norm, exit_layer", [("post", 1), ("pre", 1), ("post", 2)])
def test_mixed_exits_follow_the_state_propagation_rule(norm, exit_layer):
    model = tiny_model(norm)
    idx = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        threshold = middle_threshold(exit_confidence(model, idx, exit_layer))
        want_logits, want_exits = dense_reference(model, idx, threshold, exit_layer)
        full = model(idx)[LAYERS]
    out = real_exit_forward(model, idx, threshold, exit_layer)
    assert want_exits.any() and (~want_exits).any()
    assert torch.equal(out["exits"], want_exits)
    assert torch.equal(out["layers"], torch.where(want_exits, exit_layer, LAYERS))
    torch.testing.assert_close(out["logits"], want_logits, **TOL)
    # the propagation matters: deep tokens after an exit see other states than in the full model
    deep_diff = (out["logits"] - full).abs().amax(dim=-1)[~want_exits]
    assert deep_diff.max() > 1e-3


@pytest.mark.parametrize("norm, exit_layer", [("post", 1), ("pre", 1), ("pre", 2)])
def test_cached_decoding_equals_the_uncached_forward(norm, exit_layer):
    model = tiny_model(norm)
    prompt = torch.randint(0, VOCAB, (9,), generator=torch.Generator().manual_seed(4)).tolist()
    with torch.no_grad():
        threshold = middle_threshold(exit_confidence(model, torch.tensor([prompt]), exit_layer))
    n = 20
    gen = generate(model, [prompt], n, threshold=threshold, exit_layer=exit_layer)
    layers = gen.layers[0]
    assert (layers == exit_layer).any() and (layers == LAYERS).any(), "pick a threshold where both kinds occur"
    # some deep token follows two exits: the deferred K/V of both are computed then, together
    assert any(layers[i:i + 3].tolist() == [exit_layer, exit_layer, LAYERS] for i in range(n - 2))
    sequence = torch.tensor([prompt + gen.tokens[0, :-1].tolist()])
    out = real_exit_forward(model, sequence, threshold, exit_layer)
    predicted = slice(len(prompt) - 1, None)  # the positions whose predictions gave the new tokens
    torch.testing.assert_close(gen.logits[0], out["logits"][0, predicted], **TOL)
    assert torch.equal(layers, out["layers"][0, predicted])
    assert gen.tokens[0].tolist() == gen.logits[0].argmax(dim=-1).tolist()


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_batched_prompts_of_different_lengths_match_single_ones(norm):
    model = tiny_model(norm)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (3, 11, 6, 1)]
    with torch.no_grad():
        threshold = middle_threshold(exit_confidence(model, torch.tensor([prompts[1]])))
    batch = generate(model, prompts, 15, threshold=threshold)
    assert (batch.layers == EXIT).any() and (batch.layers == LAYERS).any()
    assert batch.prompt_lengths == [3, 11, 6, 1]
    for b, prompt in enumerate(prompts):
        single = generate(model, [prompt], 15, threshold=threshold)
        assert single.tokens[0].tolist() == batch.tokens[b].tolist()
        assert torch.equal(single.layers[0], batch.layers[b])
        torch.testing.assert_close(single.logits[0], batch.logits[b], **TOL)


@pytest.mark.parametrize("norm, exit_layer", [("post", 1), ("pre", 1), ("pre", 2)])
def test_grouped_schedule_gives_every_row_its_lockstep_output(norm, exit_layer):
    model = tiny_model(norm)
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (3, 11, 6, 1, 8)]
    with torch.no_grad():
        threshold = middle_threshold(exit_confidence(model, torch.tensor([prompts[1]]), exit_layer))
    lockstep = generate(model, prompts, 17, threshold=threshold, exit_layer=exit_layer)
    grouped = generate(model, prompts, 17, threshold=threshold, exit_layer=exit_layer, schedule="grouped")
    assert (grouped.layers == exit_layer).any() and (grouped.layers == LAYERS).any()
    assert torch.equal(grouped.tokens, lockstep.tokens)
    assert torch.equal(grouped.layers, lockstep.layers)
    torch.testing.assert_close(grouped.logits, lockstep.logits, **TOL)
    one = generate(model, [prompts[2]], 17, threshold=threshold, exit_layer=exit_layer, schedule="grouped")
    assert torch.equal(one.tokens[0], lockstep.tokens[2])


def test_grouped_schedule_runs_the_deeper_layers_once_for_all_waiting_rows():
    model = tiny_model("pre")
    prompts = torch.randint(0, VOCAB, (6, 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        threshold = middle_threshold(exit_confidence(model, prompts))
    calls = {}
    for schedule in ("lockstep", "grouped"):
        calls[schedule] = 0
        hook = model.blocks[LAYERS - 1].ffn.register_forward_hook(
            lambda *_, s=schedule: calls.__setitem__(s, calls[s] + 1))
        gen = generate(model, prompts, 20, threshold=threshold, schedule=schedule)
        hook.remove()
    deep = gen.layers[:, 1:] == LAYERS  # tokens 1..N-1: each needed one pass of the deeper layers after the prefill
    prefill = calls["lockstep"] - int(deep.any(dim=0).sum())  # lockstep: one pass per step with any deep row
    assert prefill in (0, 1)
    # grouped: a row's deep tokens need a pass each, but one pass serves every waiting row
    assert int(deep.sum(dim=1).max()) <= calls["grouped"] - prefill < calls["lockstep"] - prefill
    # threshold 0: nothing waits, the deeper layers never run; None: the lockstep full-depth model
    hook = model.blocks[LAYERS - 1].ffn.register_forward_hook(lambda *_: pytest.fail("a deeper layer ran"))
    generate(model, prompts, 5, threshold=0.0, schedule="grouped")
    hook.remove()
    assert torch.equal(generate(model, prompts, 5, schedule="grouped").tokens, generate(model, prompts, 5).tokens)
    with pytest.raises(ValueError, match="schedule"):
        generate(model, prompts, 5, threshold=0.5, schedule="by-row")


def test_eval_without_exits_equals_the_simulated_sweep():
    model = tiny_model("post")
    ids = torch.randint(0, VOCAB, (2 * 4 * 16 + 1,), generator=torch.Generator().manual_seed(6))
    inputs, targets = make_batches(ids, 16, 4)
    stats = collect_token_stats(model, inputs, targets, EXIT)
    middle = middle_threshold(stats.confidence)
    simulated = sweep(stats, [0.0, middle, 1.5])
    real = real_exit_eval(model, inputs, targets, [0.0, middle, 1.5], EXIT, n_blocks=3)
    for sim, rea in zip(simulated, real):
        # the block sums add up to the row's totals (n tokens in 3 contiguous blocks)
        n = inputs.numel()
        assert len(rea["block_ce"]) == len(rea["block_exits"]) == 3
        assert math.exp(sum(rea["block_ce"]) / n) == pytest.approx(rea["ppl"], rel=1e-12)
        assert sum(rea["block_exits"]) == round(rea["shallow_frac"] * n)
        assert rea["threshold"] == sim["threshold"]
        # exits are decided at layer 1, which every token reaches: the same tokens exit
        assert rea["shallow_frac"] == sim["shallow_frac"]
        assert rea["compute_frac"] == pytest.approx(sim["compute_frac"], abs=1e-12)
    assert 0 < real[1]["shallow_frac"] < 1
    # nobody exits, or everybody does: real and simulated exit are the same computation
    for i in (0, 2):
        assert real[i]["ppl"] == pytest.approx(simulated[i]["ppl"], rel=1e-6)
    assert real[2]["shallow_frac"] == 0 and real[2]["flop_compute_frac"] == 1.0
    assert real[1]["ppl"] != pytest.approx(simulated[1]["ppl"], rel=1e-6)  # deep tokens see copied states


def test_flop_accounting_by_hand():
    cfg = ModelConfig(vocab_size=20, n_layers=4, dim=32, n_heads=4)
    d, L, V, e = 32, 4, 20, 1
    block = 3 * d * d + d * d + 3 * d * (4 * d)  # qkv, out, SwiGLU (gate+up 2·d·4d, down 4d·d)
    full = L * block + V * d
    exited = e * block + V * d + (L - e) * 2 * d * d  # exit head + K/V of the 3 skipped layers
    deep = L * block + 2 * V * d  # exit head to decide + last head
    s = 0.25
    assert flop_compute_frac(s, cfg, e) == pytest.approx((s * exited + (1 - s) * deep) / full, rel=1e-12)
    assert flop_compute_frac(0.0, cfg, e, decide=False) == 1.0
    assert flop_compute_frac(0.0, cfg, e, decide=True) == pytest.approx(deep / full)  # deciding costs a head
    ctx = 10  # attention: 2·d per key per block for every block a token runs
    want = (s * (e * (block + 2 * d * ctx) + V * d + (L - e) * 2 * d * d)
            + (1 - s) * (L * (block + 2 * d * ctx) + 2 * V * d)) / (L * (block + 2 * d * ctx) + V * d)
    assert flop_compute_frac(s, cfg, e, context=ctx) == pytest.approx(want, rel=1e-12)
    assert compute_fracs(s, cfg, e)["compute_frac"] == pytest.approx(s * 1 / 4 + (1 - s))


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = tiny_model("post")
    prompts = [[1, 2, 3], [7]]

    def sample(seed, **kw):
        return generate(model, prompts, 16, threshold=0.5, greedy=False, temperature=1.5,
                        generator=torch.Generator().manual_seed(seed), **kw).tokens

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    top1 = sample(2, top_k=1)  # only the most likely token can be drawn: greedy decoding
    assert torch.equal(top1, generate(model, prompts, 16, threshold=0.5).tokens)
    # the grouped schedule draws in another order, but just as reproducibly
    assert torch.equal(sample(0, schedule="grouped"), sample(0, schedule="grouped"))
    assert torch.equal(sample(2, top_k=1, schedule="grouped"), top1)


def test_decode_text_round_trip():
    model = tiny_model("pre")
    vocab = list("abcdefghijklmnopqrs ")
    out = decode_text(model, vocab, ["abc", "s a"], 7, threshold=0.5)
    gen = generate(model, [[0, 1, 2], [18, 19, 0]], 7, threshold=0.5)
    assert [o.text for o in out] == ["".join(vocab[t] for t in row) for row in gen.tokens.tolist()]
    assert [o.layers for o in out] == gen.layers.tolist()
    assert out[1].prompt == "s a" and all(len(o.text) == 7 for o in out)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode_text(model, vocab, ["xyz"], 3)


def test_bad_inputs_are_rejected_clearly():
    model = tiny_model("post")
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="threshold"):
        real_exit_forward(model, idx, -0.1)
    with pytest.raises(ValueError, match="threshold"):
        generate(model, [[1]], 2, threshold=float("nan"))
    for bad in (0, LAYERS + 1, 1.0):
        with pytest.raises(ValueError, match="exit_layer"):
            generate(model, [[1]], 2, threshold=0.5, exit_layer=bad)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [], 2)
    with pytest.raises(ValueError, match="prompt 1"):
        generate(model, [[1], []], 2)
    with pytest.raises(ValueError, match="token id"):
        generate(model, [[1, VOCAB]], 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [[1]], -1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [[1]], 2, greedy=False, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, [[1]], 2, greedy=False, top_k=VOCAB + 1)
    with pytest.raises(ValueError, match="idx"):
        real_exit_forward(model, torch.zeros(1, 0, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="thresholds"):
        real_exit_eval(model, idx[None], idx[None], [])
    with pytest.raises(ValueError, match="shallow_frac"):
        flop_compute_frac(1.5, model.cfg)
    assert generate(model, [[1, 2]], 0).tokens.shape == (1, 0)


# --- lossless self-speculative decoding ------------------------------------------------------------

@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("draft", [1, 3, 6])
def test_speculative_decoding_is_the_full_models_greedy_output(norm, draft):
    torch.manual_seed(1)
    model = EarlyExitLM(ModelConfig(vocab_size=23, n_layers=4, dim=32, n_heads=4, max_seq_len=64, norm=norm))
    prompts = [[1, 2, 3, 4, 5], [7, 7], [3, 9, 11, 2, 2, 2, 1]]  # ragged: left-padded, decoded in lockstep
    full = generate(model, prompts, 25).tokens  # threshold None: full depth, with the KV cache
    for exit_layer in (1, 2, 3):
        spec = speculative_generate(model, prompts, 25, draft=draft, exit_layer=exit_layer)
        assert torch.equal(spec.tokens, full), (exit_layer, draft)
        one = speculative_generate(model, [prompts[2]], 25, draft=draft, exit_layer=exit_layer)
        assert torch.equal(one.tokens, full[2:3])  # batch 1


def test_speculative_decoding_accepts_every_draft_when_the_deeper_layers_change_nothing():
    torch.manual_seed(2)
    model = EarlyExitLM(ModelConfig(vocab_size=23, n_layers=3, dim=32, n_heads=4, max_seq_len=64, norm="pre"))
    with torch.no_grad():  # pre-norm blocks with zero weights add nothing: the exit layer is the full model
        for block in model.blocks[1:]:
            for p in block.parameters():
                p.zero_()
    spec = speculative_generate(model, [[1, 2, 3]], 20, draft=4, exit_layer=1)
    assert spec.acceptance == 1.0 and spec.rounds == 4  # 20 tokens in rounds of 1 + 4
    assert torch.equal(spec.tokens, generate(model, [[1, 2, 3]], 20).tokens)


def test_speculative_decoding_bad_input():
    model = EarlyExitLM(ModelConfig(vocab_size=23, n_layers=3, dim=32, n_heads=4, max_seq_len=64))
    with pytest.raises(ValueError, match="below the last"):
        speculative_generate(model, [[1, 2]], 5, exit_layer=3)
    with pytest.raises(ValueError, match="draft must be an integer >= 1"):
        speculative_generate(model, [[1, 2]], 5, draft=0)
    assert speculative_generate(model, [[1, 2]], 0).tokens.shape == (1, 0)
