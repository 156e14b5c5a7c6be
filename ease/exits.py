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

    def __len__(self) -> int:
        return self.confidence.numel()


def _ppl(ce: torch.Tensor) -> float:
    return math.exp(ce.double().mean().item())


def route(stats: TokenStats, threshold: float) -> dict[str, float]:
    """PPL, shallow fraction and compute fraction of routing at one threshold."""
    exits = stats.confidence >= threshold
    ce = torch.where(exits, stats.ce_exit, stats.ce_last)
    shallow = exits.double().mean().item()
    # compute: exit_layer/n_layers of the network for an exited token, all of it otherwise
    compute = shallow * stats.exit_layer / stats.n_layers + (1.0 - shallow)
    return {"threshold": float(threshold), "ppl": _ppl(ce), "shallow_frac": shallow, "compute_frac": compute}


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
    conf, ce_exit, ce_last = [], [], []
    for x, y in zip(inputs, targets):
        x, y = x.to(device), y.reshape(-1).to(device)
        logits = model(x, layers=(exit_layer, n_layers))
        log_p_exit = F.log_softmax(logits[exit_layer].reshape(y.numel(), -1).float(), dim=-1)
        log_p_last = F.log_softmax(logits[n_layers].reshape(y.numel(), -1).float(), dim=-1)
        conf.append(log_p_exit.max(dim=-1).values.exp())
        ce_exit.append(-log_p_exit.gather(1, y[:, None]).squeeze(1))
        ce_last.append(-log_p_last.gather(1, y[:, None]).squeeze(1))
    model.train(was_training)
    return TokenStats(torch.cat(conf).cpu(), torch.cat(ce_exit).cpu(), torch.cat(ce_last).cpu(),
                      exit_layer, n_layers)
