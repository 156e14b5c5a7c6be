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
# # One training run
#
# Trains one (setting, α, seed) configuration of the early-exit language model, then reports
# how confidence-based early exit at layer `exit_layer` trades perplexity for compute. Run as
# it is, or with other parameters through papermill (`python -m ease.pipeline` does that for
# every run of a grid); an executed copy is the lab notebook of that run.
#
# The run's record (`<results_dir>/runs/<run_id>.json`) and checkpoint (`.pt`) are written by
# `ease.run`; a finished run with the same configuration is loaded instead of retrained.

# %%
import warnings

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

# tqdm.auto asks for ipywidgets, which is not needed: its text progress bar works as well
warnings.filterwarnings("ignore", message="IProgress not found")

import ease
from ease.pipeline import notebook_config
from ease.report import plot_sweep

sns.set_theme(style="whitegrid")

# %% tags=["parameters"]
# Loss: setting "A" (α on the exit layer, 1-α on the last), "B" (A plus weight 1.0 on each
# middle layer) or "custom" (then `weights`, e.g. {1: 0.5, 3: 0.5}, layers counted from 1).
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
# early exit: exit at `exit_layer` when its max softmax probability >= threshold
exit_layer = 1
threshold = 0.95
sweep_weights = "best"  # "last": sweep the last epoch's weights, as the original code did
sweep_thresholds = None  # None: a 0.025 grid over [0, 1] holding the document's thresholds
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
print("run id:", config.run_id)
print("results:", results_dir.resolve())
print("loss weights per layer:", config.weights)

# %% [markdown]
# ## Training

# %%
record = ease.run(config, results_dir, device=device)
timing = record["timing"]
print(f"trained {record['metrics']['epochs_run']} epochs (best: {record['metrics']['best_epoch']}) "
      f"in {timing['train_s']:.1f} s, {timing['tokens_per_s']:,.0f} tokens/s, on {record['env']['device']}")

# %% [markdown]
# ## Routing at the default threshold
#
# `ppl` is the perplexity of routed predictions; `shallow_frac` the share of tokens that exit at
# the exit layer; `compute_frac` the share of the full network's layers used on average.
# `ppl_shallow` and `ppl_deep` score every token at the exit layer and at the last layer.

# %%
metrics = pd.Series(record["metrics"], dtype=object, name=f"threshold {config.threshold:g}")
metrics.to_frame()

# %% [markdown]
# ## Threshold sweep
#
# The same trained model routed at every threshold of the sweep (no retraining). The table
# shows the document's thresholds; the plots show the whole sweep.

# %%
sweep = pd.DataFrame(record["sweep"])
sweep["shallow_pct"] = 100 * sweep["shallow_frac"]
sweep["compute_pct"] = 100 * sweep["compute_frac"]
sweep[sweep["threshold"].isin(ease.DOC_THRESHOLDS)][["threshold", "ppl", "shallow_pct", "compute_pct"]] \
    .round(3).reset_index(drop=True)

# %%
axes = plot_sweep(sweep, config.threshold, config.exit_layer)
axes[0].figure.suptitle(config.run_id)
axes[0].figure.tight_layout()

# %% [markdown]
# ## Learning curve
#
# Training loss (the weighted sum of per-layer losses) and validation perplexities after each
# epoch; training stops once the last layer's validation perplexity stops improving, and the
# best epoch's weights are kept.

# %%
history = pd.DataFrame(record["history"])
fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
ax_loss.plot(history["epoch"], history["train_loss"], marker="o")
ax_loss.set(xlabel="epoch", ylabel="training loss (weighted)", title="Training loss")
for column, label in [("val_ppl_shallow", f"layer {config.exit_layer} only"),
                      ("val_ppl_deep", f"layer {config.n_layers} only"),
                      ("val_ppl", f"routed at {config.threshold:g}")]:
    ax_ppl.plot(history["epoch"], history[column], marker="o", label=label)
ax_ppl.axvline(record["metrics"]["best_epoch"], color="gray", linestyle="--", label="best epoch")
ax_ppl.set(xlabel="epoch", ylabel="validation perplexity", title="Validation perplexity")
ax_ppl.legend()
for ax in (ax_loss, ax_ppl):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
fig.tight_layout()
history.round(3)
