"""Train the default config on CUDA and print its numbers and speed (a check, not a test).

Used on a lent GPU machine whose image lacks the `datasets` package, so it reads the WikiText-2
text files of --data-dir directly (same bytes as ease.data reads through `datasets`).

    python benchmarks/gpu_check.py --data-dir DIR [--setting A --alpha 0.7 --seed 0]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ease import RunConfig
from ease.data import build_corpus, make_batches
from ease.exits import collect_token_stats, summary
from ease.train import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--setting", default="A")
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = RunConfig(setting=args.setting, alpha=args.alpha, seed=args.seed)
    read = lambda name: (args.data_dir / name).read_text(encoding="utf-8")  # noqa: E731
    corpus = build_corpus(read("train.txt")[:config.train_chars], read("valid.txt")[:config.val_chars])
    results = {}
    for device in ("cuda", "cpu"):
        if device == "cuda" and not torch.cuda.is_available():
            print("CUDA not available")
            continue
        torch.set_num_threads(1)
        start = time.perf_counter()
        trained = train_model(config, corpus, device=device, progress=False)
        val_x, val_y = make_batches(corpus.val_ids, config.seq_len, config.batch_size)
        stats = collect_token_stats(trained.model, val_x, val_y, config.exit_layer, device)
        results[device] = {**summary(stats, config.threshold), "best_epoch": trained.best_epoch,
                           "epochs": len(trained.history), "train_tokens_per_s": trained.train_tokens / trained.train_s,
                           "wall_s": time.perf_counter() - start}
        print(device, json.dumps(results[device]), flush=True)
    if torch.cuda.is_available():
        print("gpu:", torch.cuda.get_device_name(), "torch", torch.__version__)


if __name__ == "__main__":
    main()
