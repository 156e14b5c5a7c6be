"""Chapter "Forensics": where the document's numbers come from.

The `forensics` grid runs the document's four configurations at the original code's sizes and rules
on two corpora, WikiText-2 and the original's placeholder text. Every published PPL and Shallow is set
beside the runs' mean on each corpus, and a rule fixed before the runs (`placeholder_verdict`) decides
whether the tables were made on the placeholder text. A second test: the document's results row and
its threshold-table row at the same threshold differ; if the results come from the best epoch and the
sweep from the last epoch's weights, the runs show gaps of the same sign (`gaps`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from scipy import stats as sps

from ease.stats import INCONCLUSIVE, REPRODUCED, Stat, mean_ci, verdict

from companion import core, judge

CORPORA = ("wikitext-2", "placeholder")
SUPPORTED, REJECTED = "supported", "rejected"  # and INCONCLUSIVE: the placeholder hypothesis's verdicts
DOC_KEY = {"ppl": "ppl", "shallow_frac": "shallow_pct", "compute_frac": "compute_pct"}


# --- the document's rows ---------------------------------------------------------------------------
def doc_rows(published: dict, sweep: bool) -> dict[tuple[str, float, float | None], dict]:
    """The document's rows by (setting, α, threshold): its results rows (threshold None: the runs'
    operating point) or, with `sweep`, its threshold-table rows. A row printed twice is kept once."""
    rows: dict[tuple[str, float, float | None], dict] = {}
    if sweep:
        for key in ("exp5_threshold", "exp6_threshold"):
            table = published[key]
            for r in table["rows"]:
                rows.setdefault((r.get("setting", table.get("setting")), float(table["alpha"]),
                                 float(r["threshold"])), r)
    else:
        for r in published["exp5_alpha"]["rows"]:
            rows.setdefault((published["exp5_alpha"]["setting"], float(r["alpha"]), None), r)
        for r in published["exp6_settings"]["rows"]:
            rows.setdefault((r["setting"], float(published["exp6_settings"]["alpha"]), None), r)
    return rows


def doc_value(row: dict, metric: str) -> float:
    """A published value in the runs' units (fractions, not percent)."""
    return row[DOC_KEY[metric]] / (100 if core.PERCENT[metric] else 1)


# --- every published number against the runs --------------------------------------------------------
@dataclass
class Match:
    """One published number against the seeds of each corpus."""

    setting: str
    alpha: float
    threshold: float | None  # None: a results row (the runs' operating point)
    metric: str
    published: float
    runs: dict[str, list[float]]  # corpus -> per-seed values

    def rel_error(self, corpus: str) -> float:
        return abs(float(np.mean(self.runs[corpus])) - self.published) / abs(self.published)

    def inside(self, corpus: str) -> bool:
        return min(self.runs[corpus]) <= self.published <= max(self.runs[corpus])

    @property
    def closer(self) -> str:
        return min(self.runs, key=self.rel_error)


def matches(records: Sequence[dict], published: dict) -> list[Match]:
    """Every published PPL and Shallow against the forensics runs of each corpus: the results rows
    against the best epoch's metrics, the threshold rows against the sweep (of the last epoch's
    weights, as the original swept)."""
    out = []
    for sweep in (False, True):
        for (setting, alpha, t), row in doc_rows(published, sweep).items():
            recs = {c: core.select(records, setting=setting, alpha=alpha, corpus=c) for c in CORPORA}
            for metric in ("ppl", "shallow_frac"):
                out.append(Match(setting, alpha, t, metric, doc_value(row, metric),
                                 {c: [core.value(r, metric, t) for r in recs[c]] for c in CORPORA}))
    return out


def placeholder_verdict(found: Sequence[Match]) -> str:
    """The rule, stated before the numbers: the hypothesis is supported when the placeholder runs
    are closer than the WikiText-2 runs to at least two thirds of the published numbers; rejected
    when WikiText-2 runs are closer to at least two thirds; inconclusive otherwise."""
    share = sum(m.closer == "placeholder" for m in found) / len(found)
    if share >= 2 / 3:
        return SUPPORTED
    if share <= 1 / 3:
        return REJECTED
    return INCONCLUSIVE


# --- setting by setting: could the published numbers be draws of these runs? ---------------------------
FIT_LEVEL = 0.05


@dataclass
class Fit:
    """One setting's published numbers against one corpus's seed ranges.

    If a published number were one more run of the same distribution as the n seeds, it would fall
    inside their range (min to max) with probability (n − 1)/(n + 1) (exchangeability). `p` is the
    binomial chance of seeing at most `inside` of `total` numbers inside under that hypothesis; the
    setting's tables do not fit the corpus when p < FIT_LEVEL. Numbers of one table come from one run
    and are not independent, so p is optimistic about the fit; a misfit is all the stronger for it.
    """

    setting: str
    corpus: str
    inside: int
    total: int
    seeds: int

    @property
    def chance(self) -> float:
        return (self.seeds - 1) / (self.seeds + 1)

    @property
    def p(self) -> float:
        return float(sps.binom.cdf(self.inside, self.total, self.chance))

    @property
    def fits(self) -> bool:
        return self.p >= FIT_LEVEL


def fits(found: Sequence[Match]) -> list[Fit]:
    out = []
    for setting in ("A", "B"):
        ms = [m for m in found if m.setting == setting]
        for c in CORPORA:
            out.append(Fit(setting, c, sum(m.inside(c) for m in ms), len(ms), len(ms[0].runs[c])))
    return out


def setting_case(rows: Sequence[Fit], setting: str) -> str:
    """Which corpus the setting's published numbers fit: "placeholder", "wikitext-2", "both" or "neither"."""
    fitting = [r.corpus for r in rows if r.setting == setting and r.fits]
    return {0: "neither", 2: "both"}.get(len(fitting)) or fitting[0]


def fit_table(rows: Sequence[Fit], lang: str) -> str:
    words = core.labels(lang)["forensics"]
    h = words["fit"]
    return core.markdown_table(pd.DataFrame([
        {h["setting"]: r.setting, h["corpus"]: words["corpus"][r.corpus], h["inside"]: f"{r.inside}/{r.total}",
         h["expected"]: f"{r.chance * r.total:.1f}", h["p"]: f"{r.p:.3f}" if r.p >= 0.001 else "< 0.001",
         h["fits"]: h["yes"] if r.fits else h["no"]} for r in rows]))


# --- the gap between the document's results row and its sweep row ----------------------------------
@dataclass
class Gap:
    setting: str
    metric: str
    doc: float  # the document's sweep row minus its results row
    runs: Stat  # per seed: the run's sweep (last epoch's weights) minus its best epoch, at the same threshold

    @property
    def same_sign(self) -> bool:
        """The runs' gap has the document's sign, with an interval that excludes zero."""
        return verdict(self.runs, 1 if self.doc > 0 else -1) == REPRODUCED


def gaps(records: Sequence[dict], published: dict, corpus: str) -> list[Gap]:
    """Per setting at Experiment 6's α and per metric, on one corpus."""
    alpha = float(published["exp6_settings"]["alpha"])
    results_rows, sweep_rows = doc_rows(published, sweep=False), doc_rows(published, sweep=True)
    out = []
    for setting in ("A", "B"):
        recs = core.select(records, setting=setting, alpha=alpha, corpus=corpus)
        t = recs[0]["config"]["threshold"]
        for metric in ("ppl", "shallow_frac"):
            diffs = [core.value(r, metric, t) - core.value(r, metric) for r in recs]
            doc = doc_value(sweep_rows[(setting, alpha, t)], metric) - doc_value(results_rows[(setting, alpha, None)],
                                                                                metric)
            out.append(Gap(setting, metric, doc, mean_ci(diffs)))
    return out


# --- what the page shows -----------------------------------------------------------------------
@dataclass
class Forensics:
    records: list[dict]
    analyses: dict[str, dict]
    published: dict
    matches: list[Match]
    gaps: dict[str, list[Gap]]  # corpus -> gaps

    @property
    def verdict(self) -> str:
        return placeholder_verdict(self.matches)

    @property
    def fits(self) -> list[Fit]:
        return fits(self.matches)

    def vocab(self, corpus: str) -> list[int]:
        return sorted({self.analyses[r["run_id"]]["vocab_size"] for r in core.select(self.records, corpus=corpus)})


def load(results=None) -> Forensics:
    records = core.grid_records("forensics", results)
    published = core.load_published()
    analyses = core.grid_analyses(records, results, held_out=False)  # the chapter reads validation parts only
    return Forensics(records, analyses, published, matches(records, published),
                     {c: gaps(records, published, c) for c in CORPORA})


def texts(f: Forensics, lang: str) -> dict[str, str]:
    """The page's glued numbers and verdict word (fx_* keys)."""
    base = f.records[0]["config"]
    closer = sum(m.closer == "placeholder" for m in f.matches)
    median = {c: float(np.median([m.rel_error(c) for m in f.matches])) for c in CORPORA}
    word = core.labels(lang)["forensics"]["verdict"][f.verdict]
    return {
        "fx_seeds": str(len({r["config"]["seed"] for r in f.records})),
        "fx_runs": str(len(f.records)),
        "fx_train_chars": f"{base['train_chars']:,}",
        "fx_val_chars": f"{base['val_chars']:,}",
        "fx_n_numbers": str(len(f.matches)),
        "fx_closer_placeholder": str(closer),
        "fx_closer_wikitext": str(len(f.matches) - closer),
        "fx_inside_placeholder": str(sum(m.inside("placeholder") for m in f.matches)),
        "fx_inside_wikitext": str(sum(m.inside("wikitext-2") for m in f.matches)),
        "fx_median_placeholder": f"{100 * median['placeholder']:.0f}%",
        "fx_median_wikitext": f"{100 * median['wikitext-2']:.0f}%",
        "fx_vocab_wikitext": ", ".join(map(str, f.vocab("wikitext-2"))),
        "fx_vocab_placeholder": ", ".join(map(str, f.vocab("placeholder"))),
        "fx_verdict": word if f.verdict == INCONCLUSIVE else f"**{word}**",
        "fx_gaps_placeholder": str(sum(g.same_sign for g in f.gaps["placeholder"])),
        "fx_gaps_wikitext": str(sum(g.same_sign for g in f.gaps["wikitext-2"])),
        "fx_gaps_n": str(len(f.gaps["placeholder"])),
        "fx_fit_level": f"{FIT_LEVEL:g}",
        "fx_fit_chance": f"{f.fits[0].chance:.0%}",
        # the document's sweep PPLs against guessing uniformly over the placeholder's characters
        "fx_uniform": ", ".join(map(str, f.vocab("placeholder"))),
        "fx_above_uniform": str(sum(m.published > min(f.vocab("placeholder")) for m in f.matches
                                    if m.metric == "ppl" and m.threshold is not None)),
        "fx_sweep_ppls": str(sum(m.metric == "ppl" and m.threshold is not None for m in f.matches)),
    }


def rows_table(f: Forensics, lang: str, sweep: bool) -> str:
    """The document's results rows (or, with `sweep`, its threshold rows) beside each corpus's runs:
    the best epoch at the operating threshold, or the sweep of the last epoch's weights."""
    words = core.labels(lang)["forensics"]
    h = words["table"]
    rows = []
    for (setting, alpha, t), doc in doc_rows(f.published, sweep).items():
        row = {h["run"]: core.cell_name((setting, alpha))}
        if sweep:
            row["τ"] = f"{t:.2f}"
        for metric, title in (("ppl", "PPL"), ("shallow_frac", "Shallow")):
            row[h["doc_column"].format(metric=title)] = core.fmt_value(doc_value(doc, metric), metric)
            for c in CORPORA:
                vals = [core.value(r, metric, t) for r in core.select(f.records, setting=setting, alpha=alpha, corpus=c)]
                row[h["corpus_column"].format(metric=title, corpus=words["corpus"][c])] = \
                    core.fmt_stat(mean_ci(vals), metric)
        rows.append(row)
    return core.markdown_table(pd.DataFrame(rows))


def evidence_table(f: Forensics, lang: str) -> str:
    """Per corpus: runs, vocabulary size, best epochs, the last layer's PPL and the routed PPL (ranges)."""
    words = core.labels(lang)["forensics"]
    h = words["evidence"]
    rows = []
    for c in CORPORA:
        recs = core.select(f.records, corpus=c)
        best = [r["metrics"]["best_epoch"] for r in recs]
        deep = [r["metrics"]["ppl_deep"] for r in recs]
        routed = [r["metrics"]["ppl"] for r in recs]
        rows.append({h["corpus"]: words["corpus"][c], h["runs"]: str(len(recs)),
                     h["vocab"]: ", ".join(map(str, f.vocab(c))),
                     h["best_epoch"]: f"{min(best)}–{max(best)}",
                     h["deep_ppl"]: f"{min(deep):.2f}–{max(deep):.2f}",
                     h["ppl"].format(threshold=recs[0]["config"]["threshold"]): f"{min(routed):.2f}–{max(routed):.2f}"})
    return core.markdown_table(pd.DataFrame(rows))


def gaps_table(rows: Sequence[Gap], lang: str) -> str:
    words = core.labels(lang)
    h = words["forensics"]["gaps"]
    points = words["judge"]["points"]
    out = []
    for g in rows:
        percent = core.PERCENT[g.metric]
        doc = f"{(100 if percent else 1) * g.doc:+.2f}" + (points if percent else "")
        out.append({h["setting"]: g.setting, h["metric"]: "PPL" if g.metric == "ppl" else "Shallow",
                    h["doc"]: doc, h["runs"]: judge.fmt_diff(g.runs, g.metric, lang),
                    h["same_sign"]: h["yes"] if g.same_sign else h["no"]})
    return core.markdown_table(pd.DataFrame(out))


def figure(f: Forensics, lang: str):
    """Each published number against the runs' mean on each corpus (on the diagonal: a match)."""
    import matplotlib.pyplot as plt

    words = core.labels(lang)["forensics"]["figure"]
    colors = {"wikitext-2": "#08519c", "placeholder": "#d94801"}
    with core.figure_style(lang):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
        for ax, metric in zip(axes, ("ppl", "shallow_frac")):
            ms = [m for m in f.matches if m.metric == metric]
            scale = 100 if core.PERCENT[metric] else 1
            for c in CORPORA:
                ax.scatter([scale * m.published for m in ms], [scale * float(np.mean(m.runs[c])) for m in ms],
                           color=colors[c], s=28, alpha=0.85, label=words["corpus"][c], edgecolor="white",
                           linewidth=0.5)
            values = [scale * m.published for m in ms] + [scale * v for m in ms for vs in m.runs.values() for v in vs]
            ax.plot([min(values), max(values)], [min(values), max(values)], color="#888", linestyle="--",
                    linewidth=1, label=words["diagonal"])
            if metric == "ppl":
                core.plain_log_scale(ax, "x")
                core.plain_log_scale(ax, "y")
            title = "PPL" if metric == "ppl" else words["shallow"]
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(words["x"].format(metric=title))
            ax.set_ylabel(words["y"].format(metric=title))
        axes[0].legend(fontsize=8)
        fig.suptitle(words["title"], fontsize=11)
        fig.tight_layout()
        return core.finish(fig)
