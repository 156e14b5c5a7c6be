"""Thresholds with a guarantee: Learn-then-Test calibration of the exit threshold.

Given per-block risks of routing at each candidate threshold on calibration text, `learn_then_test`
returns the most aggressive threshold whose risk is at most `epsilon` with probability at least
1 - `delta` over the draw of the calibration blocks (Angelopoulos et al., 2021, "Learn then Test"):

- each threshold λ is a null hypothesis "R(λ) > ε", tested with a valid p-value for the mean of bounded
  losses, the Hoeffding–Bentkus p-value (the smaller of Hoeffding's and Bentkus's bounds, times e for
  the latter), computed from the blocks' empirical risk;
- fixed-sequence testing: thresholds are tested from the safest (highest, nobody exits) towards the
  most aggressive, each at level δ, stopping at the first that is not rejected; every rejected one is
  certified, so family-wise error stays at δ without any correction, and the last rejected one is
  returned (None when even the safest is not: then never exit).

`calibrate(model, ids, ...)` is the one-call entry: a fitted model, a calibration text, a risk, ε, δ and an
exit measure (max probability, entropy or margin), or several exits sharing one max-probability threshold.
RunConfig(calibrate=True, ...) does the same for a run (ease.train.calibrate_threshold) and keeps the result
in its record; `operating_threshold(record)` hands it to ease.decode.

Calibration units are contiguous **blocks of text**, not tokens: neighbouring characters are strongly
dependent, and the p-values need independent draws; blocks of about an article's length are close to
that. A block's loss is the average over its tokens, so it lies in [0, 1] as the bounds require.

Risks (`RISKS`), both against the full model (the last layer):
- "inconsistency": the share of a block's tokens whose routed prediction (argmax) differs from the full
  model's (a token that exits and whose layer-1 argmax is not the last layer's);
- "ppl_increase": the block's relative PPL increase of routed over full-depth prediction,
  PPL_routed / PPL_full - 1, clipped to [0, 1] (the guarantee is for the clipped risk; the clip binds
  only past a doubling of PPL).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy import stats

from ease.exits import MultiExitStats, TokenStats, block_bounds, first_exit, per_block

RISKS = ("inconsistency", "ppl_increase")
USABLE_MEASURES = ("max_prob", "entropy", "margin")  # ease.exits.MEASURES without the cosine (it needs the last layer)


def hoeffding_bentkus_p(risk_hat: float, n: int, epsilon: float) -> float:
    """Valid p-value of the null "mean loss > epsilon" from the mean `risk_hat` of n iid losses in [0, 1]."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be within (0, 1), got {epsilon}")
    if n < 1:
        raise ValueError(f"need at least one calibration block, got {n}")
    r = min(max(risk_hat, 0.0), 1.0)
    a = min(r, epsilon)
    # Hoeffding (Bernstein-free, tight form): exp(-n · KL(a || epsilon))
    kl = (a * math.log(a / epsilon) if a > 0 else 0.0) + \
        ((1 - a) * math.log((1 - a) / (1 - epsilon)) if a < 1 else 0.0)
    hoeffding = math.exp(-n * kl)
    bentkus = math.e * float(stats.binom.cdf(math.ceil(n * r), n, epsilon))
    return min(1.0, hoeffding, bentkus)


@dataclass
class Calibration:
    """What `learn_then_test` decided, and why."""

    threshold: float | None  # the most aggressive certified threshold; None: none certified (never exit)
    epsilon: float
    delta: float
    risk: str
    n_blocks: int
    thresholds: list[float] = field(default_factory=list)  # tested, safest first
    empirical_risk: list[float] = field(default_factory=list)
    p_values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "epsilon": self.epsilon, "delta": self.delta, "risk": self.risk,
                "n_blocks": self.n_blocks, "thresholds": self.thresholds, "empirical_risk": self.empirical_risk,
                "p_values": self.p_values}


def learn_then_test(risks: np.ndarray, thresholds: Sequence[float], epsilon: float, delta: float,
                    risk: str = "inconsistency") -> Calibration:
    """The most aggressive threshold with risk <= epsilon at confidence 1 - delta (see the module).

    risks: [blocks, thresholds], each block's loss in [0, 1] at each threshold; `thresholds` in any
    order (tested from the highest down).
    """
    risks = np.asarray(risks, float)
    thresholds = [float(t) for t in thresholds]
    if risks.ndim != 2 or risks.shape[1] != len(thresholds) or risks.shape[0] < 1:
        raise ValueError(f"risks must be [blocks, thresholds] with {len(thresholds)} thresholds, got {risks.shape}")
    if np.any((risks < 0) | (risks > 1)) or not np.all(np.isfinite(risks)):
        raise ValueError("every block's risk must lie in [0, 1]")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be within (0, 1), got {delta}")
    order = sorted(range(len(thresholds)), key=lambda i: -thresholds[i])  # safest (highest) first
    n = risks.shape[0]
    result = Calibration(None, float(epsilon), float(delta), risk, n)
    for i in order:
        r_hat = float(risks[:, i].mean())
        p = hoeffding_bentkus_p(r_hat, n, epsilon)
        result.thresholds.append(thresholds[i])
        result.empirical_risk.append(r_hat)
        result.p_values.append(p)
        if p > delta:
            break
        result.threshold = thresholds[i]
    return result


def block_risks(stats: TokenStats, thresholds: Sequence[float], n_blocks: int, risk: str) -> np.ndarray:
    """Each contiguous block's risk at each threshold: [blocks, thresholds] in [0, 1]."""
    if risk not in RISKS:
        raise ValueError(f"risk must be one of {RISKS}, got {risk!r}")
    if stats.agree is None:
        raise ValueError("the token stats need `agree` (ease.exits.collect_token_stats gives it)")
    bounds = block_bounds(len(stats), n_blocks)
    tokens = np.diff(bounds).astype(float)
    ce_exit, ce_last = stats.ce_exit.double(), stats.ce_last.double()
    full = np.array(per_block(ce_last, bounds)) / tokens
    out = np.empty((n_blocks, len(thresholds)))
    for j, t in enumerate(thresholds):
        exits = stats.confidence >= t
        out[:, j] = _risk_per_block(risk, exits & ~stats.agree, torch.where(exits, ce_exit, ce_last), full, bounds)
    return out


def _risk_per_block(risk: str, disagree: torch.Tensor, routed_ce: torch.Tensor, full: np.ndarray,
                    bounds: list[int]) -> np.ndarray:
    """One threshold's risk in each block, from which tokens' routed prediction disagrees with the full model's
    and the routed CE per token (`full`: each block's mean CE at full depth)."""
    tokens = np.diff(bounds).astype(float)
    if risk == "inconsistency":
        return np.array(per_block(disagree, bounds)) / tokens
    routed = np.array(per_block(routed_ce, bounds)) / tokens
    return np.clip(np.expm1(routed - full), 0.0, 1.0)


def multi_block_risks(stats: MultiExitStats, thresholds: Sequence[float], n_blocks: int, risk: str) -> np.ndarray:
    """`block_risks` for a model with several exits, one threshold shared by every exit: a token leaves at the
    first exit whose confidence reaches it (ease.exits.route_multi). [blocks, thresholds] in [0, 1]."""
    if risk not in RISKS:
        raise ValueError(f"risk must be one of {RISKS}, got {risk!r}")
    if stats.agree is None:
        raise ValueError("the stats need `agree` (ease.exits.collect_multi_exit_stats gives it)")
    bounds = block_bounds(len(stats), n_blocks)
    tokens = np.diff(bounds).astype(float)
    k = len(stats.exits)
    full = np.array(per_block(stats.ce[k].double(), bounds)) / tokens
    agree = torch.cat([stats.agree, torch.ones(1, len(stats), dtype=torch.bool)])  # the last layer agrees with itself
    out = np.empty((n_blocks, len(thresholds)))
    for j, t in enumerate(thresholds):
        where = first_exit(stats.confidence, [float(t)] * k)[None].long()
        out[:, j] = _risk_per_block(risk, ~agree.gather(0, where).squeeze(0),
                                    stats.ce.double().gather(0, where).squeeze(0), full, bounds)
    return out


def measure_thresholds(measure: str, vocab_size: int, steps: int = 40) -> list[float]:
    """The thresholds tested for an exit measure, fixed before any calibration text is seen: steps + 1 evenly
    spaced over the measure's range ([0, 1] for max_prob and margin; [-log V, 0] for the negative entropy)."""
    if measure not in USABLE_MEASURES:
        raise ValueError(f"measure must be one of {USABLE_MEASURES} (the cosine needs the last layer), got {measure!r}")
    grid = [round(i / steps, 6) for i in range(steps + 1)]
    if measure == "entropy":
        return [-math.log(vocab_size) * (1 - f) for f in grid]
    return grid


def calibrate(model, ids: torch.Tensor, *, risk: str = "inconsistency", epsilon: float = 0.05, delta: float = 0.1,
              measure: str = "max_prob", exits: Sequence[int] = (1,), thresholds: Sequence[float] | None = None,
              seq_len: int = 64, batch_size: int = 32, block_tokens: int = 2048, device="cpu") -> Calibration:
    """Learn-then-Test for a fitted model on a calibration text (token ids, e.g. ease.data.encode_held_out's):
    the most aggressive threshold whose `risk` against the full model is at most `epsilon` with probability
    at least 1 - `delta`. One exit: any usable exit `measure` (thresholds on its own scale, by default
    `measure_thresholds`). Several `exits`: the max-probability rule with one threshold shared by every exit.
    The text is cut into windows of seq_len (as training) and blocks of `block_tokens` (the unit of the p-values)."""
    from ease.data import make_batches
    from ease.exits import check_exits, collect_exit_measures, collect_multi_exit_stats

    exits = check_exits(exits, model.cfg.n_layers)
    if measure not in USABLE_MEASURES:
        raise ValueError(f"measure must be one of {USABLE_MEASURES} (the cosine needs the last layer), got {measure!r}")
    if len(exits) > 1 and measure != "max_prob":
        raise ValueError("with several exits the rule is the max probability at each exit (measure='max_prob')")
    thresholds = list(thresholds) if thresholds is not None else measure_thresholds(measure, model.cfg.vocab_size)
    x, y = make_batches(ids, seq_len, batch_size)
    n_blocks = max(1, y.numel() // block_tokens)
    if len(exits) == 1:
        m = collect_exit_measures(model, x, y, exits[0], device)
        stats = TokenStats(m.scores[measure], m.ce_exit, m.ce_last, exits[0], model.cfg.n_layers, m.agree)
        risks = block_risks(stats, thresholds, n_blocks, risk)
    else:
        risks = multi_block_risks(collect_multi_exit_stats(model, x, y, exits, device), thresholds, n_blocks, risk)
    return learn_then_test(risks, thresholds, epsilon, delta, risk)


def operating_threshold(record: dict) -> float | None:
    """The threshold a finished run operates at, for ease.decode (None: nobody exits): the calibrated one
    when its config asked for calibration (None when none was certified), else the config's."""
    if record["config"].get("calibrate"):
        return record["calibration"]["threshold"]
    return record["config"]["threshold"]


@dataclass
class Validity:
    """Does the promise hold? Many random calibration/test splits of one model's held-out blocks."""

    epsilon: float
    delta: float
    risk: str
    splits: int
    exceeded: float  # share of splits whose test-half risk at the calibrated threshold exceeds epsilon
    test_risk: list[float]  # per split
    shallow: list[float]  # per split: Shallow% on the test half at the calibrated threshold
    thresholds: list[float | None]  # per split: the calibrated threshold (None: never exit)
    oracle_threshold: float | None  # the lowest sweep threshold whose risk on ALL blocks is <= epsilon (hindsight)
    oracle_shallow: float  # its Shallow% on all blocks

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def validity(stats: TokenStats, thresholds: Sequence[float], n_blocks: int, risk: str, epsilon: float,
             delta: float, splits: int = 200, seed: int = 0) -> Validity:
    """Split the blocks at random into calibration and test halves `splits` times; calibrate on one half
    (`learn_then_test`), measure the risk and Shallow% at the chosen threshold on the other. The promise
    holds when the share of splits whose test risk exceeds epsilon is at most delta (up to the noise of a
    finite test half). The hindsight threshold (best fixed threshold that meets epsilon on all blocks) is
    what a user reading a sweep on this very text would pick: calibration gives up some of its Shallow%."""
    risks = block_risks(stats, thresholds, n_blocks, risk)
    bounds = block_bounds(len(stats), n_blocks)
    exits = np.array([per_block(stats.confidence >= t, bounds) for t in thresholds]).T  # [blocks, thresholds]
    tokens = np.diff(bounds).astype(float)
    rng = np.random.default_rng(seed)
    out = Validity(float(epsilon), float(delta), risk, splits, 0.0, [], [], [], None, 0.0)
    for _ in range(splits):
        order = rng.permutation(n_blocks)
        cal, test = order[: n_blocks // 2], order[n_blocks // 2:]
        chosen = learn_then_test(risks[cal], thresholds, epsilon, delta, risk).threshold
        if chosen is None:
            out.test_risk.append(0.0)  # nobody exits: routed = full model
            out.shallow.append(0.0)
        else:
            j = list(thresholds).index(chosen)
            out.test_risk.append(float(risks[test, j].mean()))
            out.shallow.append(float(exits[test, j].sum() / tokens[test].sum()))
        out.thresholds.append(chosen)
    out.exceeded = float(np.mean(np.array(out.test_risk) > epsilon))
    meets = [t for j, t in enumerate(thresholds) if risks[:, j].mean() <= epsilon]
    if meets:
        out.oracle_threshold = float(min(meets))
        j = list(thresholds).index(min(meets))
        out.oracle_shallow = float(exits[:, j].sum() / tokens.sum())
    return out
