"""Why batched early exit falls short of 1/Compute%, and what the "grouped" schedule can win (a benchmark).

Part 1 times one pass of every layer's matrix products of a model (random weights: speed does not depend
on them) for 1, 2, 4, ..., 32 rows, and fits time = fixed + per_row * rows: the weights are streamed from
memory whatever the number of rows, so on a CPU a pass for a few rows costs nearly as much as for all.

Part 2 puts that fit into a cost model of decoding B rows of N tokens, each token exiting at layer 1 with
probability `--exit-share` independently: lockstep (ease.decode.generate's default: every step runs layer 1
for all rows and the deeper layers whenever any row goes deep) against "grouped" (rows advance on their
own; the deeper layers run once GROUP_WAIT of the unfinished rows wait, or nobody can go on), each as a
share of the theoretical 1/Compute%. It ignores what is not a matrix product (attention, the head, Python).

    python benchmarks/bench_batch_rows.py [--layers 12 --dim 256 --heads 8] [--batch 16] [--exit-share 0.5]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from ease.decode import GROUP_WAIT
from ease.model import EarlyExitLM, ModelConfig

ROWS = (1, 2, 4, 8, 16, 32)


def time_layer_pass(model: EarlyExitLM, rows: int, repeats: int) -> float:
    """Median seconds of one pass of every block's matrix products for `rows` rows."""
    weights = [p for block in model.blocks for p in block.parameters() if p.dim() == 2]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_cost(batch: int, tokens: int, layers: int, exit_share: float, per_row: float, schedule: str,
                rng: random.Random) -> tuple[float, float]:
    """(cost, Compute%) of decoding `batch` rows; a pass of k layers for r rows costs k * (1 + per_row * r)."""
    deep = [[rng.random() >= exit_share for _ in range(tokens)] for _ in range(batch)]
    compute = sum(1 + (layers - 1) * d for row in deep for d in row) / (batch * tokens * layers)
    cost = 0.0
    if schedule == "lockstep":
        for i in range(tokens):
            cost += 1 + per_row * batch
            going = sum(row[i] for row in deep)
            cost += (layers - 1) * (1 + per_row * going) if going else 0.0
        return cost, compute
    done, waiting = [0] * batch, [False] * batch
    while any(n < tokens for n in done):
        ready = [b for b in range(batch) if done[b] < tokens and not waiting[b]]
        if ready:
            cost += 1 + per_row * len(ready)
            for b in ready:
                if deep[b][done[b]]:
                    waiting[b] = True
                else:
                    done[b] += 1
        unfinished = [b for b in range(batch) if done[b] < tokens]
        wait = [b for b in range(batch) if waiting[b]]
        if wait and (len(wait) >= GROUP_WAIT * len(unfinished) or all(waiting[b] for b in unfinished)):
            cost += (layers - 1) * (1 + per_row * len(wait))
            for b in wait:
                done[b], waiting[b] = done[b] + 1, False
    return cost, compute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--exit-share", type=float, default=0.5, help="chance that a token exits at layer 1")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--trials", type=int, default=20, help="random exit patterns averaged in the cost model")
    args = parser.parse_args()
    if not 0 <= args.exit_share <= 1 or min(args.layers, args.dim, args.batch, args.tokens, args.repeats) < 1:
        parser.error("--exit-share must lie in 0..1 and the sizes must be at least 1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = EarlyExitLM(ModelConfig(vocab_size=200, n_layers=args.layers, dim=args.dim, n_heads=args.heads,
                                    norm="pre")).eval()
    times = {rows: time_layer_pass(model, rows, args.repeats) for rows in ROWS}
    slope, fixed = torch.linalg.lstsq(torch.tensor([[r, 1.0] for r in ROWS], dtype=torch.float64),
                                      torch.tensor([[times[r]] for r in ROWS], dtype=torch.float64)).solution[:, 0]
    print(f"one pass of the matrix products of {args.layers} layers x {args.dim} (1 thread, median of {args.repeats}):")
    for rows in ROWS:
        print(f"  {rows:3d} rows  {1000 * times[rows]:7.2f} ms   ({times[rows] / times[1]:.2f}x one row)")
    per_row = float(slope / fixed)
    print(f"  fit: {1000 * fixed:.2f} ms + {1000 * slope:.3f} ms per row (each row adds {100 * per_row:.1f}% of the fixed cost)")
    rng = random.Random(0)
    print(f"\ncost model, batch {args.batch}, {args.tokens} tokens, exit share {args.exit_share:g}, "
          f"GROUP_WAIT {GROUP_WAIT:g} ({args.trials} random exit patterns):")
    full = args.tokens * args.layers * (1 + per_row * args.batch)
    for schedule in ("lockstep", "grouped"):
        costs = [decode_cost(args.batch, args.tokens, args.layers, args.exit_share, per_row, schedule, rng)
                 for _ in range(args.trials)]
        speedup = statistics.mean(full / c for c, _ in costs)
        theory = statistics.mean(1 / comp for _, comp in costs)
        print(f"  {schedule:9} speedup {speedup:.2f}x of 1/Compute% {theory:.2f}x = {100 * speedup / theory:.0f}%")


if __name__ == "__main__":
    main()
