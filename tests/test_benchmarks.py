"""The training benchmark's counting: the FLOPs of a step and the products it times (not its timings)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ease import RunConfig
from ease.data import build_corpus

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("setting", ["A", "B"])
def test_step_limit_counts_every_product_of_a_training_step(bench, setting, monkeypatch):
    monkeypatch.setattr(bench, "product_seconds", lambda a, b, **_: 1e-3)  # timing is not under test
    corpus = build_corpus("the quick brown fox jumps over the lazy dog " * 40, "a lazy dog " * 20)
    config = RunConfig(setting=setting, dim=16, n_heads=2, seq_len=16, batch_size=4)
    before = torch.get_num_threads()
    try:
        limit = bench.step_limit(config, corpus)
    finally:
        torch.set_num_threads(before)
    tokens, d, v = 4 * 16, 16, corpus.vocab_size
    heads = 2 if setting == "A" else 3  # the head runs on every layer with a loss weight
    # per layer: qkv (d -> 3d), out (d -> d), gate and up (d -> 4d each), down (4d -> d)
    forward = 2 * tokens * (3 * (3 * d * d + d * d + 2 * 4 * d * d + 4 * d * d) + heads * d * v)
    assert limit["matmul_flops"] == 3 * forward  # backward: a product for the input and one for the weight
    assert limit["step_flops"] >= limit["matmul_flops"]  # plus attention's
    assert limit["tokens_per_step"] == tokens
    assert limit["limit_tokens_per_s"] == pytest.approx(tokens / (limit["products"] * 1e-3))
