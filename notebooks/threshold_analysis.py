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
# same parameters as `train_run.py` give the same run id. The table is written to the results folder
# (`ease.results.thresholds_path`).
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
from ease.notebooks._plots import plot_sweep
from ease.pipeline import analysis_thresholds, notebook_config
from ease.results import find_record, thresholds_path, write_json
from ease.train import collect_run_stats

sns.set_theme(style="whitegrid")

# %% tags=["parameters"]
# The run to analyse, as given to train_run.py: every field of ease.RunConfig (see ease/config.py for
# what each means). None: RunConfig's default, which reproduces the experiment document's setup (for a
# "custom" loss, None alpha means no alpha).
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
# analysis
thresholds = None  # None: 0, 0.01, ..., 1 plus the document's thresholds
# where and how
results_dir = None  # None: "results", or "results/smoke" in smoke mode
device = "cpu"  # "cpu", "cuda" or "auto"
smoke = None  # True: tiny sizes (ease.grid.SMOKE); None: from the environment (EASE_SMOKE set to 1)

# %%
# the run these parameters describe (notebook_config reads RunConfig's fields from the variables above)
config, results_dir, smoke = notebook_config(globals(), smoke=smoke, results_dir=results_dir)
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
