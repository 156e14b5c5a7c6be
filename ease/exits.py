"""Confidence-based early exit and its metrics.

A token exits at `exit_layer` when the maximum softmax probability there is >= threshold;
otherwise it takes the last layer's prediction. One forward pass collects, per token, the
exit layer's confidence and both layers' cross-entropies; any number of thresholds is then
routed from those tensors without running the model again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F


@dataclass
class TokenStats:
    """Per-token quantities of one evaluation pass (flat tensors of equal length)."""

    confidence: torch.Tensor  # max softmax probability at the exit layer
    ce_exit: torch.Tensor  # cross-entropy of the exit layer's prediction
    ce_last: torch.Tensor  # cross-entropy of the last layer's prediction
    exit_layer: int
    n_layers: int
    agree: torch.Tensor | None = None  # exit layer's argmax == last layer's argmax

    def __len__(self) -> int:
        return self.confidence.numel()


def _ppl(ce: torch.Tensor) -> float:
    return math.exp(ce.double().mean().item())


def layer_compute_frac(shallow_frac: float, exit_layer: int, n_layers: int) -> float:
    """Compute % by layer count: exit_layer/n_layers of the network for an exited token, all of it otherwise."""
    return shallow_frac * exit_layer / n_layers + (1.0 - shallow_frac)


def route(stats: TokenStats, threshold: float) -> dict[str, float]:
    """PPL, shallow fraction and compute fraction of routing at one threshold."""
    exits = stats.confidence >= threshold
    ce = torch.where(exits, stats.ce_exit, stats.ce_last)
    shallow = exits.double().mean().item()
    return {"threshold": float(threshold), "ppl": _ppl(ce), "shallow_frac": shallow,
            "compute_frac": layer_compute_frac(shallow, stats.exit_layer, stats.n_layers)}


def sweep(stats: TokenStats, thresholds: Iterable[float]) -> list[dict[str, float]]:
    """`route` at every threshold, from the same per-token tensors (no extra forward pass)."""
    return [route(stats, t) for t in thresholds]


def summary(stats: TokenStats, threshold: float) -> dict[str, float]:
    """Routed metrics at `threshold`, plus the PPL of every token at the exit layer and at the last layer."""
    metrics = route(stats, threshold)
    del metrics["threshold"]
    metrics["ppl_shallow"] = _ppl(stats.ce_exit)
    metrics["ppl_deep"] = _ppl(stats.ce_last)
    return metrics


@torch.no_grad()
def collect_token_stats(model, inputs: torch.Tensor, targets: torch.Tensor, exit_layer: int = 1,
                        device: str | torch.device = "cpu") -> TokenStats:
    """One pass over batches [n_batches, B, T] collecting the exit layer's confidence and both CEs."""
    n_layers = model.cfg.n_layers
    if not 1 <= exit_layer <= n_layers:
        raise ValueError(f"exit_layer must be within 1..{n_layers}, got {exit_layer}")
    was_training = model.training
    model.eval()
    conf, ce_exit, ce_last, agree = [], [], [], []
    for x, y in zip(inputs, targets):
        x, y = x.to(device), y.reshape(-1).to(device)
        logits = model(x, layers=(exit_layer, n_layers))
        log_p_exit = F.log_softmax(logits[exit_layer].reshape(y.numel(), -1).float(), dim=-1)
        log_p_last = F.log_softmax(logits[n_layers].reshape(y.numel(), -1).float(), dim=-1)
        conf.append(log_p_exit.max(dim=-1).values.exp())
        ce_exit.append(-log_p_exit.gather(1, y[:, None]).squeeze(1))
        ce_last.append(-log_p_last.gather(1, y[:, None]).squeeze(1))
        agree.append(log_p_exit.argmax(dim=-1) == log_p_last.argmax(dim=-1))
    model.train(was_training)
    return TokenStats(torch.cat(conf).cpu(), torch.cat(ce_exit).cpu(), torch.cat(ce_last).cpu(),
                      exit_layer, n_layers, torch.cat(agree).cpu())


# --- other confidence measures and oracles -------------------------------------------------------
# Each measure is a score per token, higher meaning "more sure at the exit layer", so every
# measure routes the same way: the tokens with the highest scores exit.
MEASURES = {
    "max_prob": "maximum softmax probability at the exit layer (the document's rule)",
    "entropy": "negative entropy of the exit layer's distribution",
    "margin": "top-1 minus top-2 probability at the exit layer",
    "cosine": "cosine similarity of the exit layer's and the last layer's hidden states",
}


@dataclass
class ExitMeasures:
    """Per-token scores of every measure, both layers' CEs and whether their argmaxes agree."""

    scores: dict[str, torch.Tensor]
    ce_exit: torch.Tensor
    ce_last: torch.Tensor
    agree: torch.Tensor  # exit layer's argmax == last layer's argmax

    def __len__(self) -> int:
        return self.ce_exit.numel()


def measure_scores(logits_exit: torch.Tensor, hidden_exit: torch.Tensor,
                   hidden_last: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scores of every measure in MEASURES for flat [N, vocab] logits and [N, dim] states."""
    log_p = F.log_softmax(logits_exit.float(), dim=-1)
    p = log_p.exp()
    top2 = p.topk(2, dim=-1).values if p.size(-1) > 1 else torch.cat([p, torch.zeros_like(p)], dim=-1)
    return {
        "max_prob": top2[:, 0],
        "entropy": (p * log_p).sum(dim=-1),  # = -entropy; 0·log 0 is 0 here as log_softmax is finite
        "margin": top2[:, 0] - top2[:, 1],
        "cosine": F.cosine_similarity(hidden_exit.float(), hidden_last.float(), dim=-1),
    }


@torch.no_grad()
def collect_exit_measures(model, inputs: torch.Tensor, targets: torch.Tensor, exit_layer: int = 1,
                          device: str | torch.device = "cpu") -> ExitMeasures:
    """One pass over batches [n_batches, B, T]: every measure's score and both layers' CEs per token."""
    n_layers = model.cfg.n_layers
    if not 1 <= exit_layer < n_layers:
        raise ValueError(f"exit_layer must be within 1..{n_layers - 1} (below the last layer), got {exit_layer}")
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"ce_exit": [], "ce_last": [], "agree": []}
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in MEASURES}
    for x, y in zip(inputs, targets):
        x, y = x.to(device), y.reshape(-1).to(device)
        states = model.hidden_states(x, layers=(exit_layer, n_layers))
        h_exit, h_last = (states[k].reshape(y.numel(), -1) for k in (exit_layer, n_layers))
        logits_exit, logits_last = model.head(h_exit).float(), model.head(h_last).float()
        for name, value in measure_scores(logits_exit, h_exit, h_last).items():
            scores[name].append(value)
        parts["ce_exit"].append(F.cross_entropy(logits_exit, y, reduction="none"))
        parts["ce_last"].append(F.cross_entropy(logits_last, y, reduction="none"))
        parts["agree"].append(logits_exit.argmax(-1) == logits_last.argmax(-1))
    model.train(was_training)
    cat = {k: torch.cat(v).cpu() for k, v in parts.items()}
    return ExitMeasures({k: torch.cat(v).cpu() for k, v in scores.items()}, cat["ce_exit"], cat["ce_last"],
                        cat["agree"])


def matched_ppl(scores: torch.Tensor, ce_exit: torch.Tensor, ce_last: torch.Tensor,
                fractions: Iterable[float]) -> list[float]:
    """Routed PPL when the given fraction of tokens, those with the highest scores, exits early.

    Ranking by score puts every measure on the same axis (Shallow%), whatever its scale: this is
    sweeping each measure's threshold and reading the curve at matched Shallow%. Ties keep token
    order (stable sort), so the result is deterministic.
    """
    n = ce_exit.numel()
    if not (scores.numel() == n == ce_last.numel()) or n == 0:
        raise ValueError("scores, ce_exit and ce_last must be non-empty and of the same length")
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    gain = (ce_exit.double() - ce_last.double())[order]  # CE change when that token exits
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), gain.cumsum(0)])
    base = ce_last.double().sum()
    out = []
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"shallow fractions must be within [0, 1], got {f}")
        k = int(round(f * n))
        out.append(math.exp(((base + cum[k]) / n).item()))
    return out


def oracle_ppl(ce_exit: torch.Tensor, ce_last: torch.Tensor, fractions: Iterable[float]) -> list[float]:
    """The best PPL any exit rule can reach at each Shallow%: the tokens that exit are those whose
    exit-layer prediction loses least (or gains most) against the last layer's."""
    return matched_ppl(ce_last.double() - ce_exit.double(), ce_exit, ce_last, fractions)


# --- held-out text: totals per contiguous block, for intervals that resample the text ------------
def block_bounds(n_tokens: int, n_blocks: int) -> list[int]:
    """Edges of `n_blocks` contiguous blocks of nearly equal size over `n_tokens` tokens (token order)."""
    if not 1 <= n_blocks <= n_tokens:
        raise ValueError(f"n_blocks must be within 1..{n_tokens} (the number of tokens), got {n_blocks}")
    return torch.linspace(0, n_tokens, n_blocks + 1).round().long().tolist()


def per_block(values: torch.Tensor, bounds: list[int]) -> list[float]:
    """The sum of `values` (flat, in token order) over each block between consecutive `bounds`."""
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), values.double().cumsum(0)])
    return [(cum[b] - cum[a]).item() for a, b in zip(bounds, bounds[1:])]


def block_sums(stats: TokenStats, thresholds: Iterable[float], n_blocks: int) -> dict[str, list]:
    """Sums per contiguous block of tokens (token order kept), from which any block resample's routed
    PPL, Shallow% and oracle PPLs follow exactly: a block's PPL contribution is its CE sum, its weight
    its token count.

    Keys: tokens, ce_exit, ce_last, ce_label_oracle (each token's better layer), consistency_exits and
    ce_consistency (exit where the exit layer's argmax equals the last layer's), and per threshold of
    `thresholds` (max-prob routing) sweep_exits and sweep_ce: lists [threshold][block].
    """
    bounds = block_bounds(len(stats), n_blocks)
    ce_exit, ce_last, conf = stats.ce_exit.double(), stats.ce_last.double(), stats.confidence
    sums = {"tokens": [b - a for a, b in zip(bounds, bounds[1:])],
            "ce_exit": per_block(ce_exit, bounds), "ce_last": per_block(ce_last, bounds),
            "ce_label_oracle": per_block(torch.minimum(ce_exit, ce_last), bounds),
            "consistency_exits": [round(v) for v in per_block(stats.agree, bounds)],
            "ce_consistency": per_block(torch.where(stats.agree, ce_exit, ce_last), bounds),
            "sweep_exits": [], "sweep_ce": []}
    for t in thresholds:
        exits = conf >= t
        sums["sweep_exits"].append([round(v) for v in per_block(exits, bounds)])
        sums["sweep_ce"].append(per_block(torch.where(exits, ce_exit, ce_last), bounds))
    return sums


def matched_exits(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Which tokens exit when the given fraction of them, those with the highest scores, does (as in
    `matched_ppl`: stable ranking, so ties keep token order)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"shallow fractions must be within [0, 1], got {fraction}")
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    exits = torch.zeros(scores.numel(), dtype=torch.bool)
    exits[order[: int(round(fraction * scores.numel()))]] = True
    return exits


@torch.no_grad()
def layer_losses(model, inputs: torch.Tensor, targets: torch.Tensor, layers: Iterable[int],
                 device: str | torch.device = "cpu") -> dict[int, float]:
    """Mean cross-entropy of each layer in `layers` over batches [n_batches, B, T]."""
    layers = sorted(set(layers))
    was_training = model.training
    model.eval()
    totals = {layer: torch.zeros((), dtype=torch.float64) for layer in layers}
    for x, y in zip(inputs, targets):
        y = y.reshape(-1).to(device)
        for layer, logits in model(x.to(device), layers=layers).items():
            totals[layer] += F.cross_entropy(logits.reshape(y.numel(), -1).float(), y, reduction="sum").double().cpu()
    model.train(was_training)
    return {layer: (total / targets.numel()).item() for layer, total in totals.items()}


# --- several exits: a token leaves at the first exit whose confidence passes that exit's threshold ----
def check_exits(exits: Iterable[int], n_layers: int) -> tuple[int, ...]:
    """Exit layers as a strictly increasing tuple within 1..n_layers-1 (the last layer is always the answer)."""
    exits = tuple(exits)
    if not exits or any(isinstance(e, bool) or not isinstance(e, int) for e in exits) \
            or list(exits) != sorted(set(exits)) or exits[0] < 1 or exits[-1] >= n_layers:
        raise ValueError(f"exits must be increasing whole layers within 1..{n_layers - 1}, got {exits}")
    return exits


def exit_thresholds(thresholds, n_exits: int) -> list[float]:
    """One threshold per exit: a number is used at every exit; above 1 (or None) means that exit never fires."""
    if thresholds is None or isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
        thresholds = [thresholds] * n_exits
    thresholds = [math.inf if t is None else t for t in thresholds]
    if len(thresholds) != n_exits or any(isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0
                                         or math.isnan(t) for t in thresholds):
        raise ValueError(f"thresholds must be one number >= 0 or one per exit ({n_exits}), got {thresholds}")
    return [float(t) for t in thresholds]


@dataclass
class MultiExitStats:
    """Per-token quantities of one pass with several exits (each exit reads the full forward's states)."""

    exits: tuple[int, ...]
    n_layers: int
    confidence: torch.Tensor  # [n_exits, N] max softmax probability at each exit
    ce: torch.Tensor  # [n_exits + 1, N] cross-entropy at each exit, then at the last layer
    agree: torch.Tensor | None = None  # [n_exits, N] each exit's argmax == the last layer's

    def __len__(self) -> int:
        return self.ce.size(1)


@torch.no_grad()
def collect_multi_exit_stats(model, inputs: torch.Tensor, targets: torch.Tensor, exits: Iterable[int],
                             device: str | torch.device = "cpu") -> MultiExitStats:
    """One pass over batches [n_batches, B, T]: every exit's confidence and every exit's and the last layer's CE."""
    n_layers = model.cfg.n_layers
    exits = check_exits(exits, n_layers)
    was_training = model.training
    model.eval()
    conf, ce, agree = [], [], []
    for x, y in zip(inputs, targets):
        y = y.reshape(-1).to(device)
        logits = model(x.to(device), layers=(*exits, n_layers))
        log_p = {k: F.log_softmax(v.reshape(y.numel(), -1).float(), dim=-1) for k, v in logits.items()}
        conf.append(torch.stack([log_p[e].max(dim=-1).values.exp() for e in exits]))
        ce.append(torch.stack([-log_p[k].gather(1, y[:, None]).squeeze(1) for k in (*exits, n_layers)]))
        last = log_p[n_layers].argmax(dim=-1)
        agree.append(torch.stack([log_p[e].argmax(dim=-1) == last for e in exits]))
    model.train(was_training)
    return MultiExitStats(exits, n_layers, torch.cat(conf, dim=1).cpu(), torch.cat(ce, dim=1).cpu(),
                          torch.cat(agree, dim=1).cpu())


def first_exit(confidence: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """Per token, the index of the first exit whose confidence reaches its threshold (n_exits: none does)."""
    passes = confidence >= torch.tensor(thresholds, dtype=confidence.dtype)[:, None]  # [n_exits, N]
    none = torch.ones(1, passes.size(1), dtype=torch.bool)
    return torch.cat([passes, none]).int().argmax(dim=0)  # argmax finds the first True


def route_multi(stats: MultiExitStats, thresholds) -> dict:
    """Routed PPL, the share of tokens leaving at each exit (and at the last layer), and Compute % by layer
    count (a token leaving at layer e costs e / n_layers of the network)."""
    thresholds = exit_thresholds(thresholds, len(stats.exits))
    where = first_exit(stats.confidence, thresholds)
    ce = stats.ce.gather(0, where[None].long()).squeeze(0)
    layers = (*stats.exits, stats.n_layers)
    shares = {layer: (where == i).double().mean().item() for i, layer in enumerate(layers)}
    return {"thresholds": thresholds, "ppl": _ppl(ce), "shares": shares,
            "compute_frac": sum(share * layer / stats.n_layers for layer, share in shares.items())}
