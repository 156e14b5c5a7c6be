"""Chapter "Beyond the document": baselines at equal compute, other exit measures and the oracle, α from 0 to 1.

- `dense` grid: standard 1-, 2-, 3-layer models (last layer's loss only). Each early-exit sweep is read
  at each smaller model's compute and compared with it, paired by seed (`equal_compute`).
- checkpoint analyses (`ease.analysis`) of the exp5-6 runs at α = 0.7: every exit measure and the oracle
  at matched Shallow (`matched_curves`), and how often layer 1's top character equals layer 3's.
- `alpha` grid: both settings at α = 0.0 … 1.0; the document's claims 1 and 4 at every α (`alpha_claims`)
  and the α with the lowest mean PPL, judged against every other α (`best_alpha`).
Every ordering goes through companion.judge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ease.exits import MEASURES
from ease.stats import NOT_REPRODUCED, REPRODUCED, Stat, mean_ci, pareto_front

from companion import core, judge
from companion.claims import DOC_CELLS
from companion.experiments import Condition, lowest

A7, B7 = ("A", 0.7), ("B", 0.7)
# Measures a deployed model can use: the cosine needs the last layer's state, so it is a diagnostic.
USABLE_MEASURES = tuple(name for name in MEASURES if name != "cosine")
AT_SHALLOW = 0.25  # the share of early exits the text compares measures at


# --- early exit against smaller dense models at equal compute --------------------------------------
@dataclass
class EqualCompute:
    n_layers: int  # the dense model's depth
    compute: float  # its share of the full model's layers
    cell: tuple[str, float]  # the early-exit configuration
    dense: Stat  # the dense model's PPL over seeds
    early_exit: Stat  # the early-exit PPL at that compute over seeds
    comparison: judge.Comparison  # early exit − dense per seed, claimed negative (early exit better)


def equal_compute(exp: Sequence[dict], dense: Sequence[dict]) -> list[EqualCompute]:
    """At each dense model's compute: every early-exit configuration's PPL there (interpolated along
    its sweep; at full compute its last layer), paired by seed with the dense model's last-layer PPL."""
    full = max(r["config"]["n_layers"] for r in dense)
    out = []
    for n in sorted({r["config"]["n_layers"] for r in dense}):
        d = core.select(dense, n_layers=n)
        compute = n / full
        for cell in DOC_CELLS:
            recs = core.select(exp, setting=cell[0], alpha=cell[1])
            if n == full:  # full compute: nobody exits, the early-exit model's last layer
                ee = [r["metrics"]["ppl_deep"] for r in recs]
            else:
                ee = [core.ppl_at_compute(r, compute) for r in recs]
                if any(math.isnan(e) for e in ee):  # a sweep that never reaches this compute
                    continue
            core.paired(d, recs)
            dense_ppl = [r["metrics"]["ppl_deep"] for r in d]
            out.append(EqualCompute(n, compute, cell, mean_ci(dense_ppl), mean_ci(ee),
                                    judge.Comparison("ppl", [e - p for e, p in zip(ee, dense_ppl)], -1)))
    return out


def equal_compute_table(rows: Sequence[EqualCompute], lang: str) -> str:
    words = core.labels(lang)["beyond"]
    h = words["equal_compute"]
    out = []
    for r in rows:
        out.append({"Compute": f"{100 * r.compute:.1f}%", h["dense"]: h["layers"].format(n=r.n_layers),
                    h["dense_ppl"]: core.fmt_stat(r.dense, "ppl"), h["early_exit"]: core.cell_name(r.cell),
                    h["early_exit_ppl"]: core.fmt_stat(r.early_exit, "ppl"),
                    h["difference"]: core.fmt_diff(r.comparison.stat, "ppl"),
                    h["better"]: words["answer"][r.comparison.verdict]})
    return core.markdown_table(pd.DataFrame(out))


def fig_equal_compute(exp: Sequence[dict], dense: Sequence[dict], lang: str):
    """PPL against Compute%: every early-exit sweep (mean over seeds), the dense models, the Pareto front."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["beyond"]["figure_equal_compute"]
    full = max(r["config"]["n_layers"] for r in dense)
    depths = sorted({r["config"]["n_layers"] for r in dense})
    points = []  # (compute %, ppl)
    with core.figure_style(lang):
        fig, ax = plt.subplots(figsize=(7.8, 4.8))
        for i, cell in enumerate(DOC_CELLS):
            comp, ppl, _ = core.sweep_curve(core.select(exp, setting=cell[0], alpha=cell[1]))
            order = np.argsort(comp)
            ax.plot(100 * comp[order], ppl[order], color=core.color(cell, i), linewidth=1.8, marker=".",
                    markersize=4, label=words["early_exit"].format(setting=cell[0], alpha=cell[1]))
            points += [(100 * c, p) for c, p in zip(comp, ppl)]
        for n in depths:
            st = mean_ci([r["metrics"]["ppl_deep"] for r in core.select(dense, n_layers=n)])
            x = 100 * n / full
            ax.errorbar([x], [st.mean], yerr=[[st.mean - st.lo], [st.hi - st.mean]], fmt="s", color="black",
                        markersize=7, capsize=4, zorder=4,
                        label=words["dense"].format(depths=words["depth_sep"].join(map(str, depths)))
                        if n == depths[0] else None)
            ax.annotate(words["dense_point"].format(n=n), (x, st.mean), textcoords="offset points", xytext=(6, 6),
                        fontsize=8)
            points.append((x, st.mean))
        front = pareto_front([p[0] for p in points], [p[1] for p in points])
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#2ca02c", linewidth=3,
                alpha=0.45, zorder=1, label=words["front"])
        core.plain_log_scale(ax)
        ax.set_xlabel(words["x"].format(n=full))
        ax.set_ylabel(words["y"])
        ax.legend(fontsize=7.5, loc="upper right")
        ax.set_title(words["title"], fontsize=10)
        fig.tight_layout()
        return core.finish(fig)


# --- exit measures and the oracle ------------------------------------------------------------------
def matched_curves(recs: Sequence[dict], analyses: dict[str, dict]) -> tuple[list[float], dict[str, np.ndarray]]:
    """Shallow fractions and, per measure (and the oracle), the per-seed PPL matrix [seed, fraction]."""
    fractions = analyses[recs[0]["run_id"]]["shallow_fractions"]
    curves = {name: np.array([analyses[r["run_id"]]["matched"][name] for r in recs])
              for name in [*MEASURES, "oracle"]}
    return fractions, curves


def nearest(fractions: Sequence[float], target: float) -> int:
    return min(range(len(fractions)), key=lambda k: abs(fractions[k] - target))


@dataclass
class AtShallow:
    """The measures of one configuration at one share of early exits (per seed, paired)."""

    fraction: float
    ppl: dict[str, list[float]]  # measure (and "oracle") -> per-seed PPL

    def mean(self, name: str) -> float:
        return float(np.mean(self.ppl[name]))

    @property
    def best_usable(self) -> judge.Lowest:
        """The usable measure with the lowest mean PPL, judged against the other usable ones."""
        return judge.lowest({name: self.ppl[name] for name in USABLE_MEASURES}, "ppl")


def at_shallow(recs: Sequence[dict], analyses: dict[str, dict], target: float = AT_SHALLOW) -> AtShallow:
    fractions, curves = matched_curves(recs, analyses)
    j = nearest(fractions, target)
    return AtShallow(fractions[j], {name: curve[:, j].tolist() for name, curve in curves.items()})


def measures_table(exp: Sequence[dict], analyses: dict[str, dict], lang: str,
                   at: Sequence[float] = (0.1, 0.25, 0.5)) -> str:
    words = core.labels(lang)["beyond"]
    h = words["measures"]
    rows = []
    for cell in (A7, B7):
        fractions, curves = matched_curves(core.select(exp, setting=cell[0], alpha=cell[1]), analyses)
        for name, curve in curves.items():
            row = {h["run"]: core.cell_name(cell), h["measure"]: words["measure"][name]}
            for f in at:
                row[h["ppl_at"].format(pct=f"{100 * f:.0f}")] = core.fmt_stat(mean_ci(curve[:, nearest(fractions, f)]),
                                                                             "ppl")
            rows.append(row)
    return core.markdown_table(pd.DataFrame(rows))


def fig_measures(exp: Sequence[dict], analyses: dict[str, dict], lang: str):
    import matplotlib.pyplot as plt

    words = core.labels(lang)["beyond"]
    fw = words["figure_measures"]
    styles = {"max_prob": ("#08519c", "-"), "entropy": ("#6a51a3", "--"), "margin": ("#238b45", "-."),
              "cosine": ("#d94801", ":"), "oracle": ("black", "-")}
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, cell in zip(axes, (A7, B7)):
            recs = core.select(exp, setting=cell[0], alpha=cell[1])
            fractions, curves = matched_curves(recs, analyses)
            x = 100 * np.array(fractions)
            for name, curve in curves.items():
                color, ls = styles[name]
                st = [mean_ci(curve[:, j]) for j in range(len(fractions))]
                ax.plot(x, [s.mean for s in st], color=color, linestyle=ls, linewidth=2 if name == "oracle" else 1.6,
                        label=words["measure"][name])
                ax.fill_between(x, [s.lo for s in st], [s.hi for s in st], color=color, alpha=0.12, linewidth=0)
            ax.set_title(fw["title"].format(setting=cell[0], alpha=cell[1], n=len(recs)), fontsize=10)
            ax.set_xlabel(fw["x"])
            core.plain_log_scale(ax)
        axes[0].set_ylabel(fw["y"])
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        return core.finish(fig)


def agreement(exp: Sequence[dict], analyses: dict[str, dict], cell: tuple[str, float]) -> Stat:
    """How often layer 1's most likely character equals layer 3's, over seeds."""
    return mean_ci([analyses[r["run_id"]]["agreement"] for r in core.select(exp, setting=cell[0], alpha=cell[1])])


# --- the alpha grid ------------------------------------------------------------------------------
def alphas(records: Sequence[dict], setting: str) -> list[float]:
    return sorted({r["config"]["alpha"] for r in records if r["config"]["setting"] == setting})


def alpha_claims(records: Sequence[dict], alpha: float) -> tuple[judge.Comparison, judge.Comparison]:
    """Claims 1 (PPL: A − B < 0) and 4 (Shallow: B − A > 0) at one α of the alpha grid, paired by seed."""
    ra, rb = core.select(records, setting="A", alpha=alpha), core.select(records, setting="B", alpha=alpha)
    return judge.compare(rb, ra, "ppl", -1), judge.compare(ra, rb, "shallow_frac", +1)


def best_alpha(records: Sequence[dict], setting: str, metric: str = "ppl") -> judge.Lowest:
    """The α with the lowest mean `metric` ("ppl": routed, "ppl_deep": layer 3 alone), judged against every other α."""
    by_alpha = {a: Condition(core.select(records, setting=setting, alpha=a)) for a in alphas(records, setting)}
    return lowest(by_alpha, metric=metric)


def best_alpha_table(found: dict[tuple[str, str], judge.Lowest], lang: str) -> str:
    """One row per (setting, metric): the lowest-mean α, the closest other α with the paired difference."""
    words = core.labels(lang)["beyond"]
    h = words["best_alpha"]
    rows = []
    for (setting, metric), b in found.items():
        rows.append({h["setting"]: setting, h["ppl"]: h[metric], h["best"]: f"{b.key:g}",
                     h["closest"]: f"{b.closest:g}", h["difference"]: core.fmt_diff(b.against[b.closest].stat, "ppl"),
                     h["lower"]: words["answer"][b.verdict]})
    return core.markdown_table(pd.DataFrame(rows))


def alpha_table(records: Sequence[dict], lang: str) -> str:
    """Per α, claims 1 and 4 of the document: PPL of A and B with the paired difference A − B ("A better"),
    and Shallow with B − A ("B exits more"), each with its verdict."""
    h = core.labels(lang)["beyond"]["alpha_table"]
    rows = []
    for a in alphas(records, "A"):
        ppl, shallow = alpha_claims(records, a)
        rows.append({"α": f"{a:g}",
                     "PPL A": core.fmt_stat(mean_ci(core.value(r, "ppl") for r in core.select(records, setting="A", alpha=a)), "ppl"),
                     "PPL B": core.fmt_stat(mean_ci(core.value(r, "ppl") for r in core.select(records, setting="B", alpha=a)), "ppl"),
                     h["ppl_diff"]: core.fmt_diff(ppl.stat, "ppl"),
                     h["a_better"]: judge.verdict_word(ppl.verdict, lang),
                     h["shallow_diff"]: judge.fmt_diff(shallow.stat, "shallow_frac", lang),
                     h["b_exits_more"]: judge.verdict_word(shallow.verdict, lang)})
    return core.markdown_table(pd.DataFrame(rows))


def fig_alpha_grid(records: Sequence[dict], lang: str):
    import matplotlib.pyplot as plt

    words = core.labels(lang)["beyond"]["figure_alpha"]
    threshold = records[0]["config"]["threshold"]
    panels = (("ppl", words["routed"].format(threshold=threshold)), ("ppl_deep", words["deep"]),
              ("shallow_frac", words["shallow"]))
    colors = {"A": "#08519c", "B": "#d94801"}
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.8))
        for ax, (metric, title) in zip(axes, panels):
            scale = 100 if metric == "shallow_frac" else 1
            for setting in ("A", "B"):
                xs = alphas(records, setting)
                st = [mean_ci(scale * core.value(r, metric) for r in core.select(records, setting=setting, alpha=a))
                      for a in xs]
                ax.plot(xs, [s.mean for s in st], marker="o", color=colors[setting],
                        label=words["setting"].format(setting=setting))
                ax.fill_between(xs, [s.lo for s in st], [s.hi for s in st], color=colors[setting], alpha=0.2,
                                linewidth=0)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("α")
            if metric != "shallow_frac":
                core.plain_log_scale(ax)
        axes[0].legend(fontsize=8)
        fig.suptitle(words["title"], fontsize=11)
        fig.tight_layout()
        return core.finish(fig)


# --- what the page shows -----------------------------------------------------------------------
@dataclass
class Beyond:
    exp: list[dict]
    dense: list[dict]
    alpha: list[dict]
    analyses: dict[str, dict]
    equal: list[EqualCompute]
    at25: AtShallow  # setting A at α = 0.7
    best: dict[tuple[str, str], judge.Lowest]  # (setting, "ppl" or "ppl_deep") -> the lowest-mean α

    @property
    def smaller(self) -> list[EqualCompute]:
        """The comparisons below full compute."""
        return [r for r in self.equal if r.compute < 1]

    @property
    def answer(self) -> str:
        """Does early exit beat the smaller dense model at its compute: "all", "none" or "some" comparisons."""
        wins = sum(r.comparison.verdict == REPRODUCED for r in self.smaller)
        return "all" if wins == len(self.smaller) else "none" if wins == 0 else "some"


def load(results=None) -> Beyond:
    exp, dense, alpha = (core.grid_records(g, results) for g in ("exp5-6", "dense", "alpha"))
    a7, b7 = core.select(exp, setting="A", alpha=0.7), core.select(exp, setting="B", alpha=0.7)
    analyses = core.grid_analyses(a7 + b7, results, held_out=False)
    best = {(s, m): best_alpha(alpha, s, m) for m in ("ppl", "ppl_deep") for s in ("A", "B")}
    return Beyond(exp, dense, alpha, analyses, equal_compute(exp, dense), at_shallow(a7, analyses), best)


def texts(b: Beyond, lang: str) -> dict[str, str]:
    """The page's glued numbers (bd_* keys); the measure's name from labels."""
    verdicts = [alpha_claims(b.alpha, a) for a in alphas(b.alpha, "A")]
    ppl_v = [ppl.verdict for ppl, _ in verdicts]
    shallow_v = [shallow.verdict for _, shallow in verdicts]
    wins = sum(r.comparison.verdict == REPRODUCED for r in b.smaller)
    losses = sum(r.comparison.verdict == NOT_REPRODUCED for r in b.smaller)
    best, usable = b.best, b.at25.best_usable
    measure = core.labels(lang)["beyond"]["measure"]
    return {
        "bd_seeds": str(len(core.select(b.dense, n_layers=1))),
        "bd_pairs": str(len(b.smaller)),
        "bd_wins": str(wins), "bd_losses": str(losses), "bd_undecided": str(len(b.smaller) - wins - losses),
        "bd_agree_a": core.fmt_stat(agreement(b.exp, b.analyses, A7), "shallow_frac"),
        "bd_agree_b": core.fmt_stat(agreement(b.exp, b.analyses, B7), "shallow_frac"),
        "bd_best_measure": measure[usable.key],
        "bd_maxprob_25": f"{b.at25.mean('max_prob'):.2f}", "bd_oracle_25": f"{b.at25.mean('oracle'):.2f}",
        "bd_best_25": f"{b.at25.mean(usable.key):.2f}",
        "bd_best_closest": measure[usable.closest],
        "bd_best_closest_diff": core.fmt_diff(usable.against[usable.closest].stat, "ppl"),
        "bd_alpha_seeds": str(len(core.select(b.alpha, setting="A", alpha=0.0))),
        "bd_best_alpha_a": f"{best[('A', 'ppl')].key:g}", "bd_best_alpha_b": f"{best[('B', 'ppl')].key:g}",
        "bd_best_alpha_a_deep": f"{best[('A', 'ppl_deep')].key:g}",
        "bd_best_alpha_b_deep": f"{best[('B', 'ppl_deep')].key:g}",
        "bd_alpha_n": str(len(verdicts)),
        "bd_alpha_a_better": str(ppl_v.count(REPRODUCED)), "bd_alpha_b_better": str(ppl_v.count(NOT_REPRODUCED)),
        "bd_alpha_b_exits_more": str(shallow_v.count(REPRODUCED)),
        "bd_alpha_a_exits_more": str(shallow_v.count(NOT_REPRODUCED)),
    }
