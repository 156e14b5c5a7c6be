"""Decoding speed of real early exit against full depth (a benchmark, not a test).

For the default model (setting A, alpha 0.7, seed 0) and a larger one (12 layers, dim 256, 8 heads,
pre-norm), both trained once into RESULTS/bench (the larger one in about 6 minutes on a quiet core),
greedy-decodes windows of the validation text at
batch sizes 1 and 16 with full depth and at several thresholds. Each configuration is timed
`--repeats` times after one excluded warm-up run, round-robin over the configurations (so slow
drifts in machine load hit them all alike); the median is reported. A timed run calls `generate`
often enough to last about 0.25 s. Tokens/s counts the generated tokens of the whole `generate`
call (prefill of the prompt included). Besides the document's thresholds, each batch gets three
thresholds calibrated (by bisection on the decoding itself) to about 30, 50 and 70% Compute.

Columns: shallow% (generated tokens that exited), layer Compute% (as ease.exits.route), FLOP
Compute% (ease.decode.flop_compute_frac, attention at the mean decoding context included),
tokens/s, measured speedup over full depth, theoretical speedup 1/Compute% and their ratio.

With --drafts K..., lossless self-speculative decoding (ease.decode.speculative_generate) joins the same
round-robin at each draft length K: the exit layer drafts K tokens, the deeper layers check them in one
pass. Its output is checked to be the full model's greedy output token for token (the benchmark stops
if not); its table gives the acceptance rate, tokens per verification pass and the measured speedup
over full-depth decoding (there is no Compute% to compare with: every kept token went through every layer).
--models takes, besides the two above, the document's other cells (A at alpha 0.3 and 0.5, B at 0.7), to
see acceptance against alpha and setting.

With --grouped, batches above 1 also decode with the "grouped" schedule (rows advance on their own and
the deeper layers run once for many waiting rows; see ease.decode.generate) at every threshold, in the same
round-robin; its table gives each schedule's speedup as a share of the theoretical 1/Compute%.

    python benchmarks/bench_decode.py [--device cpu|cuda|auto] [--threads 1] [--drafts 1 2 4 8] [--grouped] [--json OUT]
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from ease import RunConfig, run
from ease.config import DOC_THRESHOLDS
from ease.decode import compute_fracs, generate, speculative_generate
from ease.exits import layer_compute_frac
from ease.results import bench_dir, checkpoint_path, write_json
from ease.train import load_trained, pick_device

# Both models live in RESULTS/bench (records and checkpoints), apart from the book's canonical runs,
# which the benchmark must never rewrite (checkpoints are not committed, so it may have to retrain).
MODELS = {
    "default": RunConfig(setting="A", alpha=0.7, seed=0),
    # exit at layer 1 of 12 trained with equal weight on layers 1 and 12; two epochs of the default text.
    # Pre-norm: with post-norm blocks (the default) this depth did not learn its deep layers in two epochs.
    "large": RunConfig(setting="custom", alpha=None, weights={1: 0.5, 12: 0.5}, n_layers=12, dim=256,
                       n_heads=8, norm="pre", max_epochs=2, patience=1),
    # the document's other cells, for acceptance against alpha and setting (--models)
    "A0.3": RunConfig(setting="A", alpha=0.3, seed=0),
    "A0.5": RunConfig(setting="A", alpha=0.5, seed=0),
    "B0.7": RunConfig(setting="B", alpha=0.7, seed=0),
}
DEFAULT_MODELS = ("default", "large")
TARGET_COMPUTE = (0.3, 0.5, 0.7)  # besides the document's thresholds, ones calibrated to these Compute%
MIN_RUN_S = 0.25  # a timed run repeats `generate` until it lasts about this long (short calls are noisy)


def layer_compute(gen, config) -> float:
    shallow = (gen.layers == config.exit_layer).double().mean().item()
    return layer_compute_frac(shallow, config.exit_layer, config.n_layers)


def calibrate(model, config, prompts, new_tokens, target, steps=8) -> float:
    """A threshold whose measured layer Compute% when decoding these prompts is near `target`.

    Bisection on [0, 1]: a higher threshold lets fewer tokens exit. Calibrated on decoding itself,
    because a model decoding its own output is more or less confident than on the validation text.
    """
    lo, hi, best = 0.0, 1.0, (float("inf"), 1.0)
    for _ in range(steps):
        mid = round((lo + hi) / 2, 4)
        gen = generate(model, prompts, new_tokens, threshold=mid, exit_layer=config.exit_layer)
        compute = layer_compute(gen, config)
        best = min(best, (abs(compute - target), mid))
        lo, hi = (mid, hi) if compute < target else (lo, mid)
    return best[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(name, args, device) -> list[dict]:
    config, results_dir = MODELS[name], bench_dir(args.results)
    # trains if the record or the checkpoint is missing (checkpoints are not committed; same seed, same weights)
    missing = not checkpoint_path(results_dir, config.run_id).exists()
    record = run(config, results_dir, num_threads=args.threads, retrain=missing)
    model, corpus = load_trained(results_dir, config)
    model = model.to(device)
    e, L = config.exit_layer, config.n_layers
    rows, spec_rows, group_rows = [], [], []
    for batch in args.batches:
        # prompts: windows of the validation text, 997 characters apart, one per row
        prompts = [corpus.val_ids[s:s + args.prompt_len].tolist() for s in range(0, batch * 997, 997)]
        calibrated = {calibrate(model, config, prompts, args.new_tokens, c) for c in TARGET_COMPUTE}
        thresholds = [None, *sorted({*DOC_THRESHOLDS, *calibrated})]

        # every variant timed in one round-robin: early exit at each threshold, speculative at each draft length
        variants = {t: (lambda t=t: generate(model, prompts, args.new_tokens, threshold=t, exit_layer=e))
                    for t in thresholds}
        for k in args.drafts:
            variants[("draft", k)] = lambda k=k: speculative_generate(model, prompts, args.new_tokens, draft=k,
                                                                      exit_layer=e)
        if args.grouped and batch > 1:
            for t in thresholds[1:]:
                variants[("grouped", t)] = lambda t=t: generate(model, prompts, args.new_tokens, threshold=t,
                                                                exit_layer=e, schedule="grouped")
        sync(device)
        start = time.perf_counter()
        gens = {key: decode() for key, decode in variants.items()}  # warm-up, not timed
        sync(device)
        for k in args.drafts:  # lossless: the full model's greedy tokens, or the benchmark is wrong
            if not torch.equal(gens[("draft", k)].tokens, gens[None].tokens):
                raise SystemExit(f"{name}, batch {batch}: speculative decoding with draft {k} changed the output")
        calls = max(1, math.ceil(MIN_RUN_S * len(variants) / (time.perf_counter() - start)))
        times = {key: [] for key in variants}
        for _ in range(args.repeats):
            for key, decode in variants.items():  # round-robin: drifts in machine load hit every variant alike
                sync(device)
                start = time.perf_counter()
                for _ in range(calls):
                    decode()
                sync(device)
                times[key].append((time.perf_counter() - start) / calls)
        full_tps = batch * args.new_tokens / statistics.median(times[None])
        context = args.prompt_len + (args.new_tokens - 1) / 2  # mean keys a generated token's query sees
        for t in thresholds:
            shallow = (gens[t].layers == e).double().mean().item() if t is not None else 0.0
            fracs = compute_fracs(shallow, model.cfg, e, decide=t is not None, context=context)
            tps = batch * args.new_tokens / statistics.median(times[t])
            speedup = tps / full_tps
            rows.append({"model": name, "run_id": config.run_id, "n_layers": L, "dim": config.dim,
                         "batch": batch, "threshold": t, "calibrated": t in calibrated,
                         "shallow_frac": shallow, **fracs,
                         "tokens_per_s": tps, "speedup": speedup, "theoretical_speedup": 1 / fracs["compute_frac"],
                         "flop_theoretical_speedup": 1 / fracs["flop_compute_frac"],
                         "ratio": speedup * fracs["compute_frac"], "calls_per_run": calls,
                         "times_s": times[t], "train_s": record["timing"]["train_s"]})
        for k in args.drafts:
            g, tps = gens[("draft", k)], batch * args.new_tokens / statistics.median(times[("draft", k)])
            spec_rows.append({"model": name, "run_id": config.run_id, "n_layers": L, "dim": config.dim,
                              "setting": config.setting, "alpha": config.alpha, "batch": batch, "draft": k,
                              "acceptance": g.acceptance, "tokens_per_pass": args.new_tokens / g.rounds,
                              "tokens_per_s": tps, "speedup": tps / full_tps, "identical": True,
                              "calls_per_run": calls, "times_s": times[("draft", k)]})
        for key in (key for key in variants if isinstance(key, tuple) and key[0] == "grouped"):
            t, lockstep = key[1], next(r for r in rows if r["batch"] == batch and r["threshold"] == key[1])
            tps = batch * args.new_tokens / statistics.median(times[key])
            group_rows.append({**{k: lockstep[k] for k in ("model", "run_id", "n_layers", "dim", "batch", "threshold",
                                                          "calibrated", "shallow_frac", "compute_frac")},
                               "schedule": "grouped", "tokens_per_s": tps, "speedup": tps / full_tps,
                               "ratio": tps / full_tps * lockstep["compute_frac"],
                               "lockstep_ratio": lockstep["ratio"],
                               # rows never interact, so only float rounding of other matmul shapes could differ
                               "identical": bool(torch.equal(gens[key].tokens, gens[t].tokens)),
                               "calls_per_run": calls, "times_s": times[key]})
    return rows, spec_rows, group_rows


def print_grouped(rows) -> None:
    print(f"{'model':8} {'batch':>5} {'thresh':>7} {'compute%':>8} {'lockstep':>9} {'grouped':>8} {'same':>5}")
    for r in rows:
        print(f"{r['model']:8} {r['batch']:5d} {r['threshold']:7.4g} {100 * r['compute_frac']:7.1f}% "
              f"{100 * r['lockstep_ratio']:8.0f}% {100 * r['ratio']:7.0f}% {'yes' if r['identical'] else 'NO':>5}")


def print_table(rows) -> None:
    head = (f"{'model':>7} {'batch':>5} {'threshold':>9} {'shallow%':>8} {'Compute%':>8} {'FLOP%':>6} "
            f"{'tokens/s':>9} {'speedup':>7} {'1/Comp':>6} {'meas/theo':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        t = "full" if r["threshold"] is None else f"{r['threshold']:g}"
        print(f"{r['model']:>7} {r['batch']:>5} {t:>9} {100 * r['shallow_frac']:>8.1f} "
              f"{100 * r['compute_frac']:>8.1f} {100 * r['flop_compute_frac']:>6.1f} {r['tokens_per_s']:>9.0f} "
              f"{r['speedup']:>7.2f} {r['theoretical_speedup']:>6.2f} {r['ratio']:>9.2f}")


def print_speculative(rows) -> None:
    head = f"{'model':>7} {'batch':>5} {'draft':>5} {'accepted':>8} {'tok/pass':>8} {'tokens/s':>9} {'speedup':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:>7} {r['batch']:>5} {r['draft']:>5} {100 * r['acceptance']:>7.1f}% "
              f"{r['tokens_per_pass']:>8.2f} {r['tokens_per_s']:>9.0f} {r['speedup']:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    parser.add_argument("--drafts", type=int, nargs="*", default=[],
                        help="draft lengths for lossless self-speculative decoding (none: early exit only)")
    parser.add_argument("--grouped", action="store_true",
                        help="also time the 'grouped' schedule of batched early exit (batches above 1)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (after a warm-up)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48, help="prompt + new tokens = 64 = the trained length")
    parser.add_argument("--results", default="results", help="results folder; the models are kept in RESULTS/bench")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1 or args.prompt_len < 1 or args.new_tokens < 1 \
            or any(k < 1 for k in args.drafts):
        parser.error("--repeats, --threads, --prompt-len, --new-tokens and --drafts must be at least 1")
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rows, spec_rows, group_rows = [], [], []
    for name in args.models:
        found, spec, grouped = bench_model(name, args, device)
        rows += found
        spec_rows += spec
        group_rows += grouped
    print(f"\ndevice {device}, {args.threads} thread(s), torch {torch.__version__}, prompt {args.prompt_len} + "
          f"{args.new_tokens} new tokens, median of {args.repeats} runs")
    print_table(rows)
    if spec_rows:
        print("\nlossless self-speculative decoding (output identical to full-depth greedy decoding):")
        print_speculative(spec_rows)
    if group_rows:
        print("\nbatched early exit, each schedule's speedup as a share of 1/Compute% (ease.decode.generate's "
              "schedule; 'same': output identical to lockstep):")
        print_grouped(group_rows)
    decided = [r for r in rows if r["model"] == "large" and r["threshold"] is not None]
    summary = None
    if decided:
        for batch in args.batches:
            near = min((r for r in decided if r["batch"] == batch), key=lambda r: abs(r["compute_frac"] - 0.5))
            print(f"large model, batch {batch}: threshold {near['threshold']:g} is nearest 50% layer compute "
                  f"({100 * near['compute_frac']:.1f}%): speedup {near['speedup']:.2f}x of theoretical "
                  f"{near['theoretical_speedup']:.2f}x = {100 * near['ratio']:.0f}% (target >= 70%)")
        summary = [min((r for r in decided if r["batch"] == b), key=lambda r: abs(r["compute_frac"] - 0.5))
                   for b in args.batches]
    if args.json:
        env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
               "device": str(device), "threads": args.threads}
        write_json(args.json, {"env": env, "settings": vars(args), "rows": rows, "nearest_50": summary,
                               "speculative": spec_rows, "grouped": group_rows})
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
