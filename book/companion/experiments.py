"""Chapters "Experiment 5" (setting A against α and the threshold) and "Experiment 6" (setting B against A).

They show the document's result tables beside the runs' (mean ± half-width of the 95% t-interval over
seeds), figures of the runs against the document, and, for every ordering their text states ("α = 0.7
has the lowest PPL", "PPL falls as the threshold rises", "A has a lower PPL than B"), the paired
comparison of companion.judge that decides it. Where the document orders two conditions, the claimed
sign is the document's, so the verdict says whether the runs reproduce the document's ordering.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
import pandas as pd

from ease.config import DOC_THRESHOLDS
from ease.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Stat, mean_ci, verdict

from companion import core, judge

A, B = "A", "B"


# --- comparisons shared by both chapters -----------------------------------------------------------
@dataclass
class Condition:
    """One side of a comparison: a cell's records (seed order) read at a sweep threshold (None: the
    operating threshold)."""

    records: list[dict]
    threshold: float | None = None

    def values(self, metric: str) -> list[float]:
        return [core.value(r, metric, self.threshold) for r in self.records]

    def stat(self, metric: str) -> Stat:
        return mean_ci(self.values(metric))


def compare(first: Condition, second: Condition, metric: str, sign: int) -> judge.Comparison:
    """second − first per seed, claimed to have `sign`."""
    return judge.compare(first.records, second.records, metric, sign, first.threshold, second.threshold)


@dataclass
class Step:
    """Two conditions the document orders: the runs' paired difference (second − first), claimed to have
    the sign of the document's difference."""

    first: Hashable
    second: Hashable
    doc_diff: float
    comparison: judge.Comparison


def document_steps(conditions: dict, doc: dict, metric: str = "ppl") -> list[Step]:
    """Each neighbouring pair of `conditions` (in their order), claimed to move as the document's values do."""
    keys = list(conditions)
    steps = []
    for first, second in zip(keys, keys[1:]):
        doc_diff = doc[second] - doc[first]
        if doc_diff == 0:
            raise ValueError(f"the document's values at {first} and {second} are equal: no ordering to test")
        sign = 1 if doc_diff > 0 else -1
        steps.append(Step(first, second, doc_diff, compare(conditions[first], conditions[second], metric, sign)))
    return steps


def direction(comparison: judge.Comparison) -> str:
    """'up', 'down' (the interval excludes 0 on that side), 'unresolved', or 'single' (one seed)."""
    if comparison.stat.half is None:
        return "single"
    return {REPRODUCED: "up", NOT_REPRODUCED: "down", INCONCLUSIVE: "unresolved"}[verdict(comparison.stat, +1)]


def trend(comparisons: Sequence[judge.Comparison]) -> str:
    """How a metric moves along consecutive steps, by their paired intervals: 'rises' or 'falls' (every
    step resolved that way), 'not_monotonic' (every step resolved, both ways), 'unresolved' (a step's
    interval contains 0) or 'single' (one seed: no interval)."""
    moves = [direction(c) for c in comparisons]
    if "single" in moves:
        return "single"
    if all(m == "up" for m in moves):
        return "rises"
    if all(m == "down" for m in moves):
        return "falls"
    return "unresolved" if "unresolved" in moves else "not_monotonic"


def doc_trend(values: Sequence[float]) -> str:
    """The document's own values (one number each, no seeds): 'rises', 'falls' or 'not_monotonic'."""
    d = np.diff(values)
    if np.all(d > 0):
        return "rises"
    if np.all(d < 0):
        return "falls"
    return "not_monotonic"


def lowest(conditions: dict[Hashable, Condition], key: Hashable | None = None, metric: str = "ppl") -> judge.Lowest:
    """judge.lowest on conditions read from the same seeds' records: `key` (default: the lowest mean)
    against every other condition."""
    first = next(iter(conditions.values())).records
    for condition in conditions.values():
        core.paired(first, condition.records)
    return judge.lowest({k: c.values(metric) for k, c in conditions.items()}, metric, key)


def seed_case(grid: core.Grid) -> str:
    """'interval' (every cell has two seeds or more), 'some_single' or 'all_single' (one seed: no interval)."""
    counts = [len(v) for v in grid.runs.values()]
    if max(counts) == 1:
        return "all_single"
    return "some_single" if min(counts) == 1 else "interval"


def against_document(values: Sequence[float], doc_value: float) -> str:
    """The runs against one published value, by the 95% interval of (run − document) over seeds:
    'runs_lower' / 'runs_higher' (the interval excludes 0 on that side), 'inside', or 'single' (one seed)."""
    c = judge.Comparison("ppl", [v - doc_value for v in values], -1)
    if c.stat.half is None:
        return "single"
    return {REPRODUCED: "runs_lower", NOT_REPRODUCED: "runs_higher", INCONCLUSIVE: "inside"}[c.verdict]


def comparisons_table(rows: Sequence[tuple[str, float, judge.Comparison]], lang: str) -> str:
    """One row per comparison: what is compared, the document's difference, the runs' paired difference
    with its 95% interval, the seeds where the document's sign holds, and the verdict."""
    h = core.labels(lang)["comparisons"]
    out = []
    for label, doc_diff, c in rows:
        doc = f"{doc_diff:+.2f}" if c.metric == "ppl" else f"{doc_diff:+.1f}{core.labels(lang)['judge']['points']}"
        out.append({h["comparison"]: label, h["doc"]: doc, h["runs"]: judge.fmt_diff(c.stat, c.metric, lang),
                    h["holds"]: f"{c.holds}/{len(c.diffs)}", h["verdict"]: judge.verdict_word(c.verdict, lang)})
    return core.markdown_table(pd.DataFrame(out))


def step_rows(steps: Sequence[Step], name: Callable[[Hashable], str], metric_name: str = "PPL") -> list[tuple]:
    return [(f"{metric_name}({name(s.second)}) − {metric_name}({name(s.first)})", s.doc_diff, s.comparison)
            for s in steps]


def claim_rows(steps: Sequence[Step], claim: judge.Lowest, doc: dict, name: Callable[[Hashable], str]) -> list[tuple]:
    """The steps, then the claimed-lowest option's comparisons that are not already a step."""
    rows = step_rows(steps, name)
    seen = {frozenset((s.first, s.second)) for s in steps}
    for other, c in claim.against.items():
        if frozenset((other, claim.key)) not in seen:
            rows.append((f"PPL({name(claim.key)}) − PPL({name(other)})", doc[claim.key] - doc[other], c))
    return rows


def _result_columns(words: dict, doc_row: dict | None, grid: core.Grid, setting: str, alpha: float,
                    threshold: float | None) -> dict[str, str]:
    h = words["results"]
    row = {}
    for m in core.METRICS:
        row[f"{h[m]} {h['doc']}"] = core.fmt_published(doc_row, m) if doc_row else "—"
        row[f"{h[m]} {h['ours']}"] = core.fmt_stat(grid.stat(setting, alpha, m, threshold), m)
    row[h["seeds"]] = str(len(grid.cell(setting, alpha)))
    return row


def fig_tradeoff(grid: core.Grid, published: dict, cells: Sequence[tuple[str, float]], lang: str,
                 doc_tables: Sequence[str] = ()):
    """PPL against Compute % along each run's threshold sweep: mean curve, seed band, the document's points."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["tradeoff"]
    with core.figure_style(lang):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        for i, cell in enumerate(cells):
            recs = grid.cell(*cell)
            color = core.color(cell, i)
            thresholds = [row["threshold"] for row in recs[0]["sweep"]]
            mean_compute, _, ppl = core.sweep_curve(recs)
            mean_compute = 100 * mean_compute
            for rec in recs:
                ax.plot([100 * row["compute_frac"] for row in rec["sweep"]], [row["ppl"] for row in rec["sweep"]],
                        color=color, alpha=0.25, linewidth=0.8)
            per_t = [mean_ci(ppl[:, j]) for j in range(len(thresholds))]
            order = np.argsort(mean_compute)
            ax.plot(mean_compute[order], [per_t[j].mean for j in order], color=color, linewidth=2,
                    label=core.cell_name(cell, lang) + words["mean_of"].format(n=len(recs)))
            if len(recs) > 1:
                ax.fill_between(mean_compute[order], [per_t[j].lo for j in order], [per_t[j].hi for j in order],
                                color=color, alpha=0.2, linewidth=0)
            marks = [j for j, t in enumerate(thresholds) if any(abs(t - d) < 1e-9 for d in DOC_THRESHOLDS)]
            ax.scatter(mean_compute[marks], [per_t[j].mean for j in marks], color=color, s=22, zorder=3)
        markers = {A: "X", B: "P"}
        for key in doc_tables:
            table = published[key]
            for setting in sorted({r.get("setting", table.get("setting")) for r in table["rows"]}):
                rows = [r for r in table["rows"] if r.get("setting", table.get("setting")) == setting]
                cell = (setting, float(table["alpha"]))
                ax.plot([r["compute_pct"] for r in rows], [r["ppl"] for r in rows], linestyle="--",
                        marker=markers.get(setting, "o"), color=core.color(cell), markersize=8,
                        markeredgecolor="black", linewidth=1,
                        label=words["document"].format(cell=core.cell_name(cell, lang)))
                for r in rows:
                    ax.annotate(f"{r['threshold']:g}", (r["compute_pct"], r["ppl"]), textcoords="offset points",
                                xytext=(5, 4), fontsize=7)
        core.plain_log_scale(ax, "y")
        ax.set_xlabel(words["x"])
        ax.set_ylabel(words["y"])
        ax.set_title(words["title"], fontsize=10)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return core.finish(fig)


# --- Experiment 5: setting A against α --------------------------------------------------------------
def alpha_table(grid: core.Grid, published: dict, lang: str) -> str:
    """Setting A for each α: the document's row beside the runs' (at the runs' own threshold)."""
    words = core.labels(lang)
    doc_rows = {float(r["alpha"]): r for r in published["exp5_alpha"]["rows"]}
    setting = published["exp5_alpha"]["setting"]
    rows = [{words["results"]["alpha"]: f"{alpha:g}",
             **_result_columns(words, doc_rows.get(alpha), grid, setting, alpha, None)}
            for s, alpha in grid.cells if s == setting]
    return core.markdown_table(pd.DataFrame(rows))


@dataclass
class AlphaResults:
    """What the text of Experiment 5 says about α (setting A at the operating threshold)."""

    doc: dict[float, float]  # α -> the document's PPL
    lowest: judge.Lowest  # the α with the lowest mean PPL, against every other α
    doc_best: judge.Lowest  # the document's best α, against every other α (the document's claim)
    steps: list[Step]  # neighbouring α, claimed to move as the document's PPL does
    trend: str  # of the runs' PPL along α (see `trend`)
    doc_trend: str  # of the document's PPL along α
    spread: float  # highest minus lowest mean PPL over α
    at_doc_alpha: float  # the α of Experiment 6, compared with the document's row
    stat_at_doc_alpha: Stat
    doc_ppl_at_doc_alpha: float
    against_document: str  # see `against_document`


def alpha_conditions(grid: core.Grid, setting: str = A) -> dict[float, Condition]:
    return {alpha: Condition(grid.cell(s, alpha)) for s, alpha in grid.cells if s == setting}


def alpha_results(grid: core.Grid, published: dict) -> AlphaResults:
    doc = {float(r["alpha"]): r["ppl"] for r in published["exp5_alpha"]["rows"]}
    conditions = alpha_conditions(grid, published["exp5_alpha"]["setting"])
    doc_best = min(doc, key=doc.get)
    steps = document_steps({a: conditions[a] for a in sorted(doc)}, doc)
    means = [np.mean(c.values("ppl")) for c in conditions.values()]
    alpha6 = float(published["exp6_settings"]["alpha"])
    values = conditions[alpha6].values("ppl")
    return AlphaResults(
        doc=doc, lowest=lowest(conditions), doc_best=lowest(conditions, doc_best),
        steps=steps, trend=trend([s.comparison for s in steps]), doc_trend=doc_trend([doc[a] for a in sorted(doc)]),
        spread=float(max(means) - min(means)), at_doc_alpha=alpha6, stat_at_doc_alpha=mean_ci(values),
        doc_ppl_at_doc_alpha=doc[alpha6], against_document=against_document(values, doc[alpha6]))


def at_doc_alpha_texts(r: AlphaResults) -> dict[str, str]:
    """The runs' PPL at the document's α beside the document's, and their ratio (glue keys exp5_a07_*)."""
    return {"exp5_a07_ppl": core.fmt_stat(r.stat_at_doc_alpha, "ppl"),
            "exp5_a07_doc_ppl": f"{r.doc_ppl_at_doc_alpha:.2f}",
            "exp5_a07_ratio": f"{r.stat_at_doc_alpha.mean / r.doc_ppl_at_doc_alpha:.2f}"}


def alpha_comparisons_table(r: AlphaResults, lang: str) -> str:
    """Neighbouring α and the document's best α against the others, paired by seed."""
    return comparisons_table(claim_rows(r.steps, r.doc_best, r.doc, lambda a: f"α={a:g}"), lang)


def fig_alpha(grid: core.Grid, published: dict, lang: str):
    """PPL, Shallow % and Compute % of setting A against α: seeds, mean ± CI, and the document."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["alpha_figure"]
    doc = {float(r["alpha"]): r for r in published["exp5_alpha"]["rows"]}
    alphas = [a for s, a in grid.cells if s == A]
    panels = (("ppl", "ppl"), ("shallow_frac", "shallow_pct"), ("compute_frac", "compute_pct"))
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
        for ax, (metric, doc_key) in zip(axes, panels):
            scale = 100 if core.PERCENT[metric] else 1
            for a in alphas:
                vals = np.array(grid.values(A, a, metric)) * scale
                ax.scatter(np.full(len(vals), a) + np.linspace(-0.008, 0.008, len(vals)), vals, s=12,
                           color=core.color((A, a)), alpha=0.6, zorder=2)
            st = [mean_ci(np.array(grid.values(A, a, metric)) * scale) for a in alphas]
            ax.errorbar(alphas, [s.mean for s in st], yerr=[(s.half or 0.0) for s in st], color="#08519c",
                        marker="o", capsize=4, linewidth=1.5, label=words["runs"])
            da = sorted(doc)
            ax.plot(da, [doc[a][doc_key] for a in da], linestyle="--", marker="X", color="black", markersize=7,
                    label=words["document"])
            ax.set_title(words["panel"][metric], fontsize=10)
            ax.set_xlabel("α")
            ax.set_xticks(alphas)
        axes[0].legend(fontsize=8)
        fig.suptitle(words["title"].format(threshold=grid.base["threshold"]), fontsize=11)
        fig.tight_layout()
        return core.finish(fig)


# --- Experiment 5: the threshold (setting A at the document's α) -------------------------------------
def threshold_table(grid: core.Grid, published: dict, lang: str) -> str:
    """Setting A at the document's α for each of the document's thresholds."""
    words = core.labels(lang)
    doc = published["exp5_threshold"]
    rows = [{words["results"]["threshold"]: f"{r['threshold']:.2f}",
             **_result_columns(words, r, grid, doc["setting"], doc["alpha"], r["threshold"])} for r in doc["rows"]]
    return core.markdown_table(pd.DataFrame(rows))


@dataclass
class ThresholdResults:
    """What the text of Experiment 5 says about the threshold (setting A at the document's α)."""

    thresholds: list[float]  # the document's
    doc: dict[float, float]  # threshold -> the document's PPL
    lowest: judge.Lowest  # the threshold with the lowest mean PPL, against every other
    doc_best: judge.Lowest  # the document's threshold with the lowest PPL, against every other
    steps: list[Step]  # neighbouring thresholds, claimed to move as the document's PPL does
    trend: str
    shallow_low: Stat  # Shallow at the lowest and the highest threshold
    shallow_high: Stat
    doc_shallow_diff: float  # the document's Shallow(highest) − Shallow(lowest), in percentage points
    shallow_comparison: judge.Comparison  # Shallow(highest) − Shallow(lowest), claimed the document's sign

    @property
    def shallow_change(self) -> str:
        return direction(self.shallow_comparison)


def threshold_conditions(grid: core.Grid, published: dict) -> dict[float, Condition]:
    doc = published["exp5_threshold"]
    recs = grid.cell(doc["setting"], doc["alpha"])
    return {float(r["threshold"]): Condition(recs, float(r["threshold"])) for r in doc["rows"]}


def threshold_results(grid: core.Grid, published: dict) -> ThresholdResults:
    rows = published["exp5_threshold"]["rows"]
    doc = {float(r["threshold"]): r["ppl"] for r in rows}
    conditions = threshold_conditions(grid, published)
    thresholds = list(conditions)
    steps = document_steps(conditions, doc)
    first, last = conditions[thresholds[0]], conditions[thresholds[-1]]
    doc_shallow = {float(r["threshold"]): r["shallow_pct"] for r in rows}
    doc_shallow_diff = doc_shallow[thresholds[-1]] - doc_shallow[thresholds[0]]
    return ThresholdResults(
        thresholds=thresholds, doc=doc, lowest=lowest(conditions), doc_best=lowest(conditions, min(doc, key=doc.get)),
        steps=steps, trend=trend([s.comparison for s in steps]), shallow_low=first.stat("shallow_frac"),
        shallow_high=last.stat("shallow_frac"), doc_shallow_diff=doc_shallow_diff,
        shallow_comparison=compare(first, last, "shallow_frac", 1 if doc_shallow_diff > 0 else -1))


def threshold_comparisons_table(r: ThresholdResults, lang: str) -> str:
    """Neighbouring thresholds, the document's best threshold against the others, and the change of
    Shallow from the lowest to the highest threshold, paired by seed."""
    name = lambda t: f"τ={t:g}"  # noqa: E731
    lo, hi = r.thresholds[0], r.thresholds[-1]
    return comparisons_table(claim_rows(r.steps, r.doc_best, r.doc, name)
                             + [(f"Shallow({name(hi)}) − Shallow({name(lo)})", r.doc_shallow_diff,
                                 r.shallow_comparison)], lang)


# --- Experiment 5: the document against itself ------------------------------------------------------
@dataclass
class SelfConflict:
    """The document's α row at the document's α against its own threshold table for the same α."""

    alpha: float
    alpha_row: dict  # the α table's row
    operating: float  # the threshold the α row is set beside: the runs' operating threshold if the
    operating_row: dict  # table has it, else the table's highest
    table_min_ppl: float
    match: float | None  # the threshold whose Shallow % equals the α row's, if any
    case: str  # 'matches', or where the α row's PPL lies against the table's: 'below', 'within', 'above'


def self_conflict(published: dict, operating_threshold: float) -> SelfConflict:
    alpha = float(published["exp6_settings"]["alpha"])
    row = next(r for r in published["exp5_alpha"]["rows"] if float(r["alpha"]) == alpha)
    table = published["exp5_threshold"]["rows"]
    by_t = {float(r["threshold"]): r for r in table}
    operating = operating_threshold if operating_threshold in by_t else max(by_t)
    matches = [float(r["threshold"]) for r in table if abs(r["shallow_pct"] - row["shallow_pct"]) < 0.05]
    ppls = [r["ppl"] for r in table]
    if matches:
        case = "matches"
    else:
        case = "below" if row["ppl"] < min(ppls) else "above" if row["ppl"] > max(ppls) else "within"
    return SelfConflict(alpha, row, operating, by_t[operating], min(ppls), matches[0] if matches else None, case)


# --- Experiment 6: setting B against setting A --------------------------------------------------------
def settings_table(grid: core.Grid, published: dict, lang: str) -> str:
    """A and B at the document's α (the runs' own threshold)."""
    words = core.labels(lang)
    doc = published["exp6_settings"]
    rows = [{words["results"]["setting"]: r["setting"],
             **_result_columns(words, r, grid, r["setting"], doc["alpha"], None)} for r in doc["rows"]]
    return core.markdown_table(pd.DataFrame(rows))


def threshold6_table(grid: core.Grid, published: dict, lang: str) -> str:
    words = core.labels(lang)
    doc = published["exp6_threshold"]
    rows = [{words["results"]["setting"]: r["setting"], words["results"]["threshold"]: f"{r['threshold']:.2f}",
             **_result_columns(words, r, grid, r["setting"], doc["alpha"], r["threshold"])} for r in doc["rows"]]
    return core.markdown_table(pd.DataFrame(rows))


@dataclass
class SettingsResults:
    """What the text of Experiment 6 says (settings A and B at the document's α)."""

    alpha: float
    doc_better: str  # the setting the document says has the better PPL
    other: str
    ppl: dict[str, Stat]  # setting -> PPL at the operating threshold
    ppl_comparison: judge.Comparison  # PPL(doc_better) − PPL(other) per seed, claimed negative
    shallow: dict[str, Stat]
    shallow_comparison: judge.Comparison  # Shallow(B) − Shallow(A) per seed, claimed positive (the document's)
    doc_shallow_diff: float  # the document's Shallow B − A, in percentage points
    thresholds: list[float]  # the document's thresholds of its comparison table
    per_threshold: dict[float, judge.Comparison]  # PPL(doc_better) − PPL(other) at each, claimed negative
    doc_per_threshold: dict[float, float]  # the document's PPL(doc_better) − PPL(other) at each
    iso_compute: float  # the doc_better setting's mean Compute at the operating threshold
    iso_ppl: dict[str, Stat]  # setting -> PPL at that compute (interpolated along each run's sweep)
    iso_comparison: judge.Comparison  # PPL(doc_better) − PPL(other) at that compute, claimed negative

    def resolved_count(self, code: str) -> int:
        """At how many of the document's thresholds the per-threshold verdict is `code`."""
        return sum(1 for c in self.per_threshold.values() if c.verdict == code)

    @property
    def doc_better_count(self) -> int:
        """At how many thresholds the document's own PPL is lower for doc_better."""
        return sum(1 for d in self.doc_per_threshold.values() if d < 0)


def settings_results(grid: core.Grid, published: dict) -> SettingsResults:
    alpha = float(published["exp6_settings"]["alpha"])
    better = published["exp6_settings"]["claim_better_ppl"]
    other = B if better == A else A
    cond = {s: Condition(grid.cell(s, alpha)) for s in (A, B)}
    doc_rows = {r["setting"]: r for r in published["exp6_settings"]["rows"]}
    rows6 = published["exp6_threshold"]["rows"]
    thresholds = sorted({float(r["threshold"]) for r in rows6})
    doc_ppl = {(r["setting"], float(r["threshold"])): r["ppl"] for r in rows6}
    per_threshold = {t: compare(Condition(cond[other].records, t), Condition(cond[better].records, t), "ppl", -1)
                     for t in thresholds}
    # equal compute: both settings read at the Compute that `better` has at the operating threshold
    compute = float(np.mean(cond[better].values("compute_frac")))
    at_compute = {s: [core.ppl_at_compute(r, compute) for r in cond[s].records] for s in (A, B)}
    core.paired(cond[other].records, cond[better].records)
    iso = judge.Comparison("ppl", [b - o for o, b in zip(at_compute[other], at_compute[better])], -1)
    return SettingsResults(
        alpha=alpha, doc_better=better, other=other, ppl={s: cond[s].stat("ppl") for s in (A, B)},
        ppl_comparison=compare(cond[other], cond[better], "ppl", -1),
        shallow={s: cond[s].stat("shallow_frac") for s in (A, B)},
        shallow_comparison=compare(cond[A], cond[B], "shallow_frac",
                                   1 if doc_rows[B]["shallow_pct"] > doc_rows[A]["shallow_pct"] else -1),
        doc_shallow_diff=doc_rows[B]["shallow_pct"] - doc_rows[A]["shallow_pct"],
        thresholds=thresholds, per_threshold=per_threshold,
        doc_per_threshold={t: doc_ppl[(better, t)] - doc_ppl[(other, t)] for t in thresholds},
        iso_compute=compute, iso_ppl={s: mean_ci(at_compute[s]) for s in (A, B)}, iso_comparison=iso)


def settings_comparisons_table(r: SettingsResults, published: dict, lang: str) -> str:
    """The operating-threshold comparisons of Experiment 6: PPL and Shallow, paired by seed."""
    doc = {row["setting"]: row for row in published["exp6_settings"]["rows"]}
    return comparisons_table([
        (f"PPL({r.doc_better}) − PPL({r.other})", doc[r.doc_better]["ppl"] - doc[r.other]["ppl"], r.ppl_comparison),
        (f"Shallow({B}) − Shallow({A})", r.doc_shallow_diff, r.shallow_comparison),
    ], lang)


def threshold6_comparisons_table(r: SettingsResults, lang: str) -> str:
    return comparisons_table([(f"PPL({r.doc_better}) − PPL({r.other}), τ={t:g}", r.doc_per_threshold[t],
                               r.per_threshold[t]) for t in r.thresholds], lang)
