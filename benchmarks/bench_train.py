"""Training throughput of the default config, and how close one training step comes to this core's limit
(a benchmark, not a test).

Each measurement is a fresh process that trains `--epochs` epochs (early stopping off, per-epoch
evaluation included, as a real run) and reports its training tokens/s and its start-up cost (imports,
data, vocabulary, model build). Variants alternate round by round, so a busy neighbour slows all of them
alike; the table shows the median and range over `--rounds`.

    python benchmarks/bench_train.py [--epochs 3] [--rounds 3] [--setting A] [--against REV]

`--against REV` also times the code of git revision REV (checked out into a temporary worktree), e.g.
the commit before a speed change, side by side with this code.

The limit: the FLOPs of one training step are counted (torch.utils.flop_counter); every matrix product
of the step is timed alone on this core, hot in cache, at its own shape. The step's products at those
speeds are the limit (element-wise work, attention and the optimiser are taken as free), so the share of
the limit says how much of the core's matrix speed a real step gets.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh process with the code under test first on sys.path; uses only the API that every
# revision of ease has had (RunConfig, load_corpus, build_model, train_model).
WORKER = r"""
import json, sys, time
launched, threads, fields = float(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
import torch
from ease import RunConfig
from ease.data import load_corpus
from ease.train import build_model, train_model
torch.set_num_threads(threads)
config = RunConfig(**fields)
corpus = load_corpus(config.corpus, config.train_chars, config.val_chars, config.vocab_from)
build_model(config, corpus.vocab_size)
startup = time.time() - launched  # what every run pays before its first step
trained = train_model(config, corpus, progress=False)
print(json.dumps({"startup_s": startup, "train_tokens_per_s": trained.train_tokens / trained.train_s}))
"""


def measure(code_dir: Path, threads: int, fields: dict, processes: int = 1) -> dict:
    """One run (or `processes` runs at once, their tokens/s added up) of the code in `code_dir`."""
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    running = [subprocess.Popen([sys.executable, "-c", WORKER, repr(time.time()), str(threads), json.dumps(fields)],
                                env=env, cwd=code_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(processes)]
    results = []
    for proc in running:
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"benchmark run in {code_dir} failed:\n{err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"startup_s": max(r["startup_s"] for r in results),
            "train_tokens_per_s": sum(r["train_tokens_per_s"] for r in results)}


class MatmulShapes(TorchDispatchMode):
    """Records the operand shapes of every matrix product dispatched while active."""

    def __init__(self):
        super().__init__()
        self.products: list[tuple[str, tuple, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm"):
            a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
            self.products.append((name, tuple(a.shape), tuple(b.shape)))
        return func(*args, **(kwargs or {}))


def one_step(config, corpus):
    """A model, its optimiser and a function running one training step on the first batch."""
    from ease.data import make_batches
    from ease.losses import trained_layers, weighted_loss
    from ease.train import build_model

    model = build_model(config, corpus.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=True)
    x, y = (t[0] for t in make_batches(corpus.train_ids, config.seq_len, config.batch_size))
    layers = trained_layers(config.weights)

    def step():
        loss = weighted_loss(model(x, layers=layers), y, config.weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
        optimizer.step()

    return step, x.numel()


def product_seconds(a_shape: tuple, b_shape: tuple, repeats: int = 7, calls: int = 30) -> float:
    """Best time of one product of these shapes on this core, operands hot in cache."""
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    for _ in range(5):
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def step_limit(config, corpus) -> dict:
    """FLOPs of one training step and the tokens/s its matrix products would allow at this core's speed."""
    torch.set_num_threads(1)
    step, tokens = one_step(config, corpus)
    step()  # warm-up: optimiser state exists, as in every later step
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    shapes = MatmulShapes()
    with shapes:
        step()
    matmul_flops, matmul_s = 0, 0.0
    for _, a, b in shapes.products:
        flops = 2 * a[-2] * a[-1] * b[-1] * (a[0] if len(a) == 3 else 1)
        matmul_flops += flops
        matmul_s += product_seconds(a, b)
    return {"step_flops": counter.get_total_flops(), "matmul_flops": matmul_flops, "products": len(shapes.products),
            "matmul_gflops": matmul_flops / matmul_s / 1e9, "limit_tokens_per_s": tokens / matmul_s,
            "tokens_per_step": tokens}


def eval_tokens_per_s(config, corpus, threads: int, repeats: int = 5) -> float:
    from ease.data import make_batches
    from ease.exits import collect_token_stats
    from ease.train import build_model

    torch.set_num_threads(threads)
    val_x, val_y = make_batches(corpus.val_ids, config.seq_len, config.batch_size)
    model = build_model(config, corpus.vocab_size)
    collect_token_stats(model, val_x[:2], val_y[:2])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        collect_token_stats(model, val_x, val_y, config.exit_layer)
    return repeats * val_x.numel() / (time.perf_counter() - start)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):>9,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement (early stopping off)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per variant, alternating")
    parser.add_argument("--setting", default="A", choices=["A", "B"])
    parser.add_argument("--against", metavar="REV", help="also time the code of this git revision, side by side")
    args = parser.parse_args()

    from ease import RunConfig
    from ease.data import load_corpus

    fields = {"setting": args.setting, "max_epochs": args.epochs, "patience": args.epochs}
    compiled = {**fields, "compile": True}
    config = RunConfig(**fields)
    corpus = load_corpus(config.corpus, config.train_chars, config.val_chars, config.vocab_from)
    limit = step_limit(config, corpus)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    # (name, code, threads per run, run fields, runs at once)
    variants = [("this code", ROOT, 1, fields, 1), ("this code, compile: true", ROOT, 1, compiled, 1)]
    if cores > 1:  # how a grid should use the cores: one run on all of them, or one run per core
        variants += [(f"compile, 1 run x {cores} threads", ROOT, cores, compiled, 1),
                     (f"compile, {cores} runs x 1 thread", ROOT, 1, compiled, cores)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            worktree = Path(tmp) / "against"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.against],
                           check=True, capture_output=True)
            variants.insert(0, (args.against, worktree, 1, fields, 1))
        measure(ROOT, 1, {**compiled, "max_epochs": 1, "patience": 1})  # fill the compile cache first
        try:
            runs = {i: [] for i in range(len(variants))}
            for round_ in range(args.rounds):
                for i, (name, code, threads, variant_fields, processes) in enumerate(variants):
                    runs[i].append(measure(code, threads, variant_fields, processes))
                    print(f"round {round_ + 1}/{args.rounds}: {name}: {runs[i][-1]['train_tokens_per_s']:,.0f} "
                          "tokens/s", file=sys.stderr)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True)

    print(f"\nsetting {config.setting}, {config.train_chars:,} train chars, {args.epochs} epochs per run "
          f"(compiling counted), {args.rounds} runs each (median, range), torch {torch.__version__}, {cores} cores")
    base = statistics.median(r["train_tokens_per_s"] for r in runs[0])
    header = (f"{'code':<28} | {'train tokens/s (incl. eval)':>29} | {'vs first':>8} | {'share of limit':>14} | "
              f"{'start-up s':>10}")
    print(header)
    print("-" * len(header))
    for i, (name, _, threads, _, processes) in enumerate(variants):
        tps = [r["train_tokens_per_s"] for r in runs[i]]
        # the limit is one core's: a variant on n cores is held to n times it
        share = statistics.median(tps) / (limit["limit_tokens_per_s"] * threads * processes)
        startup = statistics.median(r["startup_s"] for r in runs[i])
        print(f"{name:<28} | {summary(tps):>29} | {statistics.median(tps) / base:>7.2f}x | {share:>14.0%} | "
              f"{startup:>10.2f}")
    print(f"\nevaluation alone (this code, 1 thread): {eval_tokens_per_s(config, corpus, 1):,.0f} tokens/s")
    print(f"One training step ({limit['tokens_per_step']:,} tokens): {limit['step_flops'] / 1e9:.2f} GFLOP counted "
          f"(torch.utils.flop_counter), of which matrix products {limit['matmul_flops'] / 1e9:.2f} GFLOP in "
          f"{limit['products']} products.")
    print(f"This core runs the step's products, alone and hot in cache, at {limit['matmul_gflops']:.0f} GFLOP/s "
          f"(one thread): the limit is {limit['limit_tokens_per_s']:,.0f} tokens/s per core. Share of limit = "
          "measured training tokens/s / (that limit x cores used).")


if __name__ == "__main__":
    main()
