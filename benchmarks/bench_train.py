"""Training and evaluation throughput of the default config (a benchmark, not a test).

Prints a table of tokens/s for training (counting the per-epoch evaluation, as a real run does)
and for evaluation alone, with one torch thread and with all cores.

    python benchmarks/bench_train.py [--epochs 2] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from ease import RunConfig
from ease.data import load_corpus, make_batches
from ease.exits import collect_token_stats
from ease.train import build_model, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="epochs to time (early stopping off)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--setting", default="A", choices=["A", "B"])
    args = parser.parse_args()

    # patience high so exactly --epochs epochs run
    config = RunConfig(setting=args.setting, max_epochs=args.epochs, patience=args.epochs)
    corpus = load_corpus(config.corpus, config.train_chars, config.val_chars, config.vocab_from)
    val_x, val_y = make_batches(corpus.val_ids, config.seq_len, config.batch_size)
    rows = []
    for threads in dict.fromkeys(args.threads):
        torch.set_num_threads(threads)
        trained = train_model(config, corpus, progress=False)
        train_tps = trained.train_tokens / trained.train_s
        model = build_model(config, corpus.vocab_size)
        collect_token_stats(model, val_x[:2], val_y[:2])  # warm-up
        start = time.perf_counter()
        repeats = 5
        for _ in range(repeats):
            collect_token_stats(model, val_x, val_y, config.exit_layer)
        eval_tps = repeats * val_x.numel() / (time.perf_counter() - start)
        rows.append((threads, train_tps, eval_tps))

    print(f"\nsetting {config.setting}, {config.train_chars:,} train chars, {args.epochs} epochs, "
          f"torch {torch.__version__}")
    print(f"{'threads':>7} | {'train tokens/s (incl. per-epoch eval)':>38} | {'eval tokens/s':>13}")
    print(f"{'-' * 7}-+-{'-' * 38}-+-{'-' * 13}")
    for threads, train_tps, eval_tps in rows:
        print(f"{threads:>7} | {train_tps:>38,.0f} | {eval_tps:>13,.0f}")


if __name__ == "__main__":
    main()
