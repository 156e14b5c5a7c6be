"""Chapter "Held-out": the converged, budget-matched regime read on the held-out test split.

Every model of the `converged` grid trains the same token budget with the same schedule, is kept at
the epoch whose validation loss of its own objective is lowest, and is evaluated once on the whole
test split. Differences between models come with two intervals: the seed t-interval of the paired
per-seed differences (judge.compare's) and a text-aware one that also resamples contiguous blocks of
the test text (ease.stats.text_aware_paired). The primary comparisons are fixed in PRIMARY before any
number is read, and their family-wise error is controlled with Holm's procedure.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ease.decode import token_macs
from ease.exits import layer_compute_frac
from ease.grid import expand_grid, load_grid
from ease.model import ModelConfig
from ease.results import choose_budget, kept_val_objective
from ease.stats import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Stat, TextAwareDiff, block_ppl, holm, mean_ci,
                        paired_ci, text_aware_paired)

from companion import core

GRID = "converged"
CHECK_GRIDS = ("converged-2x", "converged-4x")  # its budget doubled, then doubled again
DOCUMENT_GRIDS = ("exp5-6", "dense")  # the document's regime: its stopping rule, its validation text; test read once
OPERATING = 0.95  # the document's operating threshold
EARLY_EXIT = (("A", 0.3), ("A", 0.5), ("A", 0.7), ("B", 0.7))
DENSE = (1, 2, 3)
FAMILY_ALPHA = 0.05  # family-wise error rate of the primary comparisons (and of each secondary family)
REPLICATES = 4000
# Exit rules: the measures a deployed model can use (the cosine needs the last layer's state), compared at
# one Shallow% against the document's max-probability rule; the oracle is shown as a bound, not compared.
USABLE_MEASURES = ("max_prob", "entropy", "margin")
RULE_SHALLOW = 0.25
REAL_EXIT_SHOWN = (0.5, 0.8, 0.95)  # thresholds of the real-exit table


@dataclass
class Model:
    """One model of the grid over its seeds: its records and the test text's block sums as arrays."""

    key: str  # "A0.7", "dense2"
    records: list[dict]
    vocab_size: int  # from the runs' checkpoint analyses (records do not hold it)
    held_out: list[dict] | None = None  # per seed, the `test` part of its analysis (early-exit models)

    @property
    def dense(self) -> bool:
        return self.key.startswith("dense")

    @cached_property
    def thresholds(self) -> np.ndarray:
        return np.array([row["threshold"] for row in self.records[0]["test"]["sweep"]])

    @cached_property
    def tokens(self) -> np.ndarray:
        return np.asarray(self.records[0]["test"]["block_sums"]["tokens"], float)

    def sums(self, name: str) -> np.ndarray:
        """Block sums [seeds, blocks] (or [seeds, thresholds, blocks] for the sweep's)."""
        return np.array([r["test"]["block_sums"][name] for r in self.records], float)

    def column(self, threshold: float) -> int:
        return int(np.flatnonzero(np.isclose(self.thresholds, threshold))[0])

    @property
    def seeds(self) -> list[int]:
        return [r["config"]["seed"] for r in self.records]


def models(grid: str = GRID, results=None, early_exit=EARLY_EXIT, dense=DENSE,
           vocab_size: int | None = None, held_out: bool = True) -> dict[str, Model]:
    """The grid's models; with `vocab_size` given (a grid without analyses) no analysis is read; `held_out`
    False: the analyses give the vocabulary size only (a grid analysed on validation text serves)."""
    records = core.grid_records(grid, results)
    analyses = core.grid_analyses(records, results, held_out) if vocab_size is None else {}
    vocab = {a["vocab_size"] for a in analyses.values()} or {vocab_size}
    if len(vocab) != 1:
        raise ValueError(f"the runs of grid {grid!r} have vocabularies of different sizes {sorted(vocab)}")
    out = {}
    for setting, alpha in early_exit:
        key = f"{setting}{alpha:g}"
        recs = core.select(records, setting=setting, alpha=alpha)
        out[key] = Model(key, recs, *vocab, held_out_parts(recs, analyses) if analyses and held_out else None)
    for depth in dense:
        out[f"dense{depth}"] = Model(f"dense{depth}", core.select(records, setting="custom", n_layers=depth), *vocab)
    return out


def held_out_parts(records: Sequence[dict], analyses: dict[str, dict]) -> list[dict]:
    """Each record's analysis `test` part, checked to have read the same test text as the record."""
    held = [analyses[r["run_id"]]["test"] for r in records]
    for r, h in zip(records, held):
        if h["tokens"] != r["test"]["tokens"] or h["blocks"] != r["test"]["blocks"]:
            raise ValueError(f"the analysis of {r['run_id']} read other test text than its record")
    return held


# --- per-seed statistics on (resampled) test text: f(weights) -> [seeds] or [seeds, replicates] -----------
def ppl(model: Model, threshold: float | None = OPERATING) -> Callable:
    """Routed PPL at `threshold` (the last layer's for a dense model or threshold None)."""
    ce = model.sums("ce_last") if model.dense or threshold is None else model.sums("sweep_ce")[:, model.column(threshold)]
    return lambda w: block_ppl(ce, model.tokens, w)


def shallow(model: Model, threshold: float = OPERATING) -> Callable:
    exits = model.sums("sweep_exits")[:, model.column(threshold)]

    def stat(w):
        return exits.sum(-1) / model.tokens.sum() if w is None else (exits @ w.T) / (w @ model.tokens)
    return stat


def cost_line(model: Model, accounting: str) -> tuple[float, float]:
    """(cost of an exited token, cost of a deep token) relative to the 3-layer model's full depth, so
    that cost = shallow·a + (1 - shallow)·b; for layers as ease.exits.layer_compute_frac."""
    config = model.records[0]["config"]
    if accounting == "layers":
        return layer_compute_frac(1.0, config["exit_layer"], config["n_layers"]), 1.0
    cfg = ModelConfig(vocab_size=model.vocab_size, n_layers=config["n_layers"], dim=config["dim"],
                      n_heads=config["n_heads"], max_seq_len=config["seq_len"], norm=config["norm"])
    macs = token_macs(cfg, config["exit_layer"])
    return macs["exit"] / macs["full"], macs["deep"] / macs["full"]


def dense_cost(depth: int, reference: Model, accounting: str) -> float:
    """A dense model of `depth` layers relative to the (3-layer) early-exit model's full depth."""
    config = reference.records[0]["config"]
    if accounting == "layers":
        return depth / config["n_layers"]
    cfg = ModelConfig(vocab_size=reference.vocab_size, n_layers=config["n_layers"], dim=config["dim"],
                      n_heads=config["n_heads"], max_seq_len=config["seq_len"], norm=config["norm"])
    macs = token_macs(cfg, config["exit_layer"])
    return (depth * macs["block"] + macs["head"]) / macs["full"]


def real_sums(model: Model) -> tuple[np.ndarray, np.ndarray]:
    """Real exit's block sums on the test text (CE, exits), each [seeds, thresholds, blocks]."""
    ce = np.array([[row["block_ce"] for row in h["real_exit"]] for h in model.held_out], float)
    exits = np.array([[row["block_exits"] for row in h["real_exit"]] for h in model.held_out], float)
    return ce, exits


def real_thresholds(model: Model) -> list[float]:
    return [row["threshold"] for row in model.held_out[0]["real_exit"]]


def ppl_at_cost(model: Model, cost: float, accounting: str, real: bool = False) -> Callable:
    """The early-exit model's PPL at a given cost, interpolated along its test sweep, or with `real` along its
    real-exit thresholds (NaN out of reach)."""
    ce, exits = real_sums(model) if real else (model.sums("sweep_ce"), model.sums("sweep_exits"))
    a, b = cost_line(model, accounting)

    def stat(w):
        if w is None:
            frac = exits.sum(-1) / model.tokens.sum()
            ppls = np.exp(ce.sum(-1) / model.tokens.sum())
            return np.array([_interp(cost, a * f + b * (1 - f), p) for f, p in zip(frac, ppls)])
        n = w @ model.tokens  # [replicates]
        frac, ppls = (exits @ w.T) / n, np.exp((ce @ w.T) / n)  # [seeds, thresholds, replicates]
        costs = a * frac + b * (1 - frac)
        return np.array([[_interp(cost, costs[s, :, r], ppls[s, :, r]) for r in range(w.shape[0])]
                         for s in range(ce.shape[0])])
    return stat


def _interp(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return float("nan")
    return float(np.interp(x, xs, ys))


# --- comparisons ---------------------------------------------------------------------------------------
@dataclass
class Comparison:
    code: str  # names the comparison in labels (held_out.comparisons)
    sign: int  # the side claimed: -1 (first lower than second) or +1
    metric: str  # "ppl" or "shallow_frac"
    seed_stat: Stat  # paired t-interval of the per-seed differences
    text: TextAwareDiff  # the text-aware interval and p-value
    adjusted_p: float | None = None  # Holm's, for the primary comparisons

    @property
    def reachable(self) -> bool:
        return bool(np.isfinite(self.text.mean))


def compare(code: str, first: Callable, second: Callable, n_seeds: int, n_blocks: int, sign: int,
            metric: str = "ppl") -> Comparison:
    """first − second, claimed to have sign `sign`."""
    text = text_aware_paired(second, first, n_seeds, n_blocks, REPLICATES) if np.all(np.isfinite(first(None))) \
        else TextAwareDiff(float("nan"), float("nan"), float("nan"), float("nan"), n_seeds, n_blocks)
    a, b = np.asarray(second(None), float), np.asarray(first(None), float)
    seed_stat = paired_ci(a, b) if np.all(np.isfinite(b)) else Stat(float("nan"), None, n_seeds)
    return Comparison(code, sign, metric, seed_stat, text)


def verdict(comp: Comparison) -> str:
    """Primary comparisons: reproduced when the Holm-adjusted p is below FAMILY_ALPHA and the difference has
    the claimed sign; not reproduced when it is below and the sign is the other; inconclusive otherwise."""
    if comp.adjusted_p is None or not comp.reachable or comp.adjusted_p >= FAMILY_ALPHA:
        return INCONCLUSIVE
    return REPRODUCED if comp.sign * comp.text.mean > 0 else NOT_REPRODUCED


def primary(ms: dict[str, Model]) -> list[Comparison]:
    """The comparisons fixed before the numbers were read, one per question, with Holm-adjusted p-values."""
    a7, n_seeds, n_blocks = ms["A0.7"], len(ms["A0.7"].records), len(ms["A0.7"].tokens)
    for m in ms.values():
        core.paired(a7.records, m.records)
    comps = [
        compare("a_vs_b", ppl(a7), ppl(ms["B0.7"]), n_seeds, n_blocks, -1),
        compare("a7_vs_a5", ppl(a7), ppl(ms["A0.5"]), n_seeds, n_blocks, -1),
        compare("b_shallow", shallow(ms["B0.7"]), shallow(a7), n_seeds, n_blocks, +1, "shallow_frac"),
        compare("ee_vs_dense2", ppl_at_cost(a7, dense_cost(2, a7, "layers"), "layers"), ppl(ms["dense2"]),
                n_seeds, n_blocks, -1),
        compare("dense3_vs_dense1", ppl(ms["dense3"]), ppl(ms["dense1"]), n_seeds, n_blocks, -1),
    ]
    for comp, p in zip(comps, holm([c.text.p for c in comps])):
        comp.adjusted_p = p
    return comps


def equal_compute(ms: dict[str, Model], real: bool = False) -> list[tuple[str, int, str, Comparison]]:
    """Each early-exit model against each smaller dense model, at that model's cost, in both accountings
    (descriptive: unadjusted intervals), simulated or with `real` exit. Rows: (early-exit key, dense depth,
    accounting, comparison)."""
    rows = []
    for key in (f"{s}{a:g}" for s, a in EARLY_EXIT):
        m = ms[key]
        for depth in DENSE[:-1]:
            for accounting in ("layers", "flops"):
                cost = dense_cost(depth, m, accounting)
                rows.append((key, depth, accounting,
                             compare("equal", ppl_at_cost(m, cost, accounting, real), ppl(ms[f"dense{depth}"]),
                                     len(m.records), len(m.tokens), -1)))
    return rows


# --- exit rules on test text (the analyses' matched Shallow%) --------------------------------------------
def rule_ppl(model: Model, measure: str, fraction: float = RULE_SHALLOW) -> Callable:
    """PPL when the `fraction` of test tokens that `measure` is surest of exits (block sums of the analyses)."""
    ce = np.array([h["matched_blocks"][str(fraction)][measure] for h in model.held_out], float)
    return lambda w: block_ppl(ce, model.tokens, w)


def exit_rules(ms: dict[str, Model]) -> list[tuple[str, str, Comparison]]:
    """Each usable measure against the max-probability rule at RULE_SHALLOW, per early-exit model: one family,
    Holm-adjusted. Rows: (model key, measure, comparison measure − max-prob, claimed negative)."""
    rows = []
    for key in (f"{s}{a:g}" for s, a in EARLY_EXIT):
        m = ms[key]
        for measure in USABLE_MEASURES[1:]:
            rows.append((key, measure, compare("rule", rule_ppl(m, measure), rule_ppl(m, "max_prob"),
                                               len(m.records), len(m.tokens), -1)))
    for (*_, comp), p in zip(rows, holm([c.text.p for *_, c in rows])):
        comp.adjusted_p = p
    return rows


def rules_figure(ms: dict[str, Model], lang: str):
    """Test PPL against Shallow% for every measure and the oracle (mean over seeds), one panel per model."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)
    keys = [f"{s}{a:g}" for s, a in EARLY_EXIT]
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6), sharey=True)
        for ax, key in zip(axes, keys):
            h = ms[key].held_out
            x = 100 * np.asarray(h[0]["shallow_fractions"])
            for i, name in enumerate((*USABLE_MEASURES, "cosine", "oracle")):
                y = np.mean([a["matched"][name] for a in h], axis=0)
                style = {"linestyle": ":"} if name in ("cosine", "oracle") else {}
                ax.plot(x, y, label=words["beyond"]["measure"][name], color=f"C{i}", **style)
            ax.axvline(100 * RULE_SHALLOW, color="grey", linewidth=0.6)
            ax.set(title=model_name(key, lang), xlabel=words["held_out"]["shallow_axis"])
        axes[0].set_ylabel(words["held_out"]["test_ppl"])
        axes[0].set_ylim(top=1.15 * max(np.mean([a["matched"]["max_prob"] for a in ms[k].held_out], axis=0)[
            int(np.searchsorted(x, 60))] for k in keys))
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        return core.finish(fig)


def rules_table(ms: dict[str, Model], rows, lang: str) -> str:
    """Per model: PPL at RULE_SHALLOW of every usable measure and the oracle (a bound), then each measure's
    difference to the max-probability rule with both intervals and Holm's p."""
    words = core.labels(lang)
    h = words["held_out"]["table"]
    i = ms["A0.7"].held_out[0]["shallow_fractions"].index(RULE_SHALLOW)
    out = []
    for key, measure, comp in rows:
        m = ms[key]
        out.append({h["model"]: model_name(key, lang), h["measure"]: words["beyond"]["measure"][measure],
                    h["rule_ppl"]: core.fmt_stat(mean_ci([a["matched"][measure][i] for a in m.held_out]), "ppl"),
                    h["max_prob_ppl"]: core.fmt_stat(mean_ci([a["matched"]["max_prob"][i] for a in m.held_out]), "ppl"),
                    h["oracle_ppl"]: core.fmt_stat(mean_ci([a["matched"]["oracle"][i] for a in m.held_out]), "ppl"),
                    h["text_interval"]: fmt_text(comp), h["seed_interval"]: fmt_seed(comp),
                    h["holm"]: fmt_p(comp.adjusted_p), h["verdict"]: words["held_out"]["lower"][verdict(comp)]})
    return core.markdown_table(pd.DataFrame(out))


# --- real exit on test text ----------------------------------------------------------------------------
def real_gaps(ms: dict[str, Model]) -> list[tuple[str, float, Comparison]]:
    """Real minus simulated test PPL of the same weights at the shown thresholds (descriptive)."""
    rows = []
    for key in (f"{s}{a:g}" for s, a in EARLY_EXIT):
        m = ms[key]
        ce, _ = real_sums(m)
        for t in REAL_EXIT_SHOWN:
            j = real_thresholds(m).index(t)
            real = (lambda c: lambda w: block_ppl(c, m.tokens, w))(ce[:, j])
            rows.append((key, t, compare("real", real, ppl(m, t), len(m.records), len(m.tokens), +1)))
    return rows


def real_exit_table(ms: dict[str, Model], rows, lang: str) -> str:
    h = core.labels(lang)["held_out"]["table"]
    out = []
    for key, t, comp in rows:
        m = ms[key]
        j = real_thresholds(m).index(t)
        out.append({h["model"]: model_name(key, lang), "τ": f"{t:g}",
                    h["shallow_real"]: core.fmt_stat(mean_ci([a["real_exit"][j]["shallow_frac"] for a in m.held_out]),
                                                     "shallow_frac"),
                    h["simulated"]: core.fmt_stat(mean_ci(ppl(m, t)(None)), "ppl"),
                    h["real"]: core.fmt_stat(mean_ci([a["real_exit"][j]["ppl"] for a in m.held_out]), "ppl"),
                    h["real_minus_sim"]: fmt_text(comp)})
    return core.markdown_table(pd.DataFrame(out))


# --- alpha in the converged regime ---------------------------------------------------------------------
def best_alpha(ms: dict[str, Model], setting: str = "A") -> tuple[str, list[tuple[str, Comparison]]]:
    """The α of `setting` with the lowest mean routed test PPL, against every other α (Holm over them)."""
    keys = [f"{s}{a:g}" for s, a in EARLY_EXIT if s == setting]
    best = min(keys, key=lambda k: float(np.mean(ppl(ms[k])(None))))
    b = ms[best]
    rows = [(k, compare("alpha", ppl(b), ppl(ms[k]), len(b.records), len(b.tokens), -1)) for k in keys if k != best]
    for (_, comp), p in zip(rows, holm([c.text.p for _, c in rows])):
        comp.adjusted_p = p
    return best, rows


# --- convergence and the budget ----------------------------------------------------------------------
MIN_CHECK_SEEDS = 2


@cache
def planned(grid: str) -> list:
    """The configs of a grid, run or not (its budget, models and seeds as planned)."""
    return expand_grid(load_grid(grid))


def planned_keys(grid: str) -> list[str]:
    """The chapter's models that a grid plans, in the chapter's order."""
    keys = {f"{c.setting}{c.alpha:g}" if c.setting in ("A", "B") else f"dense{c.n_layers}" for c in planned(grid)}
    return [k for k in [f"{s}{a:g}" for s, a in EARLY_EXIT] + [f"dense{d}" for d in DENSE] if k in keys]


def _selector(key: str) -> dict:
    return {"setting": "custom", "n_layers": int(key[5:])} if key.startswith("dense") \
        else {"setting": key[0], "alpha": float(key[1:])}


def check_models(vocab_size: int, results=None, grid: str = CHECK_GRIDS[0]) -> dict[str, Model] | None:
    """A larger-budget grid's models (those it plans) over the seeds it has finished for every one of them (None
    while fewer than MIN_CHECK_SEEDS); its analyses are not read, so the vocabulary size is the converged
    grid's (same text)."""
    records = core.grid_records(grid, results, partial=True)
    by_key = {key: _finished(records, **_selector(key)) for key in planned_keys(grid)}
    seeds = set.intersection(*({r["config"]["seed"] for r in recs} for recs in by_key.values()))
    if len(seeds) < MIN_CHECK_SEEDS:
        return None
    return {key: Model(key, [r for r in recs if r["config"]["seed"] in seeds], vocab_size)
            for key, recs in by_key.items()}


def all_checks(vocab_size: int, results=None, grids: Sequence[str] = CHECK_GRIDS) -> list[dict[str, Model]]:
    """Every larger-budget grid that has a check yet (check_models), smallest budget first."""
    return [c for c in (check_models(vocab_size, results, g) for g in grids) if c is not None]


def _finished(records: Sequence[dict], **fields) -> list[dict]:
    """The records with these config fields among a running grid's (none yet: [])."""
    try:
        return core.select(records, **fields)
    except LookupError:
        return []


def epochs(model: Model) -> int:
    return model.records[0]["config"]["max_epochs"]


def _on_seeds(model: Model, seeds: Sequence[int]) -> Model:
    return Model(model.key, [r for r in model.records if r["config"]["seed"] in seeds], model.vocab_size)


def mean_val(model: Model) -> float:
    """The mean over seeds of the validation loss of the model's own objective at the kept epoch."""
    return float(np.mean([kept_val_objective(r) for r in model.records]))


def budget_check(ms: dict[str, Model], checks: Sequence[dict[str, Model]]) -> list[dict]:
    """Per model, at every budget it has (the converged grid's and each check's, smaller first): test PPL over
    that budget's seeds ("ppl"); the change of the mean validation loss of the model's own objective from the
    next smaller budget, over the seeds both have ("dval": the rule's step; below 0, the larger budget is
    better); the paired difference of test PPL from the budget to the first check with its text-aware interval
    ("diff") and the half-width of the budget's own seed interval; and the budget it chooses
    (ease.results.choose_budget: double while validation improves)."""
    rows = []
    for key, m in ms.items():
        ladder = [m] + [c[key] for c in checks if key in c]
        row = {"key": key, "ppl": {epochs(b): mean_ci(ppl(b)(None)) for b in ladder},
               "seeds": {epochs(b): len(b.records) for b in ladder}, "val": mean_val(m),
               "dval": {}, "diff": None, "budget_half": mean_ci(ppl(m)(None)).half,
               "chosen": choose_budget({epochs(b): b.records for b in ladder})}
        for smaller, larger in zip(ladder, ladder[1:]):
            seeds = set(smaller.seeds) & set(larger.seeds)
            row["dval"][epochs(larger)] = mean_val(_on_seeds(larger, seeds)) - mean_val(_on_seeds(smaller, seeds))
        if len(ladder) > 1 and len(ladder[1].records) > 1:
            base, twice = _on_seeds(m, ladder[1].seeds), ladder[1]
            core.paired(base.records, twice.records)
            row["diff"] = text_aware_paired(ppl(base), ppl(twice), len(twice.records), len(twice.tokens), REPLICATES)
        rows.append(row)
    return rows


def grid_budget(grid: str) -> int:
    """The epochs every run of a larger-budget grid trains."""
    budgets = {c.max_epochs for c in planned(grid)}
    if len(budgets) != 1:
        raise ValueError(f"grid {grid!r} trains several budgets {sorted(budgets)}; a budget check trains one")
    return budgets.pop()


def model_at(grid: str, key: str, seeds: Sequence[int], vocab_size: int, results=None) -> Model | None:
    """One model from a larger-budget grid over `seeds` (those the converged grid pairs it on), with its
    analyses for an early-exit model; None while a seed or an analysis is missing (the grid still running)."""
    records = [r for r in _finished(core.grid_records(grid, results, partial=True), **_selector(key))
               if r["config"]["seed"] in seeds]
    if sorted(r["config"]["seed"] for r in records) != sorted(seeds):
        return None
    if key.startswith("dense"):
        return Model(key, records, vocab_size)
    try:
        analyses = core.grid_analyses(records, results)
    except LookupError:
        return None
    return Model(key, records, vocab_size, held_out_parts(records, analyses))


def at_chosen_budgets(ms: dict[str, Model], budget: Sequence[dict] | None, results=None,
                      grids: Sequence[str] = CHECK_GRIDS) -> tuple[dict[str, Model], str, list[str]]:
    """Each model at the budget its validation loss chooses, read from that budget's grid once the grid has
    the model's every seed (the converged grid's, so that comparisons stay paired) and, for an early-exit
    model, their analyses. Returns (models, regime, waiting): regime "single" while there is no check yet
    (every model at the converged grid's budget), "chosen" when every model is at its chosen budget, "waiting"
    when some chose a budget whose runs are still to come; those (`waiting`) are read at the largest budget
    below their choice that has them."""
    if budget is None:
        return ms, "single", []
    by_budget = {grid_budget(g): g for g in grids}
    out, waiting = {}, []
    for row in budget:
        key, base = row["key"], ms[row["key"]]
        out[key] = base
        for e in sorted((e for e in by_budget if epochs(base) < e <= row["chosen"]), reverse=True):
            larger = model_at(by_budget[e], key, base.seeds, base.vocab_size, results)
            if larger is not None:
                out[key] = larger
                break
        if epochs(out[key]) != row["chosen"]:
            waiting.append(key)
    return out, "waiting" if waiting else "chosen", waiting


@dataclass
class Regime:
    """The book's primary regime: every model at the converged grid's budget (`base`), the larger-budget checks,
    the budget table, and each model at the budget its validation loss chooses (`models`; `name` and `waiting`
    as at_chosen_budgets returns them). Every chapter that reads the converged regime reads `models`."""

    base: dict[str, Model]
    checks: list[dict[str, Model]]
    budget: list[dict] | None
    models: dict[str, Model]
    name: str
    waiting: list[str]


def primary_regime(results=None) -> Regime:
    base = models(GRID, results)
    checks = all_checks(base["A0.7"].vocab_size, results)
    budget = budget_check(base, checks) if checks else None
    return Regime(base, checks, budget, *at_chosen_budgets(base, budget, results))


def without_last_doubling(regime: Regime, results=None,
                          grids: Sequence[str] = CHECK_GRIDS) -> tuple[int, int, dict[str, Model]] | None:
    """The models as they would be read without the last doubling of the budget: every model that chose the
    largest budget any model chose (`top`) read at the budget below it (`cap`) instead. Returns (cap, top,
    models), or None when every model stays at the converged grid's budget."""
    if regime.budget is None:
        return None
    top = max(r["chosen"] for r in regime.budget)
    below = [e for e in [epochs(regime.base["A0.7"])] + [epochs(next(iter(c.values()))) for c in regime.checks]
             if e < top]
    if not below:
        return None
    cap = max(below)
    capped = [{**r, "chosen": min(r["chosen"], cap)} for r in regime.budget]
    return cap, top, at_chosen_budgets(regime.base, capped, results, grids)[0]


def changed_verdicts(comps: Sequence[Comparison], others: Sequence[Comparison]) -> list[tuple[Comparison, Comparison]]:
    """The primary comparisons whose verdict differs between two readings (pairs: this one, the other one)."""
    return [(a, b) for a, b in zip(comps, others) if a.code == b.code and verdict(a) != verdict(b)]


def sensitivity_values(changes: Sequence[tuple[Comparison, Comparison]], cap: int, top: int, lang: str) -> dict:
    words = core.labels(lang)
    item, sep = words["held_out"]["changed_verdict"], words["held_out"]["changed_sep"]
    return {"cap": str(cap), "top": str(top),
            "changes": sep.join(item.format(question=words["held_out"]["comparisons"][b.code],
                                            verdict=words["verdict"][verdict(b)], interval=fmt_text(b),
                                            now=words["verdict"][verdict(a)]) for a, b in changes)}


STEADY_RISE = 0.01  # nats: a validation loss that never rises by more than this from epoch to epoch is steady


def largest_rise(ms: dict[str, Model]) -> tuple[str, float]:
    """The model whose validation loss (of any seed) rises most from one epoch to the next, and that rise."""
    rises = {key: float(np.diff([[h["val_objective"] for h in r["history"]] for r in m.records], axis=1).max())
             for key, m in ms.items()}
    key = max(rises, key=rises.get)
    return key, rises[key]


def steadiness_case(ms: dict[str, Model]) -> str:
    """"steady" when no model's validation loss rises by more than STEADY_RISE between epochs."""
    return "steady" if largest_rise(ms)[1] <= STEADY_RISE else "unsteady"


OVERFIT_RISE = 0.05  # a layer whose validation PPL ends 5% above its lowest has turned to over-fitting


def layer_trends(check: dict[str, Model]) -> dict[str, float] | None:
    """How the exit layer and the last layer of the early-exit models learn over a budget (mean over models and
    seeds of the per-epoch validation PPL, no epoch selected): the epoch at which each is lowest, its lowest and
    its last value. None when the budget has no early-exit model."""
    runs = [r for m in check.values() if not m.dense for r in m.records]
    if not runs:
        return None
    out = {}
    for layer, name in (("deep", "val_ppl_deep"), ("exit", "val_ppl_shallow")):
        curves = np.array([[h[name] for h in r["history"]] for r in runs])
        out[f"{layer}_epoch"] = float(np.mean(curves.argmin(1) + 1))
        out[f"{layer}_min"] = float(np.mean(curves.min(1)))
        out[f"{layer}_last"] = float(np.mean(curves[:, -1]))
    out["epochs"] = float(len(runs[0]["history"]))
    return out


def trends_case(trends: dict[str, float] | None) -> str:
    """"split": the last layer turns to over-fitting (ends OVERFIT_RISE above its lowest) while the exit layer
    is still at or near its lowest at the end; "together": not so; "absent": no early-exit model checked."""
    if trends is None:
        return "absent"
    deep_turns = trends["deep_last"] > (1 + OVERFIT_RISE) * trends["deep_min"]
    exit_learning = trends["exit_last"] <= (1 + OVERFIT_RISE) * trends["exit_min"]
    return "split" if deep_turns and exit_learning else "together"


def trends_values(trends: dict[str, float] | None) -> dict[str, str]:
    if trends is None:
        return {}
    return {"epochs": f"{trends['epochs']:.0f}", "deep_epoch": f"{trends['deep_epoch']:.0f}",
            "deep_min": f"{trends['deep_min']:.2f}", "deep_last": f"{trends['deep_last']:.2f}",
            "exit_epoch": f"{trends['exit_epoch']:.0f}", "exit_min": f"{trends['exit_min']:.2f}",
            "exit_last": f"{trends['exit_last']:.2f}"}


def convergence_figure(ms: dict[str, Model], lang: str, checks: Sequence[dict[str, Model]] = ()):
    """Each model's validation loss of its own objective per unit of loss weight by epoch (mean over seeds): at
    the budget, and beside it at each larger budget checked (its models, over its seeds)."""
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    words = core.labels(lang)["held_out"]
    panels = [ms, *checks]
    index = {key: i for i, key in enumerate(ms)}  # one colour per model in every panel
    with core.figure_style(lang):
        width = 7.5 if len(panels) == 1 else 4.6 * len(panels)
        fig, axes = plt.subplots(1, len(panels), figsize=(width, 4), sharey=True, squeeze=False)
        for ax, group in zip(axes[0], panels):
            for key, m in group.items():
                # per unit of loss weight, so that B's three-layer objective sits on the others' scale
                weight = sum(m.records[0]["config"]["weights"].values())
                curves = np.array([[h["val_objective"] for h in r["history"]] for r in m.records]) / weight
                x = np.arange(1, curves.shape[1] + 1)
                style = {"linestyle": "--"} if m.dense else {}
                ax.plot(x, curves.mean(0), label=model_name(key, lang), color=_color(key, index[key]), **style)
            ax.set(xlabel=words["epoch"], title=words["budget_panel"].format(epochs=epochs(next(iter(group.values())))))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][0].set_ylabel(words["val_objective"])
        axes[0][0].legend(fontsize=8, ncols=2)
        fig.tight_layout()
        return core.finish(fig)


def tradeoff_figure(ms: dict[str, Model], lang: str):
    """Test PPL against cost for each early-exit model's sweep (mean over seeds) and the dense models, in
    layer and FLOP accounting."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["held_out"]
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, accounting in zip(axes, ("layers", "flops")):
            for i, key in enumerate(f"{s}{a:g}" for s, a in EARLY_EXIT):
                m = ms[key]
                a, b = cost_line(m, accounting)
                frac = m.sums("sweep_exits").sum(-1) / m.tokens.sum()
                ppls = np.exp(m.sums("sweep_ce").sum(-1) / m.tokens.sum())
                ax.plot(100 * (a * frac + b * (1 - frac)).mean(0), ppls.mean(0), marker=".", markersize=3,
                        label=model_name(key, lang), color=_color(key, i))
            ref = ms["A0.7"]
            for depth in DENSE:
                d = ms[f"dense{depth}"]
                ax.errorbar(100 * dense_cost(depth, ref, accounting), ppl(d)(None).mean(),
                            yerr=mean_ci(ppl(d)(None)).half, marker="s", color="black", capsize=3, linestyle="")
                ax.annotate(model_name(f"dense{depth}", lang), (100 * dense_cost(depth, ref, accounting),
                                                               ppl(d)(None).mean()),
                            textcoords="offset points", xytext=(6, 6), fontsize=8)
            ax.set(xlabel=words["cost"][accounting], title=words["accounting"][accounting])
        axes[0].set_ylabel(words["test_ppl"])
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        return core.finish(fig)


def _color(key: str, i: int) -> str:
    if key.startswith("dense"):
        return ["#636363", "#969696", "#252525"][int(key[-1]) - 1]
    return core.color((key[0], float(key[1:])), i)


def model_name(key: str, lang: str) -> str:
    words = core.labels(lang)["held_out"]
    if key.startswith("dense"):
        return words["dense"].format(depth=key[5:])
    return core.cell_name((key[0], float(key[1:])), lang)


# --- tables -------------------------------------------------------------------------------------------------
def fmt_text(comp: Comparison) -> str:
    """'+0.12 [-0.03, +0.27]': the difference with its text-aware interval (percentage points for a share)."""
    if not comp.reachable:
        return "—"
    scale, unit, digits = (100, " pp", 1) if comp.metric == "shallow_frac" else (1, "", 3)
    t = comp.text
    return f"{scale * t.mean:+.{digits}f}{unit} [{scale * t.lo:+.{digits}f}, {scale * t.hi:+.{digits}f}]"


def fmt_seed(comp: Comparison) -> str:
    if not comp.reachable or comp.seed_stat.half is None:
        return "—"
    scale, unit, digits = (100, " pp", 1) if comp.metric == "shallow_frac" else (1, "", 3)
    s = comp.seed_stat
    return f"[{scale * s.lo:+.{digits}f}, {scale * s.hi:+.{digits}f}]"


def fmt_p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def models_table(ms: dict[str, Model], lang: str) -> str:
    h = core.labels(lang)["held_out"]["table"]
    rows = []
    for key, m in ms.items():
        routed = "—" if m.dense else core.fmt_stat(mean_ci(ppl(m)(None)), "ppl")
        rows.append({h["model"]: model_name(key, lang),
                     h["ppl_last"]: core.fmt_stat(mean_ci(ppl(m, None)(None)), "ppl"),
                     h["ppl_exit"]: "—" if m.dense else core.fmt_stat(mean_ci(block_ppl(m.sums("ce_exit"), m.tokens)), "ppl"),
                     h["ppl_routed"]: routed,
                     h["shallow"]: "—" if m.dense else core.fmt_stat(mean_ci(shallow(m)(None)), "shallow_frac"),
                     h["epoch"]: f"{np.mean([r['metrics']['best_epoch'] for r in m.records]):.1f}",
                     h["budget_epochs"]: str(epochs(m))})
    return core.markdown_table(pd.DataFrame(rows))


def primary_table(comps: Sequence[Comparison], lang: str) -> str:
    words = core.labels(lang)
    h = words["held_out"]["table"]
    rows = []
    for comp in comps:
        rows.append({h["question"]: words["held_out"]["comparisons"][comp.code],
                     h["claimed"]: "< 0" if comp.sign < 0 else "> 0",
                     h["text_interval"]: fmt_text(comp), h["seed_interval"]: fmt_seed(comp),
                     h["p"]: fmt_p(comp.text.p), h["holm"]: fmt_p(comp.adjusted_p),
                     h["verdict"]: words["verdict"][verdict(comp)]})
    return core.markdown_table(pd.DataFrame(rows))


def equal_compute_table(rows, lang: str) -> str:
    h = core.labels(lang)["held_out"]["table"]
    acc = core.labels(lang)["held_out"]["accounting"]
    out = []
    for key, depth, accounting, comp in rows:
        out.append({h["model"]: model_name(key, lang), h["against"]: model_name(f"dense{depth}", lang),
                    h["accounting"]: acc[accounting], h["text_interval"]: fmt_text(comp),
                    h["seed_interval"]: fmt_seed(comp)})
    return core.markdown_table(pd.DataFrame(out))


def budget_table(rows: Sequence[dict], lang: str) -> str:
    """A row per model: test PPL at each budget (its seeds in the header), the first doubling's paired test PPL
    difference, the budget's own half-width, the validation loss at the budget and its change at each doubling
    (the rule's steps), and the chosen budget."""
    h = core.labels(lang)["held_out"]["table"]
    budgets = sorted({e for row in rows for e in row["ppl"]})
    seeds = {e: max(row["seeds"].get(e, 0) for row in rows) for e in budgets}
    out = []
    for row in rows:
        d = row["diff"]
        line = {h["model"]: model_name(row["key"], lang)}
        line.update({h["ppl_at"].format(epochs=e, seeds=seeds[e]):
                     core.fmt_stat(row["ppl"][e], "ppl") if e in row["ppl"] else "—" for e in budgets})
        line[h["ppl_step"].format(epochs=budgets[1], previous=budgets[0])] = \
            "—" if d is None else f"{d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]"
        line[h["budget_half"]] = f"±{row['budget_half']:.3f}"
        line[h["val_at"].format(epochs=budgets[0])] = f"{row['val']:.4f}"
        line.update({h["val_step"].format(epochs=e, previous=p): f"{row['dval'][e]:+.4f}" if e in row["dval"] else "—"
                     for p, e in zip(budgets, budgets[1:])})
        line[h["chosen"]] = str(row["chosen"])
        out.append(line)
    return core.markdown_table(pd.DataFrame(out))


def oracle_rows(ms: dict[str, Model]) -> list[dict]:
    """Per early-exit model (means over seeds): the document's rule at the operating threshold, the label-free
    consistency rule, the document's rule at the consistency rule's Shallow%, and the label oracle (a bound)."""
    rows = []
    for key in (f"{s}{a:g}" for s, a in EARLY_EXIT):
        m = ms[key]
        tests = [r["test"] for r in m.records]
        consistency_shallow = np.array([t["oracles"]["consistency_shallow_frac"] for t in tests])
        # the max-probability rule read at the consistency rule's Shallow%, along each seed's sweep
        frac = m.sums("sweep_exits").sum(-1) / m.tokens.sum()
        ppls = np.exp(m.sums("sweep_ce").sum(-1) / m.tokens.sum())
        matched = np.array([_interp(s, f, p) for s, f, p in zip(consistency_shallow, frac, ppls)])
        rows.append({"key": key, "routed": mean_ci(ppl(m)(None)), "routed_shallow": mean_ci(shallow(m)(None)),
                     "consistency": mean_ci([t["oracles"]["consistency_ppl"] for t in tests]),
                     "consistency_shallow": mean_ci(consistency_shallow), "matched": mean_ci(matched),
                     "label": mean_ci([t["oracles"]["label_ppl"] for t in tests]),
                     "last": mean_ci(ppl(m, None)(None))})
    return rows


def oracle_table(rows: Sequence[dict], lang: str) -> str:
    h = core.labels(lang)["held_out"]["table"]
    out = []
    for row in rows:
        out.append({h["model"]: model_name(row["key"], lang),
                    h["routed"]: f"{core.fmt_stat(row['routed'], 'ppl')} ({core.fmt_stat(row['routed_shallow'], 'shallow_frac')})",
                    h["consistency"]: f"{core.fmt_stat(row['consistency'], 'ppl')} "
                                      f"({core.fmt_stat(row['consistency_shallow'], 'shallow_frac')})",
                    h["matched"]: core.fmt_stat(row["matched"], "ppl"),
                    h["ppl_last"]: core.fmt_stat(row["last"], "ppl"),
                    h["label"]: core.fmt_stat(row["label"], "ppl")})
    return core.markdown_table(pd.DataFrame(out))


def document_models(results=None) -> dict[str, Model]:
    """The document's regime (DOCUMENT_GRIDS: its early-exit cells and the dense models, stopped at the first
    worse epoch), read from the records; the early-exit runs' analyses, which cover the validation text only,
    give the vocabulary size."""
    doc, dense = DOCUMENT_GRIDS
    early = models(doc, results, dense=(), held_out=False)
    size = next(iter(early.values())).vocab_size
    return {**early, **models(dense, results, early_exit=(), vocab_size=size)}


def optimism_rows(ms: dict[str, Model]) -> list[dict]:
    """Per model, the kept epoch's validation PPL (routed at the operating threshold; the last layer's for
    dense models) against the same runs' test PPL: paired per-seed difference test − validation."""
    rows = []
    for key, m in ms.items():
        val = np.array([r["metrics"]["ppl"] for r in m.records])
        test = np.array([r["test"]["metrics"]["ppl"] for r in m.records])
        rows.append({"key": key, "val": mean_ci(val), "test": mean_ci(test), "diff": paired_ci(val, test)})
    return rows


def optimism_table(rows: Sequence[dict], lang: str) -> str:
    h = core.labels(lang)["held_out"]["table"]
    return core.markdown_table(pd.DataFrame([
        {h["model"]: model_name(r["key"], lang), h["val"]: core.fmt_stat(r["val"], "ppl"),
         h["test"]: core.fmt_stat(r["test"], "ppl"), h["test_minus_val"]: core.fmt_diff(r["diff"], "ppl")}
        for r in rows]))


def texts(ms: dict[str, Model], comps: Sequence[Comparison]) -> dict[str, str]:
    """The page's glued numbers (ho_* keys)."""
    a7 = ms["A0.7"]
    c = a7.records[0]["config"]
    test = a7.records[0]["test"]
    epoch_tokens = (c["train_chars"] - 1) // c["seq_len"] // c["batch_size"] * c["batch_size"] * c["seq_len"]
    out = {"ho_seeds": str(len(a7.records)), "ho_epochs": str(c["max_epochs"]),
           "ho_train_chars": f"{c['train_chars']:,}", "ho_val_chars": f"{c['val_chars']:,}",
           "ho_tokens": f"{c['max_epochs'] * epoch_tokens / 1e6:.1f}M", "ho_test_tokens": f"{test['tokens']:,}",
           "ho_unknown": str(test["unknown_chars"]), "ho_blocks": str(test["blocks"]),
           "ho_block_tokens": f"{int(a7.tokens.mean()):,}", "ho_replicates": f"{REPLICATES:,}",
           "ho_alpha": f"{FAMILY_ALPHA:g}", "ho_n_primary": str(len(comps)),
           "ho_real_thresholds": ", ".join(f"{t:g}" for t in real_thresholds(a7)),
           "ho_twice_epochs": str(planned(CHECK_GRIDS[0])[0].max_epochs),
           "ho_four_epochs": str(planned(CHECK_GRIDS[1])[0].max_epochs)}
    return out


def convergence_values(ms: dict[str, Model], checks: Sequence[dict[str, Model]], waiting: Sequence[str],
                       lang: str) -> dict[str, str]:
    """The numbers the convergence sentences are filled with: the largest epoch-to-epoch rise of a validation
    loss (and whose), how many seeds the first check has (of how many planned), the budget's epochs, the larger
    budgets checked so far and the models waiting for a budget whose grid is still running."""
    key, rise = largest_rise(ms)
    sep = core.labels(lang)["landing"]["list_sep"]
    return {"rise": f"{rise:.4f}", "model": model_name(key, lang),
            "seeds": str(len(next(iter(checks[0].values())).records) if checks else 0),
            "planned": str(len({c.seed for c in planned(CHECK_GRIDS[0])})), "epochs": str(epochs(ms["A0.7"])),
            "checked": sep.join(str(epochs(next(iter(c.values())))) for c in checks),
            "waiting": sep.join(model_name(k, lang) for k in waiting)}


def cases(comps: Sequence[Comparison], budget: Sequence[dict] | None, regime: str = "single") -> dict[str, str]:
    """The case codes the page's sentences are chosen by. "budget": pending (no check yet), converged (no
    model's test PPL moves by its budget's half-width at twice the budget), chosen (one does, and models are read
    at the budgets their validation loss chooses).
    "regime": at_chosen_budgets's."""
    by_code = {c.code: verdict(c) for c in comps}
    if budget is None:
        converged = "pending"
    elif all(r["diff"] is not None and abs(r["diff"].mean) < r["budget_half"] for r in budget):
        converged = "converged"
    else:
        converged = "chosen"
    return {"depth": by_code["dense3_vs_dense1"], "ee": by_code["ee_vs_dense2"], "budget": converged,
            "regime": regime}


def equal_counts(rows, prefix: str = "ho_eq") -> dict[str, str]:
    """How the descriptive equal-compute comparisons fall: early exit lower (interval below 0), dense lower
    (above 0), not told apart, and out of reach (the early-exit model cannot spend that little)."""
    reach = [c for *_, c in rows if c.reachable]
    return {f"{prefix}_total": str(len(rows)), f"{prefix}_unreachable": str(len(rows) - len(reach)),
            f"{prefix}_ee": str(sum(c.text.hi < 0 for c in reach)),
            f"{prefix}_dense": str(sum(c.text.lo > 0 for c in reach)),
            f"{prefix}_tied": str(sum(c.text.lo <= 0 <= c.text.hi for c in reach))}


def rule_counts(rows) -> dict[str, str]:
    """How the exit-rule family falls after Holm: lower than max-prob, higher, not told apart."""
    verdicts = [verdict(c) for *_, c in rows]
    return {"ho_rules_total": str(len(rows)), "ho_rule_shallow": f"{100 * RULE_SHALLOW:g}%",
            "ho_rules_lower": str(verdicts.count(REPRODUCED)), "ho_rules_higher": str(verdicts.count(NOT_REPRODUCED)),
            "ho_rules_tied": str(verdicts.count(INCONCLUSIVE))}


def alpha_case(rows) -> str:
    """"lowest" when the best α is lower than every other after Holm, else "tied"."""
    return "lowest" if all(verdict(c) == REPRODUCED for _, c in rows) else "tied"


def alpha_table(ms: dict[str, Model], best: str, rows, lang: str) -> str:
    """Setting A at each α: routed, layer-1 and last-layer test PPL, Shallow, and the best α's difference to it."""
    words = core.labels(lang)
    h = words["held_out"]["table"]
    by = dict(rows)
    out = []
    for key in (f"{s}{a:g}" for s, a in EARLY_EXIT if s == best[0]):
        m, comp = ms[key], by.get(key)
        out.append({"α": f"{m.records[0]['config']['alpha']:g}",
                    h["ppl_routed"]: core.fmt_stat(mean_ci(ppl(m)(None)), "ppl"),
                    h["ppl_exit"]: core.fmt_stat(mean_ci(block_ppl(m.sums("ce_exit"), m.tokens)), "ppl"),
                    h["ppl_last"]: core.fmt_stat(mean_ci(ppl(m, None)(None)), "ppl"),
                    h["shallow"]: core.fmt_stat(mean_ci(shallow(m)(None)), "shallow_frac"),
                    h["best_minus"]: "—" if comp is None else fmt_text(comp),
                    h["holm"]: "—" if comp is None else fmt_p(comp.adjusted_p),
                    h["verdict"]: "—" if comp is None else words["held_out"]["lower"][verdict(comp)]})
    return core.markdown_table(pd.DataFrame(out))
