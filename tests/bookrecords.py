"""Designed run records for the book's tests (test_book_report, test_audit).

A run's threshold sweep follows one law, so tests can derive every answer by hand:
at threshold τ the share of early exits is shallow = (1 − τ)^power (power 1 for setting A, 2 for B),
the routed PPL is ppl · (1 + 2 · shallow), and Compute = shallow/3 + (1 − shallow) (an exit at layer 1
of 3 costs a third). The record's metrics are the sweep's row at the run's operating threshold.
"""
from __future__ import annotations

import json
import math

from ease.config import RunConfig

POWER = {"A": 1, "B": 2}  # setting -> exponent of (1 − τ) in its share of early exits


def shallow(t: float, power: float) -> float:
    return (1 - t) ** power


def sweep(config: RunConfig, ppl: float, power: float) -> list[dict]:
    rows = []
    for t in config.sweep_thresholds:
        s = shallow(t, power)
        rows.append({"threshold": t, "ppl": ppl * (1 + 2 * s), "shallow_frac": s, "compute_frac": s / 3 + 1 - s})
    return rows


def designed_test_part(metrics: dict, rows: list[dict], ppl: float, tokens: int = 1000) -> dict:
    """A record's `test` part for test text that reads as the validation text (`metrics`, sweep `rows`)."""
    ce = tokens * math.log(ppl)  # the last layer's summed cross-entropy; layer 1's PPL is three times it
    return {"unknown_chars": 0, "tokens": tokens, "blocks": 1,
            "metrics": {k: metrics[k] for k in ("ppl", "shallow_frac", "compute_frac", "ppl_shallow", "ppl_deep")},
            "sweep": rows, "oracles": {"label_ppl": ppl, "consistency_ppl": ppl, "consistency_shallow_frac": 0.0},
            "block_sums": {"tokens": [tokens], "ce_exit": [tokens * math.log(3 * ppl)], "ce_last": [ce],
                           "ce_label_oracle": [ce], "consistency_exits": [0], "ce_consistency": [ce],
                           "sweep_exits": [[round(tokens * r["shallow_frac"])] for r in rows],
                           "sweep_ce": [[tokens * math.log(r["ppl"])] for r in rows]}}


def record(config: RunConfig, ppl: float, power: float, epochs: int, sweep_ppl: float | None = None,
           **fields) -> dict:
    """A run record whose last layer has PPL `ppl` and layer 1 three times that; trained `epochs` epochs
    (best: the one before last). `sweep_ppl` replaces `ppl` in the stored sweep only (a sweep read with
    other weights than the metrics); `fields` replace whole parts of the record (history, env, timing)."""
    at = next(r for r in sweep(config, ppl, power) if abs(r["threshold"] - config.threshold) < 1e-9)
    out = {"run_id": config.run_id, "config": json.loads(json.dumps(config.to_dict())),
           "metrics": {"ppl": at["ppl"], "shallow_frac": at["shallow_frac"], "compute_frac": at["compute_frac"],
                       "ppl_shallow": 3 * ppl, "ppl_deep": ppl, "best_epoch": epochs - 1, "epochs_run": epochs,
                       "eval_tokens": 1000},
           "sweep": sweep(config, ppl if sweep_ppl is None else sweep_ppl, power),
           "history": [], "env": {}, "timing": {"train_s": 1.0, "eval_s": 0.1, "tokens_per_s": 1.0}}
    if config.test_chars:  # a run that also read the test split: designed as its validation text, in one block
        out["test"] = designed_test_part(out["metrics"], out["sweep"], ppl)
    out.update(fields)
    return out
