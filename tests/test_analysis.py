"""The held-out part of a checkpoint analysis (ease.analysis.held_out_analysis) on a tiny random model."""
from __future__ import annotations

import math

import pytest
import torch

from ease import analysis
from ease.config import RunConfig
from ease.data import make_batches
from ease.exits import MEASURES, collect_token_stats, sweep
from ease.model import EarlyExitLM, ModelConfig
from ease.results import analysis_path, write_json
from ease.train import CALIBRATION_BLOCK_TOKENS, TEST_BLOCKS

VOCAB = 13
CONFIG = RunConfig(setting="A", alpha=0.5, seq_len=16, batch_size=8, dim=32, n_heads=4, test_chars=-1)


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    model = EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=3, dim=32, n_heads=4)).eval()
    with torch.no_grad():
        model.head.weight.mul_(6)  # confidences spread over (0, 1), so every threshold routes some tokens
    # three calibration blocks' worth of tokens, in a pattern the model can be more or less sure of
    ids = (torch.arange(3 * CALIBRATION_BLOCK_TOKENS + 100) * 7 % VOCAB)
    ids[::5] = torch.randint(0, VOCAB, ids[::5].shape, generator=torch.Generator().manual_seed(1))
    out = analysis.held_out_analysis(model, ids, CONFIG, torch.device("cpu"))
    x, y = make_batches(ids, CONFIG.seq_len, CONFIG.batch_size)
    return out, collect_token_stats(model, x, y, 1)


def test_matched_block_sums_add_up_to_the_matched_ppl(result):
    out, stats = result
    n = len(stats)
    assert out["tokens"] == n and out["blocks"] == TEST_BLOCKS
    assert set(out["matched"]) == {*MEASURES, "oracle"}
    for f, by_measure in out["matched_blocks"].items():
        i = out["shallow_fractions"].index(float(f))
        for name, blocks in by_measure.items():
            assert len(blocks) == TEST_BLOCKS
            assert math.exp(sum(blocks) / n) == pytest.approx(out["matched"][name][i], rel=1e-9)
    # the oracle is the best rule at every Shallow%: no measure beats it
    for name in MEASURES:
        assert all(o <= m * (1 + 1e-12) for o, m in zip(out["matched"]["oracle"], out["matched"][name]))


def test_real_exit_rows_beside_the_simulated_sweep(result):
    out, stats = result
    rows = out["real_exit"]
    assert [r["threshold"] for r in rows] == list(analysis.TEST_REAL_EXIT_THRESHOLDS)
    for row, sim in zip(rows, sweep(stats, analysis.TEST_REAL_EXIT_THRESHOLDS)):
        assert row["shallow_frac"] == sim["shallow_frac"]  # exits are decided at layer 1: the same tokens
        assert row["sim_ppl"] == pytest.approx(sim["ppl"], rel=1e-6)
        assert math.exp(sum(row["block_ce"]) / len(stats)) == pytest.approx(row["ppl"], rel=1e-9)
    assert rows[0]["ppl"] == pytest.approx(rows[0]["sim_ppl"], rel=1e-5)  # everyone exits: nothing propagates


def test_calibration_runs_cover_every_risk_and_tolerance(result):
    out, _ = result
    cal = out["calibration"]
    assert cal["n_blocks"] == 3 and cal["block_tokens"] == CALIBRATION_BLOCK_TOKENS
    runs = {(r["risk"], r["epsilon"]) for r in cal["runs"]}
    assert runs == {(risk, eps) for risk in ("inconsistency", "ppl_increase") for eps in analysis.CALIBRATION_EPSILONS}
    for r in cal["runs"]:
        assert r["splits"] == len(r["test_risk"]) == len(r["shallow"]) == analysis.CALIBRATION_SPLITS
        assert r["delta"] == analysis.CALIBRATION_DELTA
        assert r["exceeded"] == pytest.approx(sum(t > r["epsilon"] for t in r["test_risk"]) / r["splits"])


def test_an_analysis_without_its_held_out_part_is_outdated(tmp_path):
    assert analysis.wants_held_out(CONFIG)
    dense = RunConfig(setting="custom", alpha=None, weights={3: 1.0}, test_chars=-1)
    assert not analysis.wants_held_out(dense)  # its exit layer is never trained
    assert not analysis.wants_held_out(CONFIG.replace(test_chars=0))
    base = {"run_id": CONFIG.run_id, "analysis_version": analysis.ANALYSIS_VERSION}
    write_json(analysis_path(tmp_path, CONFIG.run_id), base)
    assert analysis.load_analysis(CONFIG, tmp_path) is None
    assert analysis.load_analysis(CONFIG, tmp_path, held_out=False) == base  # a reader of the validation parts
    write_json(analysis_path(tmp_path, CONFIG.run_id), {**base, "test": {"version": analysis.HELD_OUT_VERSION}})
    assert analysis.load_analysis(CONFIG, tmp_path) is not None


# --- several exits -------------------------------------------------------------------------------------
MULTI = RunConfig(setting="custom", alpha=None, weights={1: 0.3, 2: 0.3, 4: 1.0}, n_layers=4, exits=(1, 2),
                  seq_len=16, batch_size=8, dim=32, n_heads=4, test_chars=-1)


@pytest.fixture(scope="module")
def multi():
    torch.manual_seed(1)
    model = EarlyExitLM(ModelConfig(vocab_size=VOCAB, n_layers=4, dim=32, n_heads=4)).eval()
    with torch.no_grad():
        model.head.weight.mul_(6)
    ids = torch.arange(TEST_BLOCKS * 16 * 8 + 50) * 5 % VOCAB
    ids[::3] = torch.randint(0, VOCAB, ids[::3].shape, generator=torch.Generator().manual_seed(2))
    out = analysis.multi_exit_analysis(model, ids, MULTI, torch.device("cpu"))
    x, y = make_batches(ids, MULTI.seq_len, MULTI.batch_size)
    return out, model, x, y


def test_the_several_exit_front_runs_from_the_first_exit_to_the_full_model(multi):
    out, model, x, y = multi
    by = {row["threshold"]: row for row in out["sweep"]}
    tokens = sum(out["block_tokens"])
    assert tokens == out["tokens"] == y.numel()
    with torch.no_grad():
        logits = model(x.reshape(-1, x.size(-1)), layers=(1, 4))
    ce = {k: torch.nn.functional.cross_entropy(v.reshape(-1, VOCAB), y.reshape(-1)).item() for k, v in logits.items()}
    # threshold 0: every token leaves at the first exit; above 1: nobody leaves (the full model)
    assert by[0.0]["shares"]["1"] == 1.0 and by[0.0]["ppl"] == pytest.approx(math.exp(ce[1]), rel=1e-5)
    assert by[1.01]["shares"]["4"] == 1.0 and by[1.01]["ppl"] == pytest.approx(math.exp(ce[4]), rel=1e-5)
    assert by[1.01]["flop_compute_frac"] > 1.0  # the full model plus the heads that decided at each exit
    for row in out["sweep"]:  # per-block sums give each point exactly, and the shares add up
        assert math.exp(sum(row["block_ce"]) / tokens) == pytest.approx(row["ppl"], rel=1e-9)
        assert sum(sum(v) for v in row["block_layers"].values()) == pytest.approx(tokens)
        assert sum(row["shares"].values()) == pytest.approx(1.0)
    computes = [row["compute_frac"] for row in out["sweep"]]
    assert computes == sorted(computes)  # a higher shared threshold keeps more tokens deeper


def test_real_several_exit_rows_beside_the_simulated_front(multi):
    out, *_ = multi
    simulated = {row["threshold"]: row for row in out["sweep"]}
    for row in out["real"]:
        # the first exit reads the same states in both: the same tokens leave there
        assert row["shares"]["1"] == pytest.approx(simulated[row["threshold"]]["shares"]["1"], abs=1e-12)
        assert math.exp(sum(row["block_ce"]) / out["tokens"]) == pytest.approx(row["ppl"], rel=1e-9)


def test_a_several_exit_analysis_without_its_part_is_outdated(tmp_path):
    assert analysis.wants_multi_exit(MULTI) and not analysis.wants_multi_exit(MULTI.replace(test_chars=0))
    assert not analysis.wants_multi_exit(CONFIG)
    base = {"run_id": MULTI.run_id, "analysis_version": analysis.ANALYSIS_VERSION}
    write_json(analysis_path(tmp_path, MULTI.run_id), base)
    assert analysis.load_analysis(MULTI, tmp_path) is None
    write_json(analysis_path(tmp_path, MULTI.run_id),
               {**base, "test": {"version": analysis.HELD_OUT_VERSION},
                "multi_exit": {"version": analysis.MULTI_EXIT_VERSION}})
    assert analysis.load_analysis(MULTI, tmp_path) is not None
