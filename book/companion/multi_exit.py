"""Chapter "Several exits and training recipes": does any recipe put early exit on or past the dense front?

The `multi-exit` grid trains a 6-layer model with exits after layers 2 and 4, plainly and with each training
recipe (LayerSkip's rising loss weights with layer dropout, self-distillation from the last layer, EE-LLM's
exit-weight warm-up, state propagation in the training loop), and dense models of 2, 4 and 6 layers, all at
one budget and schedule. Each early-exit run's analysis holds its front on the whole test split
(ease.analysis.multi_exit_front: one shared threshold at every exit) and real exit at a few thresholds, both
with per-block sums, so every difference gets the text-aware interval of the held-out chapter. The family
of equal-compute comparisons (every recipe against every dense model, at that model's cost, counted in
layers and in multiply-adds) is fixed here before any number is read and controlled with Holm's procedure.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from ease.decode import token_macs
from ease.model import ModelConfig
from ease.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, block_ppl, holm, mean_ci

from companion import core
from companion.held_out import FAMILY_ALPHA, Comparison, _interp, compare, fmt_p, fmt_text, verdict

GRID = "multi-exit"
RECIPES = ("plain", "layerskip", "distill", "warmup", "propagation")
ACCOUNTINGS = ("layers", "flops")


def recipe_key(config: dict) -> str:
    """The recipe a run of the grid was trained with ("dense<n>" for a dense model)."""
    if not config["exits"]:
        return f"dense{config['n_layers']}"
    for key, on in (("layerskip", config["layer_dropout"] > 0), ("distill", config["distill"] > 0),
                    ("warmup", config["exit_warmup"] > 0), ("propagation", config["train_propagation"])):
        if on:
            return key
    return "plain"


@dataclass
class Front:
    """One recipe (or dense model) over its seeds: records, and for an early-exit model the `multi_exit` part
    of each seed's analysis, as arrays."""

    key: str
    records: list[dict]
    vocab_size: int
    parts: list[dict] | None = None

    @property
    def dense(self) -> bool:
        return self.parts is None

    @property
    def config(self) -> dict:
        return self.records[0]["config"]

    @property
    def seeds(self) -> list[int]:
        return [r["config"]["seed"] for r in self.records]

    @cached_property
    def tokens(self) -> np.ndarray:
        if self.dense:
            return np.asarray(self.records[0]["test"]["block_sums"]["tokens"], float)
        return np.asarray(self.parts[0]["block_tokens"], float)

    @cached_property
    def layers(self) -> list[int]:
        """The layers a token can leave at: each exit, then the last."""
        return [*self.parts[0]["exits"], self.config["n_layers"]]

    @cached_property
    def thresholds(self) -> np.ndarray:
        return np.array([row["threshold"] for row in self.parts[0]["sweep"]])

    def sweep(self, name: str) -> np.ndarray:
        """Front sums by seed, threshold and block: "block_ce" [s, t, b] or "block_layers" [s, t, layers, b]."""
        return self._sums("sweep", name)

    def real(self, name: str) -> np.ndarray:
        """Real exit's sums at its thresholds, shaped as `sweep`'s."""
        return self._sums("real", name)

    def _sums(self, part: str, name: str) -> np.ndarray:
        if name == "block_ce":
            return np.array([[row["block_ce"] for row in p[part]] for p in self.parts], float)
        return np.array([[[row["block_layers"][str(layer)] for layer in self.layers] for row in p[part]]
                         for p in self.parts], float)

    @cached_property
    def real_thresholds(self) -> list[float]:
        return [row["threshold"] for row in self.parts[0]["real"]]

    def column(self, threshold: float) -> int:
        return int(np.flatnonzero(np.isclose(self.thresholds, threshold))[0])

    def layer_costs(self, accounting: str) -> np.ndarray:
        """What a token leaving at each layer costs, as a share of plain full-depth inference."""
        if accounting == "layers":
            return np.array(self.layers, float) / self.config["n_layers"]
        macs = self.parts[0]["macs"]
        return np.array([macs[str(layer)] for layer in self.layers]) / macs["full"]


def fronts(results=None) -> dict[str, Front]:
    """Every recipe and dense model of the grid, recipes first (in RECIPES order), then dense by depth."""
    records = core.grid_records(GRID, results)
    analyses = core.grid_analyses(records, results)
    vocab = {a["vocab_size"] for a in analyses.values()}
    if len(vocab) != 1:
        raise ValueError(f"the runs of grid {GRID!r} have vocabularies of different sizes {sorted(vocab)}")
    by_key: dict[str, list[dict]] = {}
    for r in records:
        by_key.setdefault(recipe_key(r["config"]), []).append(r)
    out = {}
    for key in [k for k in RECIPES if k in by_key] + sorted((k for k in by_key if k.startswith("dense")),
                                                             key=lambda k: int(k[5:])):
        recs = sorted(by_key[key], key=lambda r: r["config"]["seed"])
        parts = None if key.startswith("dense") else [analyses[r["run_id"]]["multi_exit"] for r in recs]
        out[key] = Front(key, recs, *vocab, parts)
    check_text(out)
    return out


def check_text(fs: dict[str, Front]) -> None:
    """Every front must be read on the same test blocks, paired by seed, or no difference means anything."""
    first = next(iter(fs.values()))
    for f in fs.values():
        core.paired(first.records, f.records)
        if not np.array_equal(f.tokens, first.tokens):
            raise ValueError(f"{f.key} was read on other test blocks than {first.key}")


# --- per-seed statistics on (resampled) test text: f(weights) -> [seeds] or [seeds, replicates] -----------
def ppl(front: Front, threshold: float | None = None) -> Callable:
    """A dense model's test PPL, or an early-exit model's at one shared threshold (None: every token at the
    last layer, the front's highest threshold)."""
    if front.dense:
        ce = np.array([r["test"]["block_sums"]["ce_last"] for r in front.records], float)
    else:
        ce = front.sweep("block_ce")[:, front.column(front.thresholds.max() if threshold is None else threshold)]
    return lambda w: block_ppl(ce, front.tokens, w)


def dense_cost(depth: int, reference: Front, accounting: str) -> float:
    """A dense model of `depth` layers as a share of the early-exit model's plain full-depth inference."""
    c = reference.config
    if accounting == "layers":
        return depth / c["n_layers"]
    cfg = ModelConfig(vocab_size=reference.vocab_size, n_layers=c["n_layers"], dim=c["dim"], n_heads=c["n_heads"],
                      max_seq_len=c["seq_len"], norm=c["norm"])
    macs = token_macs(cfg, reference.layers[0])
    return (depth * macs["block"] + macs["head"]) / macs["full"]


def _costs_and_ppls(front: Front, ce: np.ndarray, layers: np.ndarray, accounting: str, w):
    """Cost and PPL of each threshold, per seed ([s, t]) or per seed and replicate ([s, t, r])."""
    unit = front.layer_costs(accounting)
    if w is None:
        n = front.tokens.sum()
        return np.einsum("stlb,l->st", layers, unit) / n, np.exp(ce.sum(-1) / n)
    n = w @ front.tokens
    return np.einsum("stlb,l,rb->str", layers, unit, w) / n, np.exp((ce @ w.T) / n)


def ppl_at_cost(front: Front, cost: float, accounting: str) -> Callable:
    """The early-exit model's PPL at a given cost, interpolated along its front (NaN out of reach)."""
    ce, layers = front.sweep("block_ce"), front.sweep("block_layers")

    def stat(w):
        costs, ppls = _costs_and_ppls(front, ce, layers, accounting, w)
        if w is None:
            return np.array([_interp(cost, c, p) for c, p in zip(costs, ppls)])
        return np.array([[_interp(cost, costs[s, :, r], ppls[s, :, r]) for r in range(w.shape[0])]
                         for s in range(costs.shape[0])])
    return stat


def dense_fronts(fs: dict[str, Front]) -> list[Front]:
    return [f for f in fs.values() if f.dense]


def recipe_fronts(fs: dict[str, Front]) -> list[Front]:
    return [f for f in fs.values() if not f.dense]


# --- the comparisons ----------------------------------------------------------------------------------
def against_dense(fs: dict[str, Front]) -> list[tuple[str, int, str, Comparison]]:
    """Every recipe against every dense model at that model's cost, in both accountings: recipe minus dense,
    claimed lower; Holm over the reachable ones. Rows: (recipe, dense depth, accounting, comparison)."""
    rows = []
    for f in recipe_fronts(fs):
        for d in dense_fronts(fs):
            depth = d.config["n_layers"]
            for accounting in ACCOUNTINGS:
                rows.append((f.key, depth, accounting,
                             compare("equal", ppl_at_cost(f, dense_cost(depth, f, accounting), accounting), ppl(d),
                                     len(f.records), len(f.tokens), -1)))
    reachable = [c for *_, c in rows if c.reachable]
    for comp, p in zip(reachable, holm([c.text.p for c in reachable])):
        comp.adjusted_p = p
    return rows


def front_case(rows) -> str:
    """"past": some recipe is lower than a dense model at its cost (after Holm); "behind": none is, and some
    dense model is lower; "tied": none is told apart."""
    verdicts = [verdict(c) for *_, c in rows]
    if REPRODUCED in verdicts:
        return "past"
    return "behind" if NOT_REPRODUCED in verdicts else "tied"


def recipe_counts(rows) -> dict[str, dict[str, int]]:
    """Per recipe: how many of its equal-compute comparisons it wins, loses, ties, and cannot reach."""
    out = {}
    for key, _, _, comp in rows:
        c = out.setdefault(key, {"lower": 0, "higher": 0, "tied": 0, "unreachable": 0})
        c["unreachable" if not comp.reachable else {REPRODUCED: "lower", NOT_REPRODUCED: "higher",
                                                    INCONCLUSIVE: "tied"}[verdict(comp)]] += 1
    return out


def real_gaps(fs: dict[str, Front]) -> list[tuple[str, float, Comparison]]:
    """Per recipe and real-exit threshold: real-exit PPL minus the simulated PPL at the same threshold (the
    cost of really skipping the layers that the front hides); descriptive intervals."""
    rows = []
    for f in recipe_fronts(fs):
        real_ce = f.real("block_ce")
        for i, t in enumerate(f.real_thresholds):
            rows.append((f.key, t, compare("gap", lambda w, ce=real_ce[:, i]: block_ppl(ce, f.tokens, w), ppl(f, t),
                                           len(f.records), len(f.tokens), +1)))
    return rows


# --- what the page shows --------------------------------------------------------------------------------
def name(key: str, lang: str) -> str:
    words = core.labels(lang)["multi_exit"]
    return words["dense"].format(depth=key[5:]) if key.startswith("dense") else words["recipes"][key]


def models_table(fs: dict[str, Front], lang: str) -> str:
    """Per recipe and dense model: test PPL at each layer a token can leave at (every token there), and the
    full-depth cost of its exits' heads."""
    h = core.labels(lang)["multi_exit"]["table"]
    layers = recipe_fronts(fs)[0].layers
    rows = []
    for f in fs.values():
        row = {h["model"]: name(f.key, lang)}
        for layer in layers:
            if f.dense:
                value = core.fmt_stat(mean_ci(ppl(f)(None)), "ppl") if f.config["n_layers"] == layer else "—"
            else:
                ce = np.array([p["layer_block_ce"][str(layer)] for p in f.parts], float)
                value = core.fmt_stat(mean_ci(block_ppl(ce, f.tokens)), "ppl")
            row[h["layer_ppl"].format(layer=layer)] = value
        rows.append(row)
    return core.markdown_table(pd.DataFrame(rows))


def against_table(rows, lang: str) -> str:
    words = core.labels(lang)
    h, acc = words["multi_exit"]["table"], words["held_out"]["accounting"]
    out = []
    for key, depth, accounting, comp in rows:
        out.append({h["model"]: name(key, lang), h["against"]: name(f"dense{depth}", lang),
                    h["accounting"]: acc[accounting], h["difference"]: fmt_text(comp),
                    h["holm"]: "—" if comp.adjusted_p is None else fmt_p(comp.adjusted_p),
                    h["verdict"]: "—" if not comp.reachable else h["lower"][verdict(comp)]})
    return core.markdown_table(pd.DataFrame(out))


def real_table(fs: dict[str, Front], rows, lang: str) -> str:
    h = core.labels(lang)["multi_exit"]["table"]
    out = []
    for key, t, comp in rows:
        f = fs[key]
        j = f.real_thresholds.index(t)
        shares = {layer: np.mean([p["real"][j]["shares"][str(layer)] for p in f.parts]) for layer in f.layers}
        out.append({h["model"]: name(key, lang), "τ": f"{t:g}",
                    h["sim"]: core.fmt_stat(mean_ci(ppl(f, t)(None)), "ppl"),
                    h["real"]: core.fmt_stat(mean_ci(np.exp(f.real("block_ce")[:, j].sum(-1) / f.tokens.sum())), "ppl"),
                    h["gap"]: fmt_text(comp),
                    h["shares"]: " / ".join(f"{100 * shares[layer]:.0f}%" for layer in f.layers),
                    h["flops"]: core.fmt_stat(mean_ci(p["real"][j]["flop_compute_frac"] for p in f.parts),
                                              "compute_frac")})
    return core.markdown_table(pd.DataFrame(out))


def front_figure(fs: dict[str, Front], lang: str):
    """Test PPL against cost (layers left, multiply-adds right): each recipe's front (mean over seeds) with its
    real-exit points, and the dense models with their seed intervals."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["multi_exit"]["figure"]
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
        for ax, accounting in zip(axes, ACCOUNTINGS):
            for i, f in enumerate(recipe_fronts(fs)):
                costs, ppls = _costs_and_ppls(f, f.sweep("block_ce"), f.sweep("block_layers"), accounting, None)
                order = np.argsort(costs.mean(0))
                color = f"C{i}"
                ax.plot(100 * costs.mean(0)[order], ppls.mean(0)[order], marker=".", color=color,
                        label=name(f.key, lang))
                rc, rp = _costs_and_ppls(f, f.real("block_ce"), f.real("block_layers"), accounting, None)
                ax.plot(100 * rc.mean(0), rp.mean(0), "x", color=color, markersize=7)
            for d in dense_fronts(fs):
                stat = mean_ci(ppl(d)(None))
                cost = 100 * dense_cost(d.config["n_layers"], recipe_fronts(fs)[0], accounting)
                ax.errorbar([cost], [stat.mean], yerr=[[stat.half or 0]], fmt="s", color="black", capsize=3)
                ax.annotate(name(d.key, lang), (cost, stat.mean), textcoords="offset points", xytext=(5, 5), fontsize=8)
            ax.set(xlabel=words[f"x_{accounting}"])
        axes[0].set_ylabel(words["y"])
        axes[0].legend(fontsize=8, title=words["legend"], title_fontsize=8)
        fig.tight_layout()
        return core.finish(fig)


def texts(fs: dict[str, Front], rows, lang: str) -> dict[str, str]:
    """The page's glued numbers (me_* keys)."""
    f = recipe_fronts(fs)[0]
    c = f.config
    counts = recipe_counts(rows)
    sep = core.labels(lang)["landing"]["list_sep"]
    winners = [k for k, n in counts.items() if n["lower"]]
    return {"me_layers": str(c["n_layers"]), "me_dim": str(c["dim"]), "me_exits": sep.join(map(str, f.layers[:-1])),
            "me_seeds": str(len(f.records)), "me_epochs": str(c["max_epochs"]), "me_recipes": str(len(counts)),
            "me_comparisons": str(len(rows)), "me_reachable": str(sum(c.reachable for *_, c in rows)),
            "me_lower": str(sum(n["lower"] for n in counts.values())),
            "me_higher": str(sum(n["higher"] for n in counts.values())),
            "me_tied": str(sum(n["tied"] for n in counts.values())),
            "me_winners": sep.join(name(k, lang) for k in winners) or "—",
            "me_alpha": f"{FAMILY_ALPHA:g}", "me_thresholds": str(len(f.thresholds)),
            "me_real_thresholds": sep.join(f"{t:g}" for t in f.real_thresholds)}


def gap_case(rows, recipe: str = "propagation") -> str:
    """Whether training with propagation in the loop closes the real-exit gap better than plain training:
    "smaller" when its mean gap is below plain's at every real threshold, "not smaller" otherwise (descriptive)."""
    by = {(k, t): c.text.mean for k, t, c in rows}
    thresholds = sorted({t for _, t, _ in rows})
    if not all((recipe, t) in by and ("plain", t) in by for t in thresholds):
        return "absent"
    return "smaller" if all(by[(recipe, t)] < by[("plain", t)] for t in thresholds) else "not smaller"

