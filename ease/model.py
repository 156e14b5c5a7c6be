"""A small causal transformer LM whose one shared output head can read any layer.

Defaults follow the original experiment code: post-norm blocks
(h = norm(h + attn(h)); h = norm(h + ffn(h))), RMSNorm, rotary positions, a SwiGLU FFN of
4×dim, no biases, no extra norm before the head. `norm="pre"` gives pre-norm blocks with a
final norm before the head instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int
    n_layers: int = 3
    dim: int = 64
    n_heads: int = 4
    max_seq_len: int = 64
    norm: str = "post"
    ffn_mult: int = 4
    norm_eps: float = 1e-6


def rotary_tables(seq_len: int, head_dim: int, base: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [seq_len, head_dim/2], computed once per model."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x [..., T, D] by position-dependent angles.

    Computed as x·[cos, cos] + [x2, x1]·[-sin, sin]: exactly (x1·cos - x2·sin, x2·cos + x1·sin) in
    floating point, with two products instead of four and one copy instead of a split and a join.
    """
    cos2, sin2 = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)  # [T, D]: small
    return x * cos2 + x.roll(x.size(-1) // 2, dims=-1) * sin2


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(qkv[:2], cos, sin)  # q and k rotated together: half the elementwise calls
        v = qkv[2]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ffn_mult * cfg.dim
        self.hidden = hidden
        self.gate_up = nn.Linear(cfg.dim, 2 * hidden, bias=False)  # gate and up weights, stored as one matrix
        self.down = nn.Linear(hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two products into separate contiguous outputs: a single [tokens, 2·hidden] output outgrows the
        # core's cache (slower product) and its halves are strided views (slower SiLU and product).
        w_gate, w_up = self.gate_up.weight.split(self.hidden)
        return self.down(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = Attention(cfg)
        self.ffn = SwiGLU(cfg)
        self.norm1 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.norm2 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            h = h + self.attn(self.norm1(h), cos, sin)
            return h + self.ffn(self.norm2(h))
        h = self.norm1(h + self.attn(h, cos, sin))
        return self.norm2(h + self.ffn(h))


class EarlyExitLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre', got {cfg.norm!r}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # Pre-norm hidden states are un-normalised, so that variant reads them through one shared final norm.
        self.final_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)  # shared by every exit
        cos, sin = rotary_tables(cfg.max_seq_len, cfg.dim // cfg.n_heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        std = 1.0 / math.sqrt(self.cfg.dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, idx: torch.Tensor, layers: Iterable[int] | None = None, **recipe) -> dict[int, torch.Tensor]:
        """Logits {layer: [B, T, vocab]} for the requested layers (1-indexed; default: the last).

        Blocks above the highest requested layer are not run, and the head is applied only to the
        requested layers, so a layer nobody asks for costs no head matmul. `recipe`: see `hidden_states`.
        """
        return {layer: self.head(h) for layer, h in self.hidden_states(idx, layers, **recipe).items()}

    def hidden_states(self, idx: torch.Tensor, layers: Iterable[int] | None = None, skip: torch.Tensor | None = None,
                      propagate: tuple[int, float] | None = None) -> dict[int, torch.Tensor]:
        """What the head reads at each requested layer: {layer: [B, T, dim]} (see `forward`).

        Training recipes (ease.train; both leave the default path untouched):
        - skip [B, n_layers] bool: layer dropout; a skipped block passes its row's input through.
        - propagate (exit_layer, threshold): state propagation as real early exit does it; tokens whose
          max softmax probability at exit_layer is >= threshold keep that layer's state in every deeper
          layer (the decision carries no gradient; later tokens still attend to them).
        """
        wanted = sorted(set(layers)) if layers is not None else [self.cfg.n_layers]
        if not wanted or wanted[0] < 1 or wanted[-1] > self.cfg.n_layers:
            raise ValueError(f"layers must be within 1..{self.cfg.n_layers}, got {wanted}")
        T = idx.size(1)
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        h = self.embed(idx)
        states = {}
        keep = None  # [B, T, 1]: tokens that have exited (propagate)
        for layer, block in enumerate(self.blocks[:wanted[-1]], start=1):
            new = block(h, cos, sin)
            if skip is not None:
                new = torch.where(skip[:, layer - 1, None, None], h, new)
            h = new if keep is None else torch.where(keep, h, new)
            if propagate is not None and layer == propagate[0]:
                with torch.no_grad():
                    confidence = F.softmax(self.head(self.final_norm(h)).float(), dim=-1).amax(dim=-1)
                keep = (confidence >= propagate[1])[..., None]
            if layer in wanted:
                states[layer] = self.final_norm(h)
        return states
