"""Analyses of a finished run's checkpoint, kept apart from its record
(where ease.results.analysis_path says).

The record holds what training produced; this file holds what is computed afterwards from the
trained weights on the same validation text, in one place so that adding an analysis never
means retraining:

- `matched`: routed PPL at matched Shallow% (0%, 2.5%, ..., 100%) for each confidence measure of
  `ease.exits.MEASURES` and for the oracle (the best any exit rule could do at that Shallow%);
- `agreement`: the share of tokens whose exit-layer argmax equals the last layer's;
- `real_exit`: PPL, Shallow% and Compute% when deeper layers really are skipped for exited tokens
  (`ease.decode`, state propagation), beside the simulated numbers of the same weights;
- `samples`: greedy generations from validation-text prompts with real early exit, each
  character with the layer it came from, at the operating threshold and at 0.5;
- `vocab_size` and `eval_tokens`;
- `test` (runs with held-out test text, `test_chars`, whose loss trains the exit layer): the same on
  the test split, with per-block sums for intervals that resample the text (the record's
  TEST_BLOCKS blocks): every measure and the oracle at matched Shallow%, real exit beside simulated
  exit, and `calibration`, whether Learn-then-Test's promise holds over many random calibration/test
  splits of the test text's blocks (`ease.calibrate.validity`). A grid whose chapters read only the
  validation parts asks for analyses without it (`analyse: validation`, see ease.grid).

- `multi_exit` (runs with several `exits` and test text): the several-exit front on the test split:
  one max-probability threshold shared by every exit, swept (simulated from one pass: each exit reads
  the full forward's states), with the share answered at each layer, Compute% by layers and by
  multiply-adds and per-block sums; real exit (state propagation across exits) at a few thresholds.

An analysis is recomputed when ANALYSIS_VERSION changes, or, for a run with test text, when
HELD_OUT_VERSION or (for a several-exit run) MULTI_EXIT_VERSION does (and the checkpoint is there).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ease.config import DOC_THRESHOLDS, FINE_THRESHOLDS, RunConfig
from ease.data import make_batches
from ease.exits import (MEASURES, ExitMeasures, TokenStats, block_bounds, collect_exit_measures, collect_token_stats,
                        matched_exits, matched_ppl, oracle_ppl, per_block, sweep)
from ease.results import analysis_path, checkpoint_path, read_record, write_json
from ease.train import CALIBRATION_BLOCK_TOKENS, TEST_BLOCKS, environment, load_trained, pick_device

ANALYSIS_VERSION = 1
HELD_OUT_VERSION = 1
SHALLOW_FRACTIONS = tuple(round(i * 0.025, 3) for i in range(41))
# Real exit needs a pass per threshold (the deeper layers see different states at each one).
REAL_EXIT_THRESHOLDS = tuple(sorted({0.0, 0.25, 0.6, 0.85, 0.975, 1.0, *DOC_THRESHOLDS}))
# Generation samples: prompts cut from the validation text, short enough that prompt and
# continuation stay within the training window (seq_len 64), so no position is extrapolated.
SAMPLE_OFFSETS, SAMPLE_PROMPT, SAMPLE_NEW = (1000, 4000, 7000), 24, 40
# Held-out text: the Shallow% at which measures are also kept per text block (for paired intervals), and the
# calibration experiment: tolerances, confidence, number of random halvings of the test text's blocks.
BLOCK_SHALLOW = (0.25, 0.5)
# Real exit on the whole test split costs a pass per threshold: the thresholds that span the Shallow% range
# (0.0: everyone exits; at 100% compute the record's full-depth numbers are the answer).
TEST_REAL_EXIT_THRESHOLDS = (0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95)
# Several exits: the shared thresholds of the simulated front (one pass for all) and of real exit (a pass each).
MULTI_EXIT_VERSION = 1
MULTI_EXIT_THRESHOLDS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)
MULTI_REAL_THRESHOLDS = (0.5, 0.8, 0.95)
CALIBRATION_EPSILONS = (0.02, 0.05, 0.1)
CALIBRATION_DELTA = 0.1
CALIBRATION_SPLITS = 200


def wants_held_out(config: RunConfig) -> bool:
    """Whether a run's analysis has a `test` part: it has test text and its loss trains the exit layer."""
    return config.test_chars != 0 and config.exit_layer < config.n_layers and \
        config.weights.get(config.exit_layer, 0.0) > 0 and not config.exits  # several exits: `multi_exit` instead


def wants_multi_exit(config: RunConfig) -> bool:
    """Whether a run's analysis has a `multi_exit` part: it has test text and names several exits."""
    return config.test_chars != 0 and bool(config.exits)


def load_analysis(config: RunConfig, results_dir: str | Path, held_out: bool = True) -> dict | None:
    """The current analysis of a run, or None (missing or made by an older ANALYSIS_VERSION). `held_out`
    False: a reader of the validation parts only, which an analysis without its `test` part serves."""
    path = analysis_path(results_dir, config.run_id)
    if not path.exists():
        return None
    data = read_record(path)
    if data.get("analysis_version") != ANALYSIS_VERSION:
        return None
    if held_out and wants_held_out(config) and data.get("test", {}).get("version") != HELD_OUT_VERSION:
        return None
    if wants_multi_exit(config) and data.get("multi_exit", {}).get("version") != MULTI_EXIT_VERSION:
        return None
    return data


def analyse(config: RunConfig, results_dir: str | Path, device: str = "cpu", held_out: bool = True) -> dict:
    """Compute a finished run's analysis from its checkpoint (see the module docstring); `held_out` False
    leaves out the `test` part (the costliest: real exit and calibration over the whole test split)."""
    from ease.decode import decode_text, real_exit_eval  # the real early-exit path

    torch.set_num_threads(1)  # as training: sums can depend on the thread count
    dev = pick_device(device)
    model, corpus = load_trained(results_dir, config)
    model, vocab = model.to(dev), corpus.vocab
    val_x, val_y = make_batches(corpus.val_ids, config.seq_len, config.batch_size)
    out = {"run_id": config.run_id, "analysis_version": ANALYSIS_VERSION, "vocab_size": len(vocab),
           "eval_tokens": int(val_y.numel())}
    if config.exit_layer < config.n_layers:
        m = collect_exit_measures(model, val_x, val_y, config.exit_layer, dev)
        out["agreement"] = m.agree.double().mean().item()
        out["shallow_fractions"] = list(SHALLOW_FRACTIONS)
        out["matched"] = {name: matched_ppl(m.scores[name], m.ce_exit, m.ce_last, SHALLOW_FRACTIONS)
                          for name in MEASURES}
        out["matched"]["oracle"] = oracle_ppl(m.ce_exit, m.ce_last, SHALLOW_FRACTIONS)
        simulated = sweep(collect_token_stats(model, val_x, val_y, config.exit_layer, dev), REAL_EXIT_THRESHOLDS)
        real = real_exit_eval(model, val_x.to(dev), val_y.to(dev), REAL_EXIT_THRESHOLDS, config.exit_layer)
        out["real_exit"] = [{**r, **{f"sim_{k}": v for k, v in s.items() if k != "threshold"}}
                            for r, s in zip(real, simulated)]
        text = "".join(vocab[i] for i in corpus.val_ids.tolist())
        prompts = [text[o:o + SAMPLE_PROMPT] for o in SAMPLE_OFFSETS if o + SAMPLE_PROMPT <= len(text)]
        new = min(SAMPLE_NEW, config.seq_len - SAMPLE_PROMPT)
        out["samples"] = []
        for t in sorted({config.threshold, 0.5}, reverse=True):
            for d in decode_text(model, vocab, prompts, new, threshold=t, exit_layer=config.exit_layer):
                out["samples"].append({"threshold": t, "prompt": d.prompt, "text": d.text, "layers": d.layers})
    if held_out and wants_held_out(config):
        out["test"] = held_out_analysis(model, corpus.test_ids, config, dev)
    if wants_multi_exit(config):
        out["multi_exit"] = multi_exit_analysis(model, corpus.test_ids, config, dev)
    out["env"] = environment(dev)
    return out


def held_out_analysis(model, test_ids: torch.Tensor, config: RunConfig, dev) -> dict:
    """The `test` part of an analysis (see the module docstring); blocks as in the run's record."""
    from ease.calibrate import RISKS, validity
    from ease.decode import real_exit_eval

    test_x, test_y = make_batches(test_ids, config.seq_len, config.batch_size)
    m: ExitMeasures = collect_exit_measures(model, test_x, test_y, config.exit_layer, dev)
    stats = TokenStats(m.scores["max_prob"], m.ce_exit, m.ce_last, config.exit_layer, config.n_layers, m.agree)
    bounds = block_bounds(len(m), TEST_BLOCKS)
    ce_exit, ce_last = m.ce_exit.double(), m.ce_last.double()
    rank = {**m.scores, "oracle": ce_last - ce_exit}  # the oracle ranks by what exiting gains
    out = {"version": HELD_OUT_VERSION, "tokens": len(m), "blocks": TEST_BLOCKS,
           "agreement": m.agree.double().mean().item(), "shallow_fractions": list(SHALLOW_FRACTIONS),
           "matched": {name: matched_ppl(score, m.ce_exit, m.ce_last, SHALLOW_FRACTIONS)
                       for name, score in rank.items()},
           "matched_blocks": {}}
    for f in BLOCK_SHALLOW:
        out["matched_blocks"][str(f)] = {
            name: per_block(torch.where(matched_exits(score, f), ce_exit, ce_last), bounds)
            for name, score in rank.items()}
    simulated = sweep(stats, TEST_REAL_EXIT_THRESHOLDS)
    real = real_exit_eval(model, test_x.to(dev), test_y.to(dev), TEST_REAL_EXIT_THRESHOLDS, config.exit_layer,
                          n_blocks=TEST_BLOCKS)
    out["real_exit"] = [{**r, **{f"sim_{k}": v for k, v in s.items() if k != "threshold"}}
                        for r, s in zip(real, simulated)]
    calibration_blocks = len(m) // CALIBRATION_BLOCK_TOKENS
    out["calibration"] = {"block_tokens": CALIBRATION_BLOCK_TOKENS, "n_blocks": calibration_blocks,
                          "thresholds": list(FINE_THRESHOLDS), "runs": []}
    for risk in RISKS:
        for eps in CALIBRATION_EPSILONS:
            v = validity(stats, FINE_THRESHOLDS, calibration_blocks, risk, eps, CALIBRATION_DELTA,
                         splits=CALIBRATION_SPLITS, seed=config.seed)
            out["calibration"]["runs"].append(v.to_dict())
    return out


def ensure_analysis(config: RunConfig, results_dir: str | Path, device: str = "cpu", held_out: bool = True) -> dict:
    """The run's current analysis, computed and written (atomically) when missing or outdated (`held_out`: as
    in load_analysis and analyse)."""
    found = load_analysis(config, results_dir, held_out)
    if found is not None:
        return found
    if not checkpoint_path(results_dir, config.run_id).exists():
        raise FileNotFoundError(
            f"run {config.run_id} has no current analysis ({analysis_path(results_dir, config.run_id)}) and no "
            "checkpoint to compute one from (checkpoints are not committed). Re-run it: python -m ease.pipeline "
            "with its grid after deleting its record, or `make reproduce` for all runs")
    data = analyse(config, results_dir, device, held_out)
    write_json(analysis_path(results_dir, config.run_id), data)
    return data


def multi_exit_analysis(model, test_ids: torch.Tensor, config: RunConfig, dev) -> dict:
    """The `multi_exit` part of an analysis (see the module docstring); blocks as in the run's record. Layers
    are JSON keys, so they are written as strings."""
    from ease.decode import multi_exit_eval, multi_exit_macs
    from ease.exits import collect_multi_exit_stats

    exits = config.exits
    test_x, test_y = make_batches(test_ids, config.seq_len, config.batch_size)
    stats = collect_multi_exit_stats(model, test_x, test_y, exits, dev)
    out = multi_exit_front(stats, multi_exit_macs(model.cfg, exits))
    for t in MULTI_REAL_THRESHOLDS:
        real = multi_exit_eval(model, test_x.to(dev), test_y.to(dev), exits, t, n_blocks=TEST_BLOCKS)
        out["real"].append({"threshold": t, **real, "shares": {str(k): v for k, v in real["shares"].items()},
                            "block_layers": {str(k): v for k, v in real["block_layers"].items()}})
    return out


def multi_exit_front(stats, macs: dict) -> dict:
    """The `multi_exit` part's simulated half from a pass's per-token stats (ease.exits.MultiExitStats) and the
    multiply-adds by layer left at (ease.decode.multi_exit_macs); `real` is left empty for the real-exit rows."""
    from ease.exits import first_exit, route_multi

    layers = (*stats.exits, stats.n_layers)
    bounds = block_bounds(len(stats), TEST_BLOCKS)
    out = {"version": MULTI_EXIT_VERSION, "exits": list(stats.exits), "tokens": len(stats), "blocks": TEST_BLOCKS,
           "block_tokens": per_block(torch.ones(len(stats)), bounds),
           "layer_block_ce": {str(layer): per_block(stats.ce[i], bounds) for i, layer in enumerate(layers)},
           "macs": {str(k): v for k, v in macs.items()}, "sweep": [], "real": []}
    for t in MULTI_EXIT_THRESHOLDS:
        routed = route_multi(stats, t)
        where = first_exit(stats.confidence, routed["thresholds"])
        out["sweep"].append({
            "threshold": t, "ppl": routed["ppl"], "compute_frac": routed["compute_frac"],
            "shares": {str(k): v for k, v in routed["shares"].items()},
            "flop_compute_frac": sum(share * macs[k] for k, share in routed["shares"].items()) / macs["full"],
            "block_ce": per_block(stats.ce.gather(0, where[None].long()).squeeze(0), bounds),
            "block_layers": {str(layer): per_block(where == i, bounds) for i, layer in enumerate(layers)}})
    return out
