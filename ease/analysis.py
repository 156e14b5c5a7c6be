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
- `vocab_size` and `eval_tokens`.

An analysis is recomputed when ANALYSIS_VERSION changes (and the checkpoint is there).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ease.config import DOC_THRESHOLDS, RunConfig
from ease.data import make_batches
from ease.exits import MEASURES, collect_exit_measures, collect_token_stats, matched_ppl, oracle_ppl, sweep
from ease.results import analysis_path, checkpoint_path, read_record, write_json
from ease.train import environment, load_trained, pick_device

ANALYSIS_VERSION = 1
SHALLOW_FRACTIONS = tuple(round(i * 0.025, 3) for i in range(41))
# Real exit needs a pass per threshold (the deeper layers see different states at each one).
REAL_EXIT_THRESHOLDS = tuple(sorted({0.0, 0.25, 0.6, 0.85, 0.975, 1.0, *DOC_THRESHOLDS}))
# Generation samples: prompts cut from the validation text, short enough that prompt and
# continuation stay within the training window (seq_len 64), so no position is extrapolated.
SAMPLE_OFFSETS, SAMPLE_PROMPT, SAMPLE_NEW = (1000, 4000, 7000), 24, 40


def load_analysis(config: RunConfig, results_dir: str | Path) -> dict | None:
    """The current analysis of a run, or None (missing or made by an older ANALYSIS_VERSION)."""
    path = analysis_path(results_dir, config.run_id)
    if not path.exists():
        return None
    data = read_record(path)
    return data if data.get("analysis_version") == ANALYSIS_VERSION else None


def analyse(config: RunConfig, results_dir: str | Path, device: str = "cpu") -> dict:
    """Compute a finished run's analysis from its checkpoint (see the module docstring)."""
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
    out["env"] = environment(dev)
    return out


def ensure_analysis(config: RunConfig, results_dir: str | Path, device: str = "cpu") -> dict:
    """The run's current analysis, computed and written (atomically) when missing or outdated."""
    found = load_analysis(config, results_dir)
    if found is not None:
        return found
    if not checkpoint_path(results_dir, config.run_id).exists():
        raise FileNotFoundError(
            f"run {config.run_id} has no current analysis ({analysis_path(results_dir, config.run_id)}) and no "
            "checkpoint to compute one from (checkpoints are not committed). Re-run it: python -m ease.pipeline "
            "with its grid after deleting its record, or `make reproduce` for all runs")
    data = analyse(config, results_dir, device)
    write_json(analysis_path(results_dir, config.run_id), data)
    return data
