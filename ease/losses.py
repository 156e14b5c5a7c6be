"""Per-layer loss weights and the weighted multi-exit loss.

Weights are a map {layer: weight}, layers 1-indexed. Setting A puts α on the exit layer (L1)
and 1-α on the last layer with no loss in between; setting B adds weight 1.0 on every middle
layer (deep supervision). Any other non-negative map is allowed.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

SETTINGS = {"A": 0.0, "B": 1.0}  # setting -> weight of each middle layer


def setting_weights(setting: str, alpha: float | None, n_layers: int) -> dict[int, float]:
    """Weights of a named setting: {1: α, middle: 0 (A) or 1 (B), n_layers: 1-α}."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}: use one of {sorted(SETTINGS)} or give a weight map")
    if alpha is None or isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
            or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if n_layers < 2:
        raise ValueError(f"settings A and B need at least 2 layers (an exit layer and a last layer), got {n_layers}")
    middle = SETTINGS[setting]
    weights = {layer: middle for layer in range(2, n_layers)}
    weights[1] = float(alpha)
    weights[n_layers] = round(1.0 - float(alpha), 12)  # 1 - 0.7 prints as 0.3, not 0.30000000000000004
    return validate_weights(weights, n_layers)


def validate_weights(weights: Mapping, n_layers: int) -> dict[int, float]:
    """Check a {layer: weight} map and return it with int keys and float values, sorted by layer."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"weights must be a non-empty map {{layer: weight}}, got {weights!r}")
    clean: dict[int, float] = {}
    for key, value in weights.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"weight map key {key!r} is not a layer number") from None
        if str(layer) != str(key).strip():
            raise ValueError(f"weight map key {key!r} is not a whole layer number")
        if not 1 <= layer <= n_layers:
            raise ValueError(f"layer {layer} is out of range: layers are numbered 1..{n_layers}")
        if layer in clean:
            raise ValueError(f"layer {layer} appears twice in the weight map")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"weight of layer {layer} must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"weight of layer {layer} is negative ({value}); weights must be >= 0")
        clean[layer] = float(value)
    if not any(clean.values()):
        raise ValueError("all loss weights are zero: at least one layer must carry a loss")
    return dict(sorted(clean.items()))


def trained_layers(weights: Mapping[int, float]) -> list[int]:
    """Layers whose head takes part in training (weight > 0): only these cost a head matmul."""
    return [layer for layer, w in sorted(weights.items()) if w > 0]


def weighted_loss(logits: Mapping[int, torch.Tensor], targets: torch.Tensor,
                  weights: Mapping[int, float]) -> torch.Tensor:
    """Σ weight · CE(layer) over the layers with non-zero weight (mean CE over tokens)."""
    flat_targets = targets.reshape(-1)
    total = None
    for layer in trained_layers(weights):
        out = logits[layer]
        ce = F.cross_entropy(out.reshape(-1, out.size(-1)), flat_targets)
        total = weights[layer] * ce if total is None else total + weights[layer] * ce
    return total


def layerskip_weights(n_layers: int, exits, e_scale: float = 1.0) -> dict[int, float]:
    """Early-exit loss weights rising with depth, as LayerSkip's scale (Elhoushi et al., 2024), without its
    curriculum: an exit at layer l (1-indexed) gets e_scale · (l - 1) · l / 2, the last layer n_layers - 1, and
    the weights are normalised to sum to 1. (The first layer's exit therefore gets no loss: LayerSkip's rule.)"""
    if isinstance(e_scale, bool) or not isinstance(e_scale, (int, float)) or not math.isfinite(e_scale) or e_scale < 0:
        raise ValueError(f"e_scale must be a finite number >= 0, got {e_scale!r}")
    if n_layers < 2:
        raise ValueError(f"an early-exit model needs at least 2 layers, got {n_layers}")
    raw = {int(layer): e_scale * (layer - 1) * layer / 2 for layer in exits}
    if any(not 1 <= layer < n_layers for layer in raw):
        raise ValueError(f"exits must lie within 1..{n_layers - 1}, got {sorted(raw)}")
    raw[n_layers] = float(n_layers - 1)
    total = sum(raw.values())
    return validate_weights({layer: w / total for layer, w in raw.items()}, n_layers)


def recipe_loss(logits: Mapping[int, torch.Tensor], targets: torch.Tensor, weights: Mapping[int, float],
                ramp: torch.Tensor, distill: float = 0.0) -> torch.Tensor:
    """`weighted_loss` with the training recipes of ease.config: the weights of the layers below the last are
    multiplied by `ramp` (a 0-d tensor from 0 to 1: exit-weight warm-up), and `distill` · KL(last ‖ layer)
    is added for each of those layers, the last layer's distribution taken as a fixed teacher."""
    flat_targets = targets.reshape(-1)
    last = max(logits)
    teacher = None
    total = None
    for layer in trained_layers(weights):
        out = logits[layer].reshape(-1, logits[layer].size(-1))
        term = weights[layer] * F.cross_entropy(out, flat_targets)
        if layer != last:
            if distill:
                if teacher is None:
                    teacher = F.log_softmax(logits[last].reshape(out.shape).detach().float(), dim=-1)
                kl = F.kl_div(F.log_softmax(out.float(), dim=-1), teacher, log_target=True, reduction="batchmean")
                term = term + distill * kl
            term = ramp * term
        total = term if total is None else total + term
    return total
