# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Threshold analysis of a finished run
#
# Loads a trained model from its checkpoint (no retraining), scores the validation text once,
# and routes it at any thresholds you choose. Name the run by its configuration below: the
# same parameters as `train_run.py` give the same run id. The table is written to
# `<results_dir>/thresholds/<run_id>.json`.
#
# Committed records come without checkpoints; the error below then says how to rebuild one.

# %%
import warnings

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

# tqdm.auto asks for ipywidgets, which is not needed: its text progress bar works as well
warnings.filterwarnings("ignore", message="IProgress not found")

import ease
from ease.exits import sweep as route_all
from ease.pipeline import analysis_thresholds, notebook_config, thresholds_path
from ease.report import plot_sweep
from ease.train import collect_run_stats
from ease.results import find_record, write_json

sns.set_theme(style="whitegrid")

# %% tags=["parameters"]
# The run to analyse, as given to train_run.py. Loss: setting "A", "B" or "custom" (with weights).
setting = "A"
alpha = 0.7
weights = None
seed = 0
# model
n_layers = 3
dim = 64
n_heads = 4
norm = "post"
# data: "wikitext-2", "placeholder" (the original code's stand-in text) or a folder with train.txt and valid.txt
corpus = "wikitext-2"
train_chars = 200_000
val_chars = 20_000
vocab_from = "train+valid"
seq_len = 64
batch_size = 32
shuffle = False
# optimisation
lr = 1e-3
grad_clip = 1.0
max_epochs = 50
patience = 0
lr_schedule = "constant"  # or "cosine": decay to 0 over max_epochs
# early exit
exit_layer = 1
threshold = 0.95  # marked on the plots
sweep_weights = "best"  # "last": sweep the last epoch's weights, as the original code did
sweep_thresholds = None  # part of the run's identity; None: the default sweep
# analysis
thresholds = None  # None: 0, 0.01, ..., 1 plus the document's thresholds
# where and how
results_dir = None  # None: "results", or "results/smoke" in smoke mode
device = "cpu"  # "cpu", "cuda" or "auto"
smoke = None  # True: tiny sizes (ease.pipeline.SMOKE); None: from the environment (EASE_SMOKE set to 1)

# %%
config, results_dir, smoke = notebook_config(
    dict(setting=setting, alpha=alpha, weights=weights, seed=seed, n_layers=n_layers, dim=dim, n_heads=n_heads,
         norm=norm, corpus=corpus, train_chars=train_chars, val_chars=val_chars, vocab_from=vocab_from,
         seq_len=seq_len, batch_size=batch_size, shuffle=shuffle, lr=lr, grad_clip=grad_clip,
         max_epochs=max_epochs, patience=patience, lr_schedule=lr_schedule, exit_layer=exit_layer,
         threshold=threshold, sweep_thresholds=sweep_thresholds, sweep_weights=sweep_weights),
    smoke=smoke, results_dir=results_dir)
thresholds = analysis_thresholds(thresholds)
if smoke:  # standalone smoke check: make sure the tiny run exists (a finished one is not retrained)
    ease.run(config, results_dir, device=device)
record = find_record(config, results_dir)
if record is None:
    raise FileNotFoundError(f"no finished run {config.run_id} in {results_dir.resolve()}: train it first with "
                            "notebooks/train_run.py (same parameters) or python -m ease.pipeline")
print("run id:", config.run_id)

# %% [markdown]
# ## Scoring the validation text
#
# One pass of the checkpoint over the validation text collects, per token, the exit layer's
# confidence (its maximum softmax probability) and the cross-entropy at the exit layer and at
# the last layer. Every threshold is then routed from these numbers.

# %%
stats = collect_run_stats(config, results_dir, device=device)
table = pd.DataFrame(route_all(stats, thresholds))
table["compute_pct"] = 100 * table["compute_frac"]
table["shallow_pct"] = 100 * table["shallow_frac"]
print(f"{len(stats):,} validation tokens, {len(thresholds)} thresholds")

# %% [markdown]
# The recorded sweep came from the same checkpoint and text, so at shared thresholds the two
# should agree up to float rounding (threads or device may differ).

# %%
recorded = pd.DataFrame(record["sweep"]).merge(table, on="threshold", suffixes=("_recorded", "_now"))
gap = (recorded["ppl_now"] / recorded["ppl_recorded"] - 1).abs().max()
print(f"{len(recorded)} shared thresholds, largest relative PPL difference {gap:.2e}")
if gap > 1e-3:
    print("WARNING: this checkpoint does not reproduce the recorded sweep; the record may be stale.")

# %% [markdown]
# ## Table at the document's thresholds

# %%
table[table["threshold"].isin(ease.DOC_THRESHOLDS)][["threshold", "ppl", "shallow_pct", "compute_pct"]] \
    .round(3).reset_index(drop=True)

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
plot_sweep(table, config.threshold, config.exit_layer, axes=axes[:2])
sns.histplot(stats.confidence.numpy(), bins=50, binrange=(0, 1), stat="percent", ax=axes[2])
for t in ease.DOC_THRESHOLDS:
    axes[2].axvline(t, color="C3", linestyle=":", linewidth=1)
axes[2].set(xlabel=f"layer {config.exit_layer} confidence (max softmax probability)", ylabel="tokens (%)",
            title="Exit-layer confidence (dotted: document's thresholds)")
fig.suptitle(config.run_id)
fig.tight_layout()

# %% [markdown]
# ## Saving the table

# %%
out = thresholds_path(results_dir, config.run_id)
write_json(out, {"run_id": config.run_id, "config": config.to_dict(), "eval_tokens": len(stats),
                 "sweep": table[["threshold", "ppl", "shallow_frac", "compute_frac"]].to_dict("records")})
print("wrote", out)
