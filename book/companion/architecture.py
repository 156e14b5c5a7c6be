"""Chapter "Architecture": settings A and B, their loss weights as the records hold them, and the figure."""
from __future__ import annotations

from ease.losses import SETTINGS

from companion import core


def weights(grid: core.Grid, published: dict) -> dict[str, str]:
    """The loss weights at the document's α, by glue key: B's middle-layer weight(s), each setting's
    sum of weights and the last layer's share of it."""
    alpha = float(published["exp6_settings"]["alpha"])
    n_layers = grid.base["n_layers"]
    w = {s: grid.cell(s, alpha)[0]["config"]["weights"] for s in ("A", "B")}
    last = str(n_layers)
    return {
        "b_middle_weight": ", ".join(f"{w['B'][str(layer)]:g}" for layer in range(2, n_layers)),
        "weight_sum_a": f"{sum(w['A'].values()):g}",
        "weight_sum_b": f"{sum(w['B'].values()):g}",
        "last_share_a": f"{w['A'][last] / sum(w['A'].values()):.0%}",
        "last_share_b": f"{w['B'][last] / sum(w['B'].values()):.0%}",
    }


def fig_architecture(lang: str):
    """Settings A and B side by side: layers, the shared head, and each loss's weight."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    words = core.labels(lang)["architecture"]
    middle_b = f"{SETTINGS['B']:.1f}"
    loss_weights = {"A": {1: "α", 2: "", 3: "1 − α"}, "B": {1: "α", 2: middle_b, 3: "1 − α"}}
    totals = {"A": r"$\mathcal{L} = \alpha\,\mathcal{L}_1 + (1-\alpha)\,\mathcal{L}_3$",
              "B": r"$\mathcal{L} = \alpha\,\mathcal{L}_1 + " + middle_b + r"\,\mathcal{L}_2 + (1-\alpha)\,\mathcal{L}_3$"}
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
        for ax, setting in zip(axes, ("A", "B")):
            ax.set_xlim(0, 10)
            ax.set_ylim(0, 10)
            ax.axis("off")
            ax.set_title(words["title"][setting], fontsize=11)
            ys = {0: 1.0, 1: 3.0, 2: 5.0, 3: 7.0}
            box = dict(boxstyle="round,pad=0.3", linewidth=1.2)
            ax.add_patch(FancyBboxPatch((1.0, ys[0] - 0.4), 2.6, 0.8, facecolor="#f0f0f0", edgecolor="#666", **box))
            ax.text(2.3, ys[0], words["input"], ha="center", va="center")
            for layer in (1, 2, 3):
                y = ys[layer]
                ax.add_patch(FancyBboxPatch((1.0, y - 0.4), 2.6, 0.8, facecolor="#deebf7", edgecolor="#08519c",
                                            **box))
                ax.text(2.3, y, f"Layer {layer}", ha="center", va="center", fontweight="bold")
                ax.add_patch(FancyArrowPatch((2.3, ys[layer - 1] + 0.45), (2.3, y - 0.45), arrowstyle="-|>",
                                             mutation_scale=12, color="#444"))
                w = loss_weights[setting][layer]
                if w:
                    ax.add_patch(FancyArrowPatch((3.7, y), (5.2, y), arrowstyle="-|>", mutation_scale=12,
                                                 color="#d94801"))
                    ax.text(5.3, y, f"{words['head']}\n" + words["loss"].format(layer=layer, weight=w),
                            va="center", fontsize=9)
                else:
                    ax.text(4.0, y, words["no_loss"], va="center", fontsize=9, color="#888")
            # no italics: Japanese fonts have none, and the note reads the same upright in both languages
            ax.text(5.3, ys[1] - 0.95, words["exit"], fontsize=8, color="#555")
            ax.text(5.0, 8.8, totals[setting], ha="center", fontsize=12)
        fig.tight_layout()
        return core.finish(fig)
