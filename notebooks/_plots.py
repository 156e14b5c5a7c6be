"""The threshold-sweep plot both notebooks draw (train_run.py and threshold_analysis.py).

It lives beside the notebooks, not in ease (which holds no presentation code), and is installed
with them as ``ease.notebooks._plots``, so the notebooks import it wherever their kernel runs.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from ease.config import DOC_THRESHOLDS


def plot_sweep(table, threshold: float, exit_layer: int, axes=None):
    """Two panels of a threshold sweep (a DataFrame of ease.exits.sweep rows): PPL against compute
    with the document's thresholds marked, and the share of early exits against the threshold."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax_cost, ax_exit = axes
    ax_cost.plot(100 * table["compute_frac"], table["ppl"], marker=".", label="sweep")
    doc = table[table["threshold"].isin(DOC_THRESHOLDS)]
    ax_cost.scatter(100 * doc["compute_frac"], doc["ppl"], color="C3", zorder=3, label="document's thresholds")
    # thresholds that route alike share a point: one label for them all
    for (x, y), group in doc.groupby([100 * doc["compute_frac"], doc["ppl"]]):
        ax_cost.annotate("/".join(f"{t:g}" for t in group["threshold"]), (x, y), textcoords="offset points",
                         xytext=(-4, 6), ha="right", fontsize=8)
    ax_cost.set(xlabel="compute (% of full depth)", ylabel="validation perplexity (routed)",
                title="Perplexity against compute")
    ax_cost.legend()
    ax_exit.plot(table["threshold"], 100 * table["shallow_frac"], marker=".")
    ax_exit.axvline(threshold, color="gray", linestyle="--", label=f"default threshold {threshold:g}")
    ax_exit.set(xlabel="confidence threshold", ylabel=f"tokens exiting at layer {exit_layer} (%)",
                title="Early exits against threshold")
    ax_exit.legend()
    return axes
