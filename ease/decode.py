"""Real early exit: skip the deeper layers for confident tokens, carry their state, decode with a KV cache.

`ease.exits` *simulates* early exit: every layer runs for every token and the exit layer's or the
last layer's prediction is picked afterwards. Here the deeper layers really are skipped. A token
exits at `exit_layer` (e) when the maximum softmax probability of the shared head there is
>= threshold; otherwise it continues to the last layer (L). A threshold above 1 (or None) means
nobody exits and nothing is decided; threshold 0 means everybody exits.

State propagation
-----------------
A deep token attends, at every layer, to the keys and values of all earlier tokens, including
the ones that exited and so have no state at that layer. We copy an exited token's hidden state
after layer e unchanged up to every deeper layer, as the Depth-Adaptive Transformer (Elbayad et
al., 2020) does for tokens that stop early and as CALM (Schuster et al., 2022) does for the
skipped layers of early-exited tokens. Each skipped layer's keys/values for that position are
computed from the copy: K/V = qkv(h_e) for post-norm blocks, qkv(norm1(h_e)) for pre-norm blocks.
Only this K/V projection runs at a skipped layer: no attention, FFN or head. When some
positions of a step go deep, the exited ones ride along in the deep ones' qkv matmul of each
deeper layer (their query is computed and dropped: on these sizes one matmul over all rows is
cheaper than a separate K/V matmul). When every new position exits, h_e is kept and the skipped
layers' K/V are computed lazily, when a deep query next needs the cache, for all positions
waiting by then, in one matmul with the layers' key/value weights stacked (pre-norm: each
layer's norm1 weight folded in); at batch 1 a run of exited tokens reads those weights once.
Equivalently: the exited positions' state at layer l > e is h_e, and the deep positions go
through the ordinary blocks over that mixed sequence. Consequence: a deep token's prediction
depends on which earlier tokens exited, so the real-exit PPL differs from the simulated one,
except when nobody exits (then both are the full model). The exit decisions themselves depend
only on layers 1..e, which see every token, so the shallow fraction is the simulated one.

Work really skipped
-------------------
Both `real_exit_forward` (teacher forced, whole sequences) and `generate` (token by token with a
per-layer KV cache) run the same code: layers 1..e for every position, the head at layer e, then
for the deeper layers attention, output projection, FFN and the last head only for the deep
positions (index-selected; in a teacher-forced batch each row's deep positions are packed into
the front of a [rows, max deep count] block, whose padding slots are computed and thrown away).
The prompt is prefilled with the same rule, so the cache holds what token-by-token decoding
would have produced.

Positions and padding
---------------------
A batch of prompts of different lengths is left-padded; each row's rotary positions count from
its own first real token, and padded keys are masked out (a padded query attends only to
itself, so nothing becomes NaN; its output is never used). The model was trained on windows of
`max_seq_len` tokens: positions beyond that are extrapolation of the rotary embedding.

Compute accounting
------------------
`compute_frac` counts layers as `ease.exits.route` does (e/L per exited token, 1 per deep one).
`flop_compute_frac` counts multiply-adds per token (see `token_macs`) relative to full-depth
inference: the exit head needed to decide, the skipped layers' K/V projections and the second
head of deep tokens are all paid for. It counts 2·d² per skipped layer of an exited token
(keys and values); the implementation spends 3·d² there in mixed steps (see above) and nothing
for the exited tokens no later deep token needs (at the end of decoding, or with threshold 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ease.exits import block_bounds, layer_compute_frac, per_block
from ease.model import EarlyExitLM, ModelConfig, apply_rotary, rotary_tables


# ----------------------------------------------------------------------------- validation

def _decides(threshold) -> bool:
    """True when the threshold asks for a decision (0 <= t <= 1); None or t > 1: nobody exits."""
    if threshold is None:
        return False
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or threshold < 0:
        raise ValueError(f"threshold must be None or a finite number >= 0 (above 1: nobody exits), got {threshold!r}")
    return threshold <= 1


def _check_exit_layer(model: EarlyExitLM, exit_layer) -> int:
    n_layers = model.cfg.n_layers
    if isinstance(exit_layer, bool) or not isinstance(exit_layer, int) or not 1 <= exit_layer <= n_layers:
        raise ValueError(f"exit_layer must be an integer within 1..{n_layers}, got {exit_layer!r}")
    return exit_layer


# ----------------------------------------------------------------------------- the forward pass

class _Cache:
    """Per-layer keys and values of every position seen so far, preallocated for `capacity` columns.

    k, v: [n_layers, B, heads, capacity, head_dim]. Column j of row b holds that row's j-th token
    (left padding included); `valid[b, j]` is False at padding.
    """

    def __init__(self, model: EarlyExitLM, batch: int, capacity: int, exit_layer: int,
                 valid: torch.Tensor | None = None):
        cfg = model.cfg
        dev, dtype = model.head.weight.device, model.head.weight.dtype
        self.n_heads, self.head_dim = cfg.n_heads, cfg.dim // cfg.n_heads
        shape = (cfg.n_layers, batch, self.n_heads, capacity, self.head_dim)
        # zeros, not empty: a masked key must still be finite (0 x NaN would leak through the softmax)
        self.k = torch.zeros(shape, device=dev, dtype=dtype)
        self.v = torch.zeros(shape, device=dev, dtype=dtype)
        # exited positions whose skipped-layer K/V are not computed yet: their h_e and rotary position
        self.pending = torch.zeros(batch, capacity, dtype=torch.bool, device=dev)
        self.has_pending = False  # a Python flag: no device query when nothing waits
        self.pending_h = torch.empty(batch, capacity, cfg.dim, device=dev, dtype=dtype)
        self.pending_pos = torch.zeros(batch, capacity, dtype=torch.long, device=dev)
        self.valid = torch.ones(batch, capacity, dtype=torch.bool, device=dev) if valid is None else valid.to(dev)
        self.padded = bool((~self.valid).any())  # without padding most masks can be skipped
        self.length = 0  # columns filled
        self.exit_layer = exit_layer
        cos, sin = rotary_tables(capacity, self.head_dim)  # once per cache, not per step
        self.cos, self.sin = cos.to(dev, dtype), sin.to(dev, dtype)
        # The skipped layers' key/value weights stacked, so one matmul gives all their K/V from h_e.
        # Pre-norm: each layer's norm1 weight is folded in; the shared 1/rms(h_e) is applied to h_e.
        self.pre_norm, self.norm_eps = cfg.norm == "pre", cfg.norm_eps
        C = cfg.dim
        self.w_skip = torch.cat([b.attn.qkv.weight[C:] * (b.norm1.weight[None, :] if self.pre_norm else 1.0)
                                 for b in model.blocks[exit_layer:]]) if exit_layer < cfg.n_layers else None

    def mask(self, q_cols: torch.Tensor, rows: torch.Tensor | None, end: int) -> torch.Tensor:
        """Boolean mask [R, 1, M, end] for queries at absolute columns q_cols [R, M] of `rows` (None: all).

        A key is visible when it is not later than the query and is a real token, or is the query
        itself (so a padded query is never fully masked, which would give NaN).
        """
        keys = torch.arange(end, device=q_cols.device)
        allowed = keys <= q_cols[..., None]
        if self.padded:
            valid = self.valid[:, :end] if rows is None else self.valid[rows, :end]
            allowed &= valid[:, None, :] | (keys == q_cols[..., None])
        return allowed[:, None]


def _finish_block(block, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Residual, norms and FFN of a block around its attention output (the math of Block.forward)."""
    if block.pre_norm:
        h = h + attn_out
        return h + block.ffn(block.norm2(h))
    h = block.norm1(h + attn_out)
    return block.norm2(h + block.ffn(h))


def _qkv(block, cache: _Cache, layer: int, h: torch.Tensor, cos, sin, start: int) -> torch.Tensor:
    """Queries [B, H, T, D] of the new positions h [B, T, C]; their keys and values go into the cache."""
    B, T, _ = h.shape
    a = block.norm1(h) if block.pre_norm else h
    qkv = block.attn.qkv(a).view(B, T, 3, cache.n_heads, cache.head_dim).permute(2, 0, 3, 1, 4)
    q, k = apply_rotary(qkv[:2], cos, sin)
    cache.k[layer, :, :, start:start + T] = k
    cache.v[layer, :, :, start:start + T] = qkv[2]
    return q


def _attend(block, cache: _Cache, layer: int, q, end: int, rows, mask, causal: bool) -> torch.Tensor:
    """Attention output [R, M, C] (after the output projection) of queries q [R, H, M, D] of `rows` (None: all)."""
    keys, values = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
    if rows is not None:
        keys, values = keys.index_select(0, rows), values.index_select(0, rows)
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal)
    R, _, M, _ = q.shape
    return block.attn.out(y.transpose(1, 2).reshape(R, M, -1))


def _skip_kv(cache: _Cache) -> None:
    """Every skipped layer's K/V of the pending exited positions, from their h_e, in one matmul."""
    if not cache.has_pending:
        return
    b_idx, cols = cache.pending.nonzero(as_tuple=True)
    cache.pending[b_idx, cols] = False
    cache.has_pending = False
    e, L = cache.exit_layer, cache.k.size(0)
    x, pos = cache.pending_h[b_idx, cols], cache.pending_pos[b_idx, cols]
    if cache.pre_norm:  # norm1 without its weight (that is folded into w_skip)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cache.norm_eps)
    kv = F.linear(x, cache.w_skip).view(-1, L - e, 2, cache.n_heads, cache.head_dim)
    cos, sin = cache.cos[pos][:, None, None], cache.sin[pos][:, None, None]
    cache.k[e:, b_idx, :, cols] = apply_rotary(kv[:, :, 0], cos, sin)  # [N, L-e, H, D]
    cache.v[e:, b_idx, :, cols] = kv[:, :, 1]


def _forward(model: EarlyExitLM, idx: torch.Tensor, pos: torch.Tensor, cache: _Cache, threshold):
    """New tokens idx [B, T] at rotary positions pos [B, T] through the model with real early exit.

    Appends their keys/values to the cache. Returns (logits [B, T, V]: each position's final
    prediction, exits [B, T]: True where it came from the exit layer).
    """
    blocks, e, L = model.blocks, cache.exit_layer, model.cfg.n_layers
    B, T = idx.shape
    dev = idx.device
    start, end = cache.length, cache.length + T
    cache.length = end
    cos, sin = cache.cos[pos][:, None], cache.sin[pos][:, None]  # [B, 1, T, D/2]
    if not cache.padded and start == 0:
        mask, causal = None, True
    elif not cache.padded and T == 1:
        mask, causal = None, False  # the one new query sees the whole cache
    else:
        mask, causal = cache.mask(torch.arange(start, end, device=dev).expand(B, T), None, end), False

    def ordinary(h, layers):  # blocks that every new position goes through
        for layer in layers:
            q = _qkv(blocks[layer], cache, layer, h, cos, sin, start)
            h = _finish_block(blocks[layer], h, _attend(blocks[layer], cache, layer, q, end, None, mask, causal))
        return h

    h = model.embed(idx)
    if not _decides(threshold):
        return model.head(model.final_norm(ordinary(h, range(L)))), torch.zeros(B, T, dtype=torch.bool, device=dev)
    h = ordinary(h, range(e))
    logits = model.head(model.final_norm(h))
    exits = F.log_softmax(logits.float(), dim=-1).amax(dim=-1).exp() >= threshold
    if e == L:
        return logits, exits
    deep = ~exits & cache.valid[:, start:end]  # padding never goes deep
    if T == 1:
        rows = deep[:, 0].nonzero().squeeze(1)
        R, M = rows.numel(), 1
    else:
        rows = deep.any(dim=1).nonzero().squeeze(1)
        R = rows.numel()
        counts = deep[rows].sum(dim=1)
        M = int(counts.max()) if R else 0
    if R == 0:  # everybody exits: keep h_e, the skipped layers' K/V are computed when first needed
        cache.pending[:, start:end] = True
        cache.pending_h[:, start:end] = h
        cache.pending_pos[:, start:end] = pos
        cache.has_pending = True
        return logits, exits
    _skip_kv(cache)  # a deep query follows: earlier exits' K/V first
    if R == B and M == T:  # nobody exits now: the deeper blocks are ordinary ones
        return model.head(model.final_norm(ordinary(h, range(e, L)))), exits

    # Mixed: the deep positions, packed per row into [R, M] slots (T == 1: one per row), get
    # attention and FFN. Exited positions keep h_e in h; their K/V come from the same qkv matmul
    # as the deep ones' (their query is computed and dropped: one matmul over every row is
    # cheaper here than a separate K/V matmul).
    sel = None if R == B else rows
    if T == 1:
        mask_d = None if not cache.padded else cache.valid[rows, None, None, :end]
        for layer in range(e, L):
            block = blocks[layer]
            q = _qkv(block, cache, layer, h, cos, sin, start)
            h_d = h.index_select(0, rows)
            h_d = _finish_block(block, h_d, _attend(block, cache, layer, q.index_select(0, rows), end, sel, mask_d,
                                                    False))
            h = h.index_copy(0, rows, h_d)
        logits = logits.index_copy(0, rows, model.head(model.final_norm(h_d)))
        return logits, exits
    cols = torch.argsort((~deep[rows]).to(torch.int8), dim=1, stable=True)[:, :M]  # deep columns first
    row_idx = rows[:, None].expand(R, M)
    slot_ok = torch.arange(M, device=dev) < counts[:, None]  # slots past a row's count are padding
    wb, wt = row_idx[slot_ok], cols[slot_ok]
    mask_d = cache.mask(start + cols, rows, end)
    for layer in range(e, L):
        block = blocks[layer]
        q = _qkv(block, cache, layer, h, cos, sin, start)
        h_d = _finish_block(block, h[row_idx, cols],
                            _attend(block, cache, layer, q[row_idx, :, cols].transpose(1, 2), end, sel, mask_d, False))
        h = h.index_put((wb, wt), h_d[slot_ok])
    logits = logits.index_put((wb, wt), model.head(model.final_norm(h_d[slot_ok])))
    return logits, exits


# ----------------------------------------------------------------------------- teacher forced

@torch.inference_mode()
def real_exit_forward(model: EarlyExitLM, idx: torch.Tensor, threshold: float | None,
                      exit_layer: int = 1) -> dict[str, torch.Tensor]:
    """Teacher-forced real early exit over whole sequences idx [B, T] (parallel over positions).

    Returns {"logits": [B, T, V] final prediction of every position (the exit layer's for exited
    tokens, the last layer's for the others), "exits": [B, T] bool, "layers": [B, T] the layer
    each prediction came from}.
    """
    _decides(threshold)
    _check_exit_layer(model, exit_layer)
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.numel() == 0 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a non-empty LongTensor [batch, seq_len], got "
                         f"{getattr(idx, 'dtype', type(idx).__name__)} of shape {tuple(getattr(idx, 'shape', ()))}")
    B, T = idx.shape
    dev = model.head.weight.device
    idx = idx.to(dev)
    cache = _Cache(model, B, T, exit_layer)
    pos = torch.arange(T, device=dev).expand(B, T)
    logits, exits = _forward(model, idx, pos, cache, threshold)
    layers = torch.where(exits, exit_layer, model.cfg.n_layers)
    return {"logits": logits, "exits": exits, "layers": layers}


@torch.inference_mode()
def _token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of logits [B, T, V] against targets [B, T], flat."""
    y = targets.reshape(-1).to(logits.device)
    log_p = F.log_softmax(logits.reshape(y.numel(), -1).float(), dim=-1)
    return -log_p.gather(1, y[:, None]).squeeze(1)


def real_exit_eval(model: EarlyExitLM, inputs: torch.Tensor, targets: torch.Tensor,
                   thresholds: Iterable[float], exit_layer: int = 1, n_blocks: int | None = None) -> list[dict]:
    """Real-exit metrics over batches [n_batches, B, T] (as `ease.data.make_batches` gives).

    One row per threshold: {threshold, ppl, shallow_frac, compute_frac, flop_compute_frac}, and with
    `n_blocks` the CE sums and exit counts of that many contiguous blocks of tokens (`block_ce`,
    `block_exits`; as ease.exits.block_sums, for intervals that resample the text).
    FLOPs count attention at the mean context of a teacher-forced window, (T + 1) / 2 keys.
    """
    _check_exit_layer(model, exit_layer)
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor) or inputs.dim() != 3 \
            or inputs.shape != targets.shape or inputs.numel() == 0:
        raise ValueError("inputs and targets must be non-empty tensors of the same shape [n_batches, B, T], got "
                         f"{tuple(getattr(inputs, 'shape', ()))} and {tuple(getattr(targets, 'shape', ()))}")
    thresholds = list(thresholds)
    if not thresholds:
        raise ValueError("thresholds must not be empty")
    for t in thresholds:
        if t is None:
            raise ValueError("thresholds must be numbers (use one above 1 for 'nobody exits'), got None")
        _decides(t)
    was_training = model.training
    model.eval()
    rows = []
    for threshold in thresholds:
        ce, exited = [], []
        for x, y in zip(inputs, targets):
            out = real_exit_forward(model, x, threshold, exit_layer)
            ce.append(_token_ce(out["logits"], y))
            exited.append(out["exits"].reshape(-1))
        ce, exited = torch.cat(ce).cpu(), torch.cat(exited).cpu()
        shallow = exited.double().mean().item()
        fracs = compute_fracs(shallow, model.cfg, exit_layer, decide=_decides(threshold),
                              context=(inputs.size(-1) + 1) / 2)
        rows.append({"threshold": float(threshold), "ppl": math.exp(ce.double().mean().item()),
                     "shallow_frac": shallow, **fracs})
        if n_blocks is not None:
            bounds = block_bounds(ce.numel(), n_blocks)
            rows[-1]["block_ce"] = per_block(ce, bounds)
            rows[-1]["block_exits"] = [round(v) for v in per_block(exited, bounds)]
    model.train(was_training)
    return rows


# ----------------------------------------------------------------------------- several exits

@torch.inference_mode()
def multi_exit_forward(model: EarlyExitLM, idx: torch.Tensor, exits: Iterable[int], thresholds) -> dict[str, torch.Tensor]:
    """Teacher-forced real early exit with several exits over whole sequences idx [B, T].

    A token leaves at the first exit (in `exits`, below the last layer) whose max softmax probability
    reaches that exit's threshold (`thresholds`: one number for every exit, or one per exit; above 1 or
    None: that exit never fires). From then on its state is propagated: every deeper layer keeps it as it
    was, and later tokens attend to keys and values computed from it (as `real_exit_forward` does for one
    exit). The deeper blocks still run over the whole sequence while any token is active, so this
    function measures what really exiting does to the predictions, not its speed; once every token
    has left, no deeper block runs.

    Returns {"logits": [B, T, V] each token's prediction, "exits": [B, T] bool (left at an exit),
    "layers": [B, T] the layer each prediction came from}.
    """
    from ease.exits import check_exits, exit_thresholds

    L = model.cfg.n_layers
    exits = check_exits(exits, L)
    thresholds = exit_thresholds(thresholds, len(exits))
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.numel() == 0 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a non-empty LongTensor [batch, seq_len], got "
                         f"{getattr(idx, 'dtype', type(idx).__name__)} of shape {tuple(getattr(idx, 'shape', ()))}")
    B, T = idx.shape
    dev = model.head.weight.device
    idx = idx.to(dev)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    h = model.embed(idx)
    left = torch.zeros(B, T, dtype=torch.bool, device=dev)
    layers = torch.full((B, T), L, dtype=torch.long, device=dev)
    logits = None
    for layer, block in enumerate(model.blocks, start=1):
        if bool(left.all()):
            break  # every token has left: no deeper block runs
        h = torch.where(left[..., None], h, block(h, cos, sin))
        if layer in exits:
            out = model.head(model.final_norm(h))
            threshold = thresholds[exits.index(layer)]
            leave = ~left & (F.log_softmax(out.float(), dim=-1).amax(dim=-1).exp() >= threshold)
            logits = out if logits is None else torch.where(leave[..., None], out, logits)
            layers = torch.where(leave, layer, layers)
            left = left | leave
    if not bool(left.all()):
        logits = torch.where(left[..., None], logits, model.head(model.final_norm(h)))
    return {"logits": logits, "exits": left, "layers": layers}


def multi_exit_macs(cfg: ModelConfig, exits: Iterable[int]) -> dict[int, float]:
    """Multiply-adds of a token by the layer it leaves at (`token_macs`' counting, with several exits): leaving
    at exit e_k costs e_k blocks, the head at each exit up to e_k (it decides at each), and the keys and values
    of each skipped layer; a token that reaches the last layer pays every block and the head at every exit and
    at the last layer. Keys of the dict: the exits and n_layers; "full" is plain full-depth inference."""
    from ease.exits import check_exits

    L = cfg.n_layers
    exits = check_exits(exits, L)
    m = token_macs(cfg, exits[0])
    out = {e: e * m["block"] + (k + 1) * m["head"] + (L - e) * m["kv"] for k, e in enumerate(exits)}
    out[L] = L * m["block"] + (len(exits) + 1) * m["head"]
    out["full"] = m["full"]
    return out


def multi_exit_eval(model: EarlyExitLM, inputs: torch.Tensor, targets: torch.Tensor, exits: Iterable[int],
                    thresholds, n_blocks: int | None = None) -> dict:
    """Real early exit with several exits over batches [n_batches, B, T]: PPL, the share of tokens answered
    at each exit and at the last layer (keyed by layer), and Compute % by layer count and by
    multiply-adds (`multi_exit_macs`). With `n_blocks`, the CE sums and the token counts answered at each
    layer of that many contiguous blocks of tokens (`block_ce`, `block_layers`), as `real_exit_eval`."""
    from ease.exits import check_exits

    exits = check_exits(exits, model.cfg.n_layers)
    was_training = model.training
    model.eval()
    ce, where = [], []
    for x, y in zip(inputs, targets):
        out = multi_exit_forward(model, x, exits, thresholds)
        ce.append(_token_ce(out["logits"], y))
        where.append(out["layers"].reshape(-1))
    model.train(was_training)
    where, ce = torch.cat(where).cpu(), torch.cat(ce).cpu()
    L = model.cfg.n_layers
    shares = {layer: (where == layer).double().mean().item() for layer in (*exits, L)}
    macs = multi_exit_macs(model.cfg, exits)
    out = {"ppl": math.exp(ce.double().mean().item()), "shares": shares,
           "compute_frac": sum(share * layer / L for layer, share in shares.items()),
           "flop_compute_frac": sum(share * macs[layer] for layer, share in shares.items()) / macs["full"]}
    if n_blocks is not None:
        bounds = block_bounds(ce.numel(), n_blocks)
        out["block_ce"] = per_block(ce, bounds)
        out["block_layers"] = {layer: [round(v) for v in per_block(where == layer, bounds)] for layer in (*exits, L)}
    return out


# ----------------------------------------------------------------------------- decoding

@dataclass
class Generation:
    """Output of `generate` for B prompts and N new tokens."""

    tokens: torch.Tensor  # [B, N] generated ids
    layers: torch.Tensor  # [B, N] the layer whose prediction gave each token (exit_layer or n_layers)
    logits: torch.Tensor  # [B, N, V] the logits each token was chosen from
    prompt_lengths: list[int]


def _prompt_rows(prompts, vocab_size: int) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() not in (1, 2) or prompts.dtype != torch.long:
            raise ValueError(f"prompts as a tensor must be a LongTensor [T] or [B, T], got {prompts.dtype} "
                             f"of shape {tuple(prompts.shape)}")
        prompts = prompts.tolist() if prompts.dim() == 2 else [prompts.tolist()]
    if not isinstance(prompts, Sequence) or isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists (or a LongTensor)")
    rows = []
    for i, p in enumerate(prompts):
        p = p.tolist() if isinstance(p, torch.Tensor) else p
        if isinstance(p, str) or not isinstance(p, Sequence) or len(p) == 0:
            raise ValueError(f"prompt {i} must be a non-empty list of token ids, got {p!r}")
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in p):
            raise ValueError(f"prompt {i} holds something that is not a token id within 0..{vocab_size - 1}: {p!r}")
        rows.append(list(p))
    return rows


def _pick(logits: torch.Tensor, greedy: bool, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


SCHEDULES = ("lockstep", "grouped")
# "grouped": the deeper layers run once this share of the unfinished rows waits for them (or nobody can go on).
# Waiting for every row saves deep passes but costs exit-layer passes for the last few ready rows; a cost model
# (one pass of a layer costs about the same for 1 row as for 16: the weights are streamed either way) puts the
# best share near 3/4 for rows that exit half of their tokens independently.
GROUP_WAIT = 0.75


@torch.inference_mode()
def generate(model: EarlyExitLM, prompts, max_new_tokens: int, threshold: float | None = None,
             exit_layer: int = 1, greedy: bool = True, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, schedule: str = "lockstep") -> Generation:
    """Autoregressive decoding with real early exit and a per-layer KV cache.

    schedule "lockstep": every row feeds one token per step (below). "grouped": rows advance on
    their own; a row whose token exits goes on at once, a row whose token needs the deeper layers
    waits, and the deeper layers run once for all waiting rows when GROUP_WAIT of the unfinished rows
    wait or no row can go on. Each row's
    output is the same as with "lockstep" (rows never interact); the point is speed: a decoding
    step of a small batch costs about as much for one row as for all (it streams the same
    weights), so the deeper layers pay off only when they run for many rows at once.

    prompts: a list of token-id lists (lengths may differ; left-padded) or a LongTensor [T] / [B, T].
    threshold None or > 1: full depth, no exit head computed. Each step runs layers 1..exit_layer
    for the batch and the head there; rows with confidence >= threshold take their token from it
    (the deeper layers only get K/V from the copied state), the other rows are index-selected and
    run through the deeper layers and the last head. The prompt is prefilled in one pass with the
    same rule. greedy=False samples from softmax(logits / temperature), restricted to the top_k
    most likely tokens when top_k is set; pass a torch.Generator (on the model's device) to make
    sampling reproducible.
    """
    cfg = model.cfg
    _decides(threshold)
    _check_exit_layer(model, exit_layer)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not greedy:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or not 1 <= top_k <= cfg.vocab_size):
            raise ValueError(f"top_k must be None or an integer within 1..{cfg.vocab_size}, got {top_k!r}")
    rows = _prompt_rows(prompts, cfg.vocab_size)
    dev = model.head.weight.device
    B, N = len(rows), max_new_tokens
    lengths = torch.tensor([len(r) for r in rows], device=dev)
    P = max(len(r) for r in rows)
    idx = torch.zeros(B, P, dtype=torch.long, device=dev)
    valid = torch.ones(B, P + N, dtype=torch.bool, device=dev)
    for b, r in enumerate(rows):  # left padding: every row's last prompt token in column P-1
        idx[b, P - len(r):] = torch.tensor(r, device=dev)
        valid[b, :P - len(r)] = False
    tokens = torch.empty(B, N, dtype=torch.long, device=dev)
    layers = torch.empty(B, N, dtype=torch.long, device=dev)
    chosen_from = torch.empty(B, N, cfg.vocab_size, device=dev)
    was_training = model.training
    model.eval()
    if N:
        cache = _Cache(model, B, P + N, exit_layer, valid)
        pos = (torch.arange(P, device=dev) - (P - lengths)[:, None]).clamp(min=0)  # from each row's first token
        logits, exits = _forward(model, idx, pos, cache, threshold)
        last, exited = logits[:, -1], exits[:, -1]
        next_pos = lengths[:, None].clone()
        if schedule == "grouped" and _decides(threshold) and exit_layer < cfg.n_layers:
            pick = lambda lg: _pick(lg, greedy, temperature, top_k, generator)  # noqa: E731
            _grouped(model, cache, threshold, last, exited, next_pos[:, 0], pick, tokens, layers, chosen_from)
            model.train(was_training)
            return Generation(tokens, layers, chosen_from, [len(r) for r in rows])
        for i in range(N):
            tok = _pick(last, greedy, temperature, top_k, generator)
            tokens[:, i] = tok
            layers[:, i] = torch.where(exited, exit_layer, cfg.n_layers)
            chosen_from[:, i] = last
            if i + 1 < N:  # the last token is never fed back
                logits, exits = _forward(model, tok[:, None], next_pos, cache, threshold)
                last, exited = logits[:, 0], exits[:, 0]
                next_pos += 1
    model.train(was_training)
    return Generation(tokens, layers, chosen_from, [len(r) for r in rows])


def _grouped(model: EarlyExitLM, cache: _Cache, threshold: float, last: torch.Tensor, exited: torch.Tensor,
             pos: torch.Tensor, pick, tokens: torch.Tensor, layers: torch.Tensor, chosen_from: torch.Tensor) -> None:
    """The "grouped" schedule of `generate`, after the prefill: fills tokens, layers and chosen_from.

    Every pass runs over all B rows (a row with nothing to do computes a throw-away query; in a
    small batch that costs little, and it avoids gathering the cache by rows); only the rows that
    take part write keys and values, each at its own next column. Exited positions' deeper K/V are
    deferred as in `_forward` and computed before any deep query.
    """
    blocks, e, L = model.blocks, cache.exit_layer, model.cfg.n_layers
    B, N = tokens.shape
    dev = tokens.device
    col = torch.full((B,), cache.length, dtype=torch.long, device=dev)  # each row's next column
    count = torch.zeros(B, dtype=torch.long, device=dev)  # tokens emitted per row
    waiting = torch.zeros(B, dtype=torch.bool, device=dev)
    h_wait = torch.zeros(B, 1, model.cfg.dim, device=dev, dtype=cache.k.dtype)
    keys = torch.arange(cache.k.size(3), device=dev)
    every = torch.arange(B, device=dev)

    def emit(rows: torch.Tensor, logits: torch.Tensor, layer: int) -> None:
        tokens[rows, count[rows]] = pick(logits)
        layers[rows, count[rows]] = layer
        chosen_from[rows, count[rows]] = logits
        count[rows] += 1

    def run(h: torch.Tensor, layer_range, rows: torch.Tensor) -> torch.Tensor:
        """h [B, 1, C] through `layer_range` at each row's column; `rows` write their K/V there."""
        end = int(col.max()) + 1
        c = col[:, None]
        mask = ((keys[:end] <= c) & (cache.valid[:, :end] | (keys[:end] == c)))[:, None, None]
        cos, sin = cache.cos[pos][:, None, None], cache.sin[pos][:, None, None]
        for layer in layer_range:
            block = blocks[layer]
            a = block.norm1(h) if block.pre_norm else h
            qkv = block.attn.qkv(a).view(B, 1, 3, cache.n_heads, cache.head_dim).permute(2, 0, 3, 1, 4)
            q, k = apply_rotary(qkv[:2], cos, sin)
            cache.k[layer, rows, :, col[rows]] = k[rows, :, 0]
            cache.v[layer, rows, :, col[rows]] = qkv[2][rows, :, 0]
            h = _finish_block(block, h, _attend(block, cache, layer, q, end, None, mask, False))
        return h

    emit(every, last, L)  # the prefill's predictions: row by row from the exit layer or the last one
    layers[exited, 0] = e
    while True:
        ready = (count < N) & ~waiting
        if ready.any():  # the next token of every ready row through layers 1..e
            rows = ready.nonzero().squeeze(1)
            h = run(model.embed(tokens[every, (count - 1).clamp(min=0)])[:, None], range(e), rows)
            logits = model.head(model.final_norm(h[:, 0]))
            confident = F.log_softmax(logits.float(), dim=-1).amax(dim=-1).exp() >= threshold
            out, stay = (ready & confident).nonzero().squeeze(1), (ready & ~confident)
            if out.numel():  # their deeper K/V wait until a deep query needs them
                cache.pending[out, col[out]] = True
                cache.pending_h[out, col[out]] = h[out, 0]
                cache.pending_pos[out, col[out]] = pos[out]
                cache.has_pending = True
                emit(out, logits[out], e)
                col[out] += 1
                pos[out] += 1
            h_wait[stay] = h[stay]
            waiting |= stay
        unfinished = count < N
        if waiting.any() and (waiting.sum() >= GROUP_WAIT * unfinished.sum() or not (unfinished & ~waiting).any()):
            rows = waiting.nonzero().squeeze(1)
            _skip_kv(cache)
            h = run(h_wait, range(e, L), rows)
            emit(rows, model.head(model.final_norm(h[rows, 0])), L)
            col[rows] += 1
            pos[rows] += 1
            waiting[:] = False
        if not (count < N).any():
            return


@dataclass
class DecodedText:
    prompt: str
    text: str  # the generated characters only
    layers: list[int]  # per generated character: the layer its prediction came from


def decode_text(model: EarlyExitLM, vocab: Sequence[str], prompts: str | Sequence[str], max_new_tokens: int,
                **kwargs) -> list[DecodedText]:
    """`generate` for character-level text: prompt strings in, generated strings and per-character layers out."""
    if len(vocab) != model.cfg.vocab_size:
        raise ValueError(f"vocab has {len(vocab)} entries but the model's vocabulary size is {model.cfg.vocab_size}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    index = {ch: i for i, ch in enumerate(vocab)}
    for p in prompts:
        if not isinstance(p, str) or not p:
            raise ValueError(f"prompts must be non-empty strings, got {p!r}")
        unknown = sorted(set(p) - set(index))
        if unknown:
            raise ValueError(f"prompt {p[:40]!r} has characters outside the vocabulary: {unknown}")
    gen = generate(model, [[index[ch] for ch in p] for p in prompts], max_new_tokens, **kwargs)
    return [DecodedText(p, "".join(vocab[t] for t in toks), lays)
            for p, toks, lays in zip(prompts, gen.tokens.tolist(), gen.layers.tolist())]


# ----------------------------------------------------------------------------- compute accounting

def token_macs(cfg: ModelConfig, exit_layer: int = 1, decide: bool = True, context: float = 0.0) -> dict[str, float]:
    """Multiply-adds per token of full-depth inference, an exited token and a deep token.

    Per block: qkv 3·d² + output projection d² + SwiGLU 3·d·(ffn_mult·d), plus attention
    2·d·context (scores and weighted values over `context` keys). context=0 leaves attention out,
    which is fair for these models at short contexts: at d=64 and a mean context of 32 keys it is
    6% of a block (1.6% at d=256). The head is vocab·d. Norms, rotary, softmax, residuals and the
    embedding lookup are O(d) per token and ignored.
      full  = L·block + head                       (the reference: no decision)
      exit  = e·block + head + (L-e)·2d²           (head at e to decide; K/V of each skipped layer)
      deep  = L·block + head·(2 if deciding and e < L else 1)
    With decide=False (threshold None or > 1) nobody exits and deep = full.
    """
    L, d, e = cfg.n_layers, cfg.dim, exit_layer
    if not 1 <= e <= L:
        raise ValueError(f"exit_layer must be within 1..{L}, got {e}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    block = 4 * d * d + 3 * d * cfg.ffn_mult * d + 2 * d * context
    head = cfg.vocab_size * d
    return {"block": block, "kv": 2 * d * d, "head": head, "full": L * block + head,
            "exit": e * block + head + (L - e) * 2 * d * d,
            "deep": L * block + head * (2 if decide and e < L else 1)}


def flop_compute_frac(shallow_frac: float, cfg: ModelConfig, exit_layer: int = 1, decide: bool = True,
                      context: float = 0.0) -> float:
    """Multiply-adds per token relative to full-depth inference, for a fraction `shallow_frac` of exited tokens."""
    if not 0 <= shallow_frac <= 1:
        raise ValueError(f"shallow_frac must be within 0..1, got {shallow_frac}")
    if not decide and shallow_frac > 0:
        raise ValueError("tokens can only exit when the exit is decided (decide=True)")
    m = token_macs(cfg, exit_layer, decide, context)
    return (shallow_frac * m["exit"] + (1 - shallow_frac) * m["deep"]) / m["full"]


def compute_fracs(shallow_frac: float, cfg: ModelConfig, exit_layer: int = 1, decide: bool = True,
                  context: float = 0.0) -> dict[str, float]:
    """Both cost measures: layer count (as `ease.exits.route`) and multiply-adds (`flop_compute_frac`)."""
    flops = flop_compute_frac(shallow_frac, cfg, exit_layer, decide, context)
    return {"compute_frac": layer_compute_frac(shallow_frac, exit_layer, cfg.n_layers),
            "flop_compute_frac": flops}


# ----------------------------------------------------------------------------- self-speculative decoding

@dataclass
class SpeculativeGeneration:
    """Output of `speculative_generate`: the full model's greedy tokens and how the drafts fared."""

    tokens: torch.Tensor  # [B, N]: token for token the full model's greedy output
    drafted: int  # draft tokens proposed by the exit layer (per row)
    accepted: int  # of those, kept (agreeing with the full model)
    rounds: int  # verification passes of the deeper layers

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class _SpecCache:
    """Keys and values of every layer for B left-padded rows decoded in lockstep (one column index)."""

    def __init__(self, model: EarlyExitLM, valid: torch.Tensor, pad: torch.Tensor):
        cfg, dev = model.cfg, model.head.weight.device
        B, capacity = valid.shape
        self.n_heads, self.head_dim = cfg.n_heads, cfg.dim // cfg.n_heads
        shape = (cfg.n_layers, B, self.n_heads, capacity, self.head_dim)
        self.k = torch.zeros(shape, device=dev, dtype=model.head.weight.dtype)
        self.v = torch.zeros_like(self.k)
        self.valid, self.pad = valid, pad
        cos, sin = rotary_tables(capacity, self.head_dim)
        self.cos, self.sin = cos.to(dev), sin.to(dev)

    def layer(self, block, layer: int, h: torch.Tensor, start: int) -> torch.Tensor:
        """Block `layer` (0-based) on new columns start..start+T of h [B, T, C], writing their K/V."""
        B, T, C = h.shape
        cols = torch.arange(start, start + T, device=h.device)
        pos = (cols[None, :] - self.pad[:, None]).clamp(min=0)  # each row's positions count from its first token
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [B, 1, T, D/2]
        a = block.norm1(h) if block.pre_norm else h
        qkv = block.attn.qkv(a).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(qkv[:2], cos, sin)
        self.k[layer, :, :, start:start + T], self.v[layer, :, :, start:start + T] = k, qkv[2]
        end = start + T
        keys = torch.arange(end, device=h.device)
        allowed = (keys[None, :] <= cols[:, None])[None] & (self.valid[:, None, :end] | (keys[None, :] == cols[:, None])[None])
        y = F.scaled_dot_product_attention(q, self.k[layer, :, :, :end], self.v[layer, :, :, :end],
                                           attn_mask=allowed[:, None])
        return _finish_block(block, h, block.attn.out(y.transpose(1, 2).reshape(B, T, C)))


@torch.inference_mode()
def speculative_generate(model: EarlyExitLM, prompts, max_new_tokens: int, draft: int = 4,
                         exit_layer: int = 1) -> SpeculativeGeneration:
    """Lossless self-speculative greedy decoding.

    Layers 1..exit_layer and the shared head there draft `draft` tokens one by one; the deeper layers
    then check them in one pass over the drafted positions, reusing the keys and values the draft
    already wrote for layers 1..exit_layer (the draft *is* the full model's lower part, so nothing
    is recomputed there). The longest prefix of drafts that agrees with the full model's own greedy
    choices is kept, plus the full model's next token, so the output is the full model's greedy output
    token for token (up to floating-point near-ties: the deeper layers see several positions in one
    matrix product instead of one at a time). Rows of a batch are decoded in lockstep: each round keeps
    the shortest agreeing prefix of any row (the others' extra agreeing drafts are redone next round).
    """
    cfg = model.cfg
    _check_exit_layer(model, exit_layer)
    if exit_layer >= cfg.n_layers:
        raise ValueError(f"speculative decoding drafts with a layer below the last, got exit_layer={exit_layer} "
                         f"of {cfg.n_layers}")
    for name, value, low in (("max_new_tokens", max_new_tokens, 0), ("draft", draft, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    rows = _prompt_rows(prompts, cfg.vocab_size)
    dev = model.head.weight.device
    B, N, P = len(rows), max_new_tokens, max(len(r) for r in rows)
    capacity = P + N + draft
    idx = torch.zeros(B, P, dtype=torch.long, device=dev)
    valid = torch.ones(B, capacity, dtype=torch.bool, device=dev)
    pad = torch.tensor([P - len(r) for r in rows], device=dev)
    for b, r in enumerate(rows):
        idx[b, P - len(r):] = torch.tensor(r, device=dev)
        valid[b, :P - len(r)] = False
    was_training = model.training
    model.eval()
    cache = _SpecCache(model, valid, pad)
    blocks, e = model.blocks, exit_layer
    head = lambda h: model.head(model.final_norm(h))  # noqa: E731 - the shared head, as EarlyExitLM reads a layer

    def lower(tok: torch.Tensor, start: int) -> torch.Tensor:
        h = model.embed(tok)
        for layer in range(e):
            h = cache.layer(blocks[layer], layer, h, start)
        return h

    def upper(h: torch.Tensor, start: int) -> torch.Tensor:
        for layer in range(e, cfg.n_layers):
            h = cache.layer(blocks[layer], layer, h, start)
        return head(h)

    out = torch.empty(B, N, dtype=torch.long, device=dev)
    drafted = accepted = rounds = 0
    if N:
        nxt = upper(lower(idx, 0), 0)[:, -1].argmax(-1)  # prefill: the full model's first token
        n, done = P, 0  # columns cached; tokens emitted
        while done < N:
            # draft: d_0 is the full model's token; the exit layer proposes d_1..d_k
            k = min(draft, N - done - 1)
            toks, states = [nxt], []
            for j in range(k + 1):
                h = lower(toks[-1][:, None], n + j)
                states.append(h)
                if j < k:
                    toks.append(head(h)[:, 0].argmax(-1))
            # verify d_0..d_k's successors in one pass of the deeper layers over columns n..n+k
            full = upper(torch.cat(states, dim=1), n).argmax(-1)  # [B, k+1]: the full model's choice after each
            rounds += 1
            agree = torch.stack(toks[1:], dim=1) == full[:, :k] if k else torch.zeros(B, 0, dtype=torch.bool, device=dev)
            m = int(agree.long().cumprod(dim=1).sum(dim=1).min()) if k else 0  # drafts kept by every row
            drafted += k
            accepted += m
            emitted = torch.stack(toks[:m + 1], dim=1)  # d_0..d_m: all the full model's own choices
            out[:, done:done + m + 1] = emitted
            done += m + 1
            n += m + 1  # cache columns beyond are stale and overwritten next round
            nxt = full[:, m]
    model.train(was_training)
    return SpeculativeGeneration(out, drafted, accepted, rounds)
