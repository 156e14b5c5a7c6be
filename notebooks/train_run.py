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
# The run's record and checkpoint are written by `ease.run` into the results folder (where
# `ease.results.record_path` and `checkpoint_path` say); a finished run with the same configuration
# is loaded instead of retrained.

# %%
import warnings

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display
from matplotlib.ticker import MaxNLocator

# tqdm.auto asks for ipywidgets, which is not needed: its text progress bar works as well
warnings.filterwarnings("ignore", message="IProgress not found")

import ease
from ease.notebooks._plots import plot_sweep
from ease.pipeline import notebook_config

sns.set_theme(style="whitegrid")

# %% tags=["parameters"]
# Every field of ease.RunConfig (see ease/config.py for what each means). None: RunConfig's default,
# which reproduces the experiment document's setup (for a "custom" loss, None alpha means no alpha).
# Loss: setting "A" (α on the exit layer, 1-α on the last), "B" (A plus weight 1.0 on each middle
# layer) or "custom" (then `weights`, e.g. {1: 0.5, 3: 0.5}, layers counted from 1).
setting = None
alpha = None
weights = None
seed = None
# model
n_layers = None
dim = None
n_heads = None
norm = None  # "post" or "pre"
# data: "wikitext-2", "placeholder" (the original code's stand-in text) or a folder with train.txt and valid.txt
corpus = None
train_chars = None
val_chars = None
vocab_from = None  # "train+valid" or "train"
test_chars = None  # held-out test characters evaluated after training: 0 none, -1 the whole test split
seq_len = None
batch_size = None
shuffle = None
# optimisation
lr = None
grad_clip = None
max_epochs = None
patience = None
select_on = None  # what picks the kept epoch: "deep" (last layer's PPL) or "objective" (the run's own loss)
lr_schedule = None  # "constant" or "cosine" (decay to 0 over max_epochs)
compile = None  # True: torch.compile the training step (faster; numbers differ from eager at float tolerance)
# training recipes for early exit (off by default): layer_dropout (LayerSkip's, the rate at the last block),
# distill (weight of KL(last layer || exit)), exit_warmup (epochs over which exit losses rise from 0),
# train_propagation (True: train with real exit's state propagation at `threshold`)
layer_dropout = None
distill = None
exit_warmup = None
train_propagation = None
exits = None  # several exits (a list of layers below the last): the analysis adds their sweep on test text
# early exit: exit at `exit_layer` when its max softmax probability >= threshold
exit_layer = None
threshold = None
sweep_thresholds = None
calibrate = None  # True: choose the operating threshold by Learn-then-Test after training (ease.calibrate)
calibration_risk = None  # "inconsistency" (routed argmax differs from the full model's) or "ppl_increase"
calibration_epsilon = None  # the risk allowed
calibration_delta = None  # the chance, over the calibration text, that the risk is above epsilon anyway
calibration_chars = None  # validation characters after the first val_chars to calibrate on
sweep_weights = None  # "best" (the kept epoch's weights) or "last" (the last epoch's, as the original code)
# where and how
results_dir = None  # None: "results", or "results/smoke" in smoke mode
device = "cpu"  # "cpu", "cuda" or "auto"
smoke = None  # True: tiny sizes (ease.grid.SMOKE); None: from the environment (EASE_SMOKE set to 1)

# %%
# the run these parameters describe (notebook_config reads RunConfig's fields from the variables above)
config, results_dir, smoke = notebook_config(globals(), smoke=smoke, results_dir=results_dir)
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
# ## Calibrated threshold
#
# With `calibrate`, the operating threshold is not given but chosen after training by Learn-then-Test on
# validation text the run never saw (`ease.calibrate`): thresholds are tested from the safest down, and the
# last one whose risk is certified to be at most epsilon (with probability 1 - delta) is kept.

# %%
if "calibration" in record:
    cal = record["calibration"]
    print(f"risk {cal['risk']} <= {cal['epsilon']:g} with probability >= {1 - cal['delta']:g}, "
          f"{cal['n_blocks']} blocks of calibration text: threshold "
          f"{'none certified (never exit)' if cal['threshold'] is None else format(cal['threshold'], 'g')}")
    display(pd.DataFrame({"threshold": cal["thresholds"], "empirical risk": cal["empirical_risk"],
                          "p-value": cal["p_values"]}).round(4))
else:
    print(f"fixed threshold {config.threshold:g} (calibrate = False)")

# %% [markdown]
# ## Held-out test text
#
# With `test_chars` set, the kept model is also evaluated once on the test split, text that chose
# nothing (neither the epoch nor a threshold). The validation numbers above next to the test ones:

# %%
if "test" in record:
    test = record["test"]
    print(f"{test['tokens']:,} test tokens ({test['unknown_chars']} characters outside the vocabulary)")
    display(pd.DataFrame({"validation": record["metrics"], "test": test["metrics"]})
            .loc[["ppl", "shallow_frac", "compute_frac", "ppl_shallow", "ppl_deep"]].round(4))
else:
    print("no test text evaluated (test_chars = 0, as the document)")

# %% [markdown]
# ## Learning curve
#
# Training loss (the weighted sum of per-layer losses) and validation perplexities after each
# epoch. The kept epoch is the best by the last layer's validation perplexity (`select_on`
# "deep", the document's rule) or by the run's own loss on the validation text ("objective");
# training stops once that has not improved for more than `patience` epochs.

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
