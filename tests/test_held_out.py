"""The held-out chapter's numbers and verdicts (book/companion/held_out.py) on designed records.

Each designed run's test text is built token by token (ease.exits.block_sums turns it into the record's
block sums, as ease.train does), so a test can make one model better than another by a known margin and
check that the verdict follows, and flips when the margin does.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from ease.config import RunConfig
from ease.exits import TokenStats, block_sums, summary, sweep
from ease.results import analysis_path, record_path, write_json
from ease.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

from companion import held_out

BLOCKS, PER_BLOCK, SEEDS = 50, 40, 5
FAKE_DATA = {"source": "local", "location": "/designed", "sha256": {"train": "0" * 64, "valid": "1" * 64,
                                                                    "test": "2" * 64}, "fingerprint": "3" * 16}
BASE = {"lr_schedule": "cosine", "max_epochs": 2, "patience": 2, "select_on": "objective", "test_chars": -1,
        "train_chars": 1000, "val_chars": 500, "sweep_thresholds": (0.0, 0.5, 0.95, 1.0)}


def grid_file(tmp_path, name: str, seeds: int, base: dict, runs: list) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"seeds": seeds, "base": base, "runs": runs}), encoding="utf-8")
    return str(path)


def designed_record(config: RunConfig, offset: float, seed: int) -> dict:
    """A run whose last layer's CE per token is 1.6 + offset + noise, layer 1's 0.4 higher; a quarter of
    tokens above each threshold step exit."""
    gen = torch.Generator().manual_seed(1000 * seed + 7)
    n = BLOCKS * PER_BLOCK
    text = 0.2 * torch.sin(torch.arange(n) / 300.0)  # text difficulty shared by every run
    ce_last = (1.6 + offset + text + 0.05 * torch.randn(n, generator=gen)).float()
    stats = TokenStats(torch.rand(n, generator=gen), ce_last + 0.4, ce_last, config.exit_layer, config.n_layers,
                       torch.rand(n, generator=gen) < 0.6)
    test = {"unknown_chars": 3, "tokens": n, "blocks": BLOCKS, "metrics": summary(stats, config.threshold),
            "sweep": sweep(stats, config.sweep_thresholds),
            "oracles": {"label_ppl": math.exp(ce_last.double().mean().item()),
                        "consistency_ppl": math.exp(torch.where(stats.agree, stats.ce_exit, ce_last).double().mean().item()),
                        "consistency_shallow_frac": stats.agree.double().mean().item()},
            "block_sums": block_sums(stats, config.sweep_thresholds, BLOCKS)}
    val = summary(stats, config.threshold)
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_ppl": val["ppl"], "val_ppl_shallow": val["ppl_shallow"],
                "val_ppl_deep": val["ppl_deep"], "val_shallow_frac": val["shallow_frac"], "val_objective": 2.0 / e}
               for e in (1, 2)]
    return {"schema_version": 2, "run_id": config.run_id, "config": config.to_dict(),
            "metrics": {**val, "best_epoch": 2, "epochs_run": 2, "eval_tokens": n},
            "sweep": sweep(stats, config.sweep_thresholds), "history": history, "env": {},
            "timing": {"train_s": 1.0, "eval_s": 1.0, "tokens_per_s": 1.0}, "test": test,
            "provenance": {"data": FAKE_DATA, "code": {"ease_version": None, "git_commit": None, "git_dirty": None}}}


def write_grid(tmp_path, grid: str, offsets: dict) -> None:
    from ease.grid import expand_grid, load_grid

    for config in expand_grid(load_grid(grid)):
        c = config
        key = f"dense{c.n_layers}" if c.setting == "custom" else f"{c.setting}{c.alpha:g}"
        write_json(record_path(tmp_path, c.run_id), designed_record(c, offsets[key], c.seed))
        write_json(analysis_path(tmp_path, c.run_id), {"run_id": c.run_id, "analysis_version": 1, "vocab_size": 50})


RUNS = [{"setting": "A", "alpha": [0.3, 0.5, 0.7]}, {"setting": "B", "alpha": 0.7},
        *({"setting": "custom", "alpha": None, "n_layers": d, "weights": {d: 1.0}} for d in (1, 2, 3))]
OFFSETS = {"A0.3": 0.1, "A0.5": 0.05, "A0.7": 0.0, "B0.7": 0.08, "dense1": 0.3, "dense2": 0.1, "dense3": -0.05}


@pytest.fixture
def chapter(tmp_path, monkeypatch):
    """(models, primary comparisons) of a designed converged grid, with the given CE offsets."""
    monkeypatch.setattr("ease.analysis.ANALYSIS_VERSION", 1)

    def build(offsets=OFFSETS):
        folder = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        grid = grid_file(tmp_path, folder.name, SEEDS, BASE, RUNS)
        write_grid(folder, grid, offsets)
        ms = held_out.models(grid, folder)
        return ms, held_out.primary(ms), folder
    return build


def test_primary_verdicts_follow_the_data_and_flip_with_it(chapter):
    ms, comps, _ = chapter()
    verdicts = {c.code: held_out.verdict(c) for c in comps}
    # designed: A (0.0) below B (0.08); α=0.7 below α=0.5; dense 3 (−0.05) below dense 1 (+0.3)
    assert verdicts["a_vs_b"] == REPRODUCED and verdicts["a7_vs_a5"] == REPRODUCED
    assert verdicts["dense3_vs_dense1"] == REPRODUCED
    # from block sums, the same PPLs as the records' own (token-level) test metrics
    per_seed = [r["test"]["metrics"] for r in ms["A0.7"].records]
    assert held_out.ppl(ms["A0.7"], None)(None) == pytest.approx([m["ppl_deep"] for m in per_seed], rel=1e-6)
    assert held_out.ppl(ms["A0.7"])(None) == pytest.approx([m["ppl"] for m in per_seed], rel=1e-6)
    assert held_out.shallow(ms["A0.7"])(None) == pytest.approx([m["shallow_frac"] for m in per_seed])
    for c in comps:
        assert c.adjusted_p >= c.text.p  # Holm never makes a test easier to pass
    flipped = {**OFFSETS, "A0.7": 0.16, "dense3": 0.5}
    _, comps, _ = chapter(flipped)
    verdicts = {c.code: held_out.verdict(c) for c in comps}
    assert verdicts["a_vs_b"] == NOT_REPRODUCED and verdicts["dense3_vs_dense1"] == NOT_REPRODUCED
    tied = {**OFFSETS, "B0.7": 0.0}  # same CE as A up to its own noise: not told apart
    _, comps, _ = chapter(tied)
    assert held_out.verdict(next(c for c in comps if c.code == "a_vs_b")) == INCONCLUSIVE


def test_equal_compute_reads_the_sweep_at_the_dense_models_cost(chapter):
    ms, _, _ = chapter()
    rows = held_out.equal_compute(ms)
    by = {(k, d, a): c for k, d, a, c in rows}
    # counted in FLOPs no early-exit token is as cheap as a 1-layer model's: out of reach
    assert not by[("A0.7", 1, "flops")].reachable
    # counted in layers, 1/3 of the cost is every token exiting: layer 1's PPL (0.4 nats above the last)
    at_third = held_out.ppl_at_cost(ms["A0.7"], 1 / 3, "layers")(None)
    assert at_third == pytest.approx(held_out.block_ppl(ms["A0.7"].sums("ce_exit"), ms["A0.7"].tokens))
    assert by[("A0.7", 2, "layers")].reachable


def test_budget_check_says_converged_or_moved(chapter, tmp_path):
    ms, comps, folder = chapter()
    check_runs = [{"setting": ["A", "B"], "alpha": 0.7},
                  *({"setting": "custom", "alpha": None, "n_layers": d, "weights": {d: 1.0}} for d in (1, 3))]
    for name, shift, expected in (("same", 0.0, "converged"), ("shifted", 0.3, "moved")):
        grid = grid_file(tmp_path, name, 2, {**BASE, "max_epochs": 4, "patience": 4}, check_runs)
        write_grid(folder, grid, {k: v + shift for k, v in OFFSETS.items()})
        check = held_out.check_models(folder, grid)
        rows = held_out.budget_check(ms, check)
        assert held_out.cases(comps, rows)["budget"] == expected
    assert held_out.check_models(folder, grid_file(tmp_path, "absent", 2, {**BASE, "max_epochs": 9}, check_runs)) \
        is None
    assert held_out.cases(comps, None)["budget"] == "pending"
