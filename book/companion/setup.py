"""Chapter "Setup": the configuration of the book's runs beside what the document states, how they
trained (epochs, time, learning curves) and on what software and hardware."""
from __future__ import annotations

import numpy as np
import pandas as pd

from companion import core


def values(grid: core.Grid) -> dict[str, str]:
    """The configuration numbers the pages quote, by glue key."""
    b = grid.base
    out = {f"cfg_{k}": str(b[k]) for k in ("n_layers", "dim", "n_heads", "seq_len", "batch_size", "max_epochs",
                                           "patience", "exit_layer", "norm")}
    out.update({
        "cfg_train_chars": f"{b['train_chars']:,}",
        "cfg_val_chars": f"{b['val_chars']:,}",
        "cfg_threshold": f"{b['threshold']:g}",
        "cfg_lr": f"{b['lr']:g}",
        "cfg_compute_exit": f"{b['exit_layer']}/{b['n_layers']}",
        "eval_tokens": f"{grid.records()[0]['metrics']['eval_tokens']:,}",
    })
    return out


def grid_case(grid: core.Grid) -> str:
    """'reference' when the records use the exp5-6 grid's configuration, else 'deviates'."""
    return "deviates" if grid.deviations else "reference"


def deviations(grid: core.Grid, lang: str) -> str:
    """The fields where the records differ from the reference configuration: '`field` = ours (reference x)'."""
    ref = core.labels(lang)["setup"]["reference"]
    return ", ".join(f"`{k}` = {core.short(ours)} ({ref} {core.short(theirs)})"
                     for k, (ours, theirs) in grid.deviations.items())


def setup_table(grid: core.Grid, published: dict, lang: str) -> str:
    """The configuration the records were trained with, beside what the document states."""
    b, doc = grid.base, published["setup"]
    h = core.labels(lang)["setup"]
    item, none = h["item"], h["not_stated"]
    sweep = b["sweep_thresholds"]
    rows = [
        (item["layers"], str(b["n_layers"]), str(doc["n_layers"])),
        (item["width"], f"{b['dim']} / {b['n_heads']}", none),
        (item["norm"], f"{b['norm']}-norm (RMSNorm)", none),
        (item["corpus"], str(b["corpus"]), str(doc["corpus"])),
        (item["train_chars"], f"{b['train_chars']:,}", f"{doc['train_chars']:,}"),
        (item["val_chars"], f"{b['val_chars']:,}", none),
        (item["vocab_from"], str(b["vocab_from"]), none),
        (item["window"], f"{b['seq_len']} / {b['batch_size']}", none),
        (item["optimiser"], f"AdamW, lr {b['lr']:g}, grad clip {b['grad_clip']:g}", none),
        (item["epochs"], f"{b['max_epochs']} / {b['patience']}", none),
        (item["loss"], h["loss_value"], str(doc["loss"])),
        (item["exit_layer"], f"L{b['exit_layer']}", none),
        (item["threshold"], f"{b['threshold']:g}", none),
        (item["sweep"], h["sweep_value"].format(n=len(sweep), lo=min(sweep), hi=max(sweep)), none),
    ]
    return core.markdown_table(pd.DataFrame(rows, columns=[h["column"]["item"], h["column"]["runs"],
                                                           h["column"]["doc"]]))


def training_table(grid: core.Grid, lang: str) -> str:
    """Per cell: each seed's epochs and best epoch; the cell's mean training time and throughput."""
    h = core.labels(lang)["training"]
    rows = []
    for s, alpha in grid.cells:
        recs = grid.cell(s, alpha)
        rows.append({
            h["run"]: core.cell_name((s, alpha), lang),
            h["seeds"]: ", ".join(str(r["config"]["seed"]) for r in recs),
            h["epochs"]: ", ".join(str(r["metrics"]["epochs_run"]) for r in recs),
            h["best_epoch"]: ", ".join(str(r["metrics"]["best_epoch"]) for r in recs),
            h["time"]: f"{np.mean([r['timing']['train_s'] for r in recs]):.1f}",
            h["speed"]: f"{np.mean([r['timing']['tokens_per_s'] for r in recs]):,.0f}",
        })
    return core.markdown_table(pd.DataFrame(rows))


def environment_table(grid: core.Grid, lang: str) -> str:
    """Each distinct software and hardware environment of the runs, with how many runs used it."""
    h = core.labels(lang)["environment"]

    def env(r: dict) -> tuple[str, str, str, str]:
        return r["env"]["torch"], r["env"]["python"], r["env"]["device"], str(r["env"]["threads"])

    counts: dict[tuple, int] = {}
    for r in grid.records():
        counts[env(r)] = counts.get(env(r), 0) + 1
    rows = [{"PyTorch": t, "Python": p, h["device"]: d, h["threads"]: th, h["runs"]: str(counts[(t, p, d, th)])}
            for t, p, d, th in sorted(counts)]
    return core.markdown_table(pd.DataFrame(rows))


def fig_learning_curves(grid: core.Grid, lang: str):
    """Validation PPL of L1 and L3 and the training loss per epoch: a line per run."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["learning"]
    panels = ("val_ppl_shallow", "val_ppl_deep", "train_loss")
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
        for i, cell in enumerate(grid.cells):
            for k, rec in enumerate(grid.cell(*cell)):
                hist = rec["history"]
                for ax, key in zip(axes, panels):
                    ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], color=core.color(cell, i),
                            marker="o", markersize=3, linewidth=1.2, alpha=0.85,
                            label=core.cell_name(cell, lang) if k == 0 else None)
        for ax, key in zip(axes, panels):
            ax.set_title(words[key], fontsize=10)
            ax.set_xlabel(words["epoch"])
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        return core.finish(fig)
