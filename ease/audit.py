"""The audit of the document: what its numbers are, which of its claims hold, and what lies beyond.

Everything the chapters "Forensics", "Claims" and "Beyond the document" show is computed here
from the records (and checkpoint analyses) of the pipeline's grids:

- `forensics`: the document's grid at the original code's sizes and rules, on WikiText-2 and on
  the original's placeholder text, set beside the published tables;
- `exp5-6` (five seeds) and `regimes`: the document's four claims, each decided by a rule stated
  before any number (`ease.stats.verdict`) on paired per-seed differences;
- `dense`: standard 1-, 2-, 3-layer models, the equal-compute baseline for early exit;
- `alpha`: α from 0 to 1 for both settings;
- analyses (`ease.analysis`): other confidence measures, the oracle and real early exit.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ease.analysis import load_analysis
from ease.config import DOC_THRESHOLDS, RunConfig
from ease.exits import MEASURES
from ease.report import (PERCENT, _color, _finish, _pick, figure_style, fmt_stat, fmt_value, markdown_table,
                         results_dir, sweep_row)
from ease.results import find_record
from ease.stats import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Stat, combine, holds_count, mean_ci,
                        paired_ci, pareto_front, verdict)

DOC_CELLS = (("A", 0.3), ("A", 0.5), ("A", 0.7), ("B", 0.7))
CORPORA = ("wikitext-2", "placeholder")


# --- records -----------------------------------------------------------------------------------
def grid_records(name: str, results: str | Path | None = None) -> list[dict]:
    """The records of every config of a builtin grid; a clear error naming what is missing."""
    from ease.pipeline import expand_grid, load_grid

    results = Path(results) if results is not None else results_dir()
    configs = expand_grid(load_grid(name))
    records = [find_record(c, results) for c in configs]
    missing = [c.run_id for c, r in zip(configs, records) if r is None]
    if missing:
        raise LookupError(f"{len(missing)} of {len(configs)} runs of grid {name!r} have no record in "
                          f"{results / 'runs'} (e.g. {missing[:3]}). Run them: python -m ease.pipeline --grid {name}")
    for record in records:  # read through RunConfig so older records show today's fields
        record["config"] = RunConfig.from_dict(record["config"]).to_dict()
    return records


def grid_analyses(records: Sequence[dict], results: str | Path | None = None) -> dict[str, dict]:
    """The checkpoint analysis of every record, by run id; a clear error when one is missing."""
    results = Path(results) if results is not None else results_dir()
    out = {}
    for record in records:
        analysis = load_analysis(RunConfig.from_dict(record["config"]), results)
        if analysis is None:
            raise LookupError(f"run {record['run_id']} has no current analysis in {results / 'analysis'}; "
                              "compute it with python -m ease.pipeline --book (it needs the run's checkpoint)")
        out[record["run_id"]] = analysis
    return out


def select(records: Sequence[dict], **fields) -> list[dict]:
    """The records whose config has all these field values, in seed order."""
    def match(record: dict) -> bool:
        c = record["config"]
        return all((c[k] is None and v is None) or (c[k] is not None and v is not None and
                                                    (c[k] == v or (isinstance(v, float) and math.isclose(c[k], v))))
                   for k, v in fields.items())
    chosen = sorted((r for r in records if match(r)), key=lambda r: r["config"]["seed"])
    if not chosen:
        raise LookupError(f"no records with {fields}")
    return chosen


def value(record: dict, metric: str, threshold: float | None = None) -> float:
    """A record's metric at its operating threshold (None) or a sweep entry's at `threshold`."""
    return float(record["metrics"][metric] if threshold is None else sweep_row(record, threshold)[metric])


def paired(a: Sequence[dict], b: Sequence[dict]) -> None:
    seeds_a, seeds_b = [r["config"]["seed"] for r in a], [r["config"]["seed"] for r in b]
    if seeds_a != seeds_b:
        raise ValueError(f"paired comparison needs the same seeds on both sides, got {seeds_a} and {seeds_b}")


# --- claims ------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """One paired comparison: per-seed differences (second minus first) and the claimed sign."""

    label: str
    metric: str
    diffs: list[float]
    sign: int

    @property
    def stat(self) -> Stat:
        return mean_ci(self.diffs)

    @property
    def verdict(self) -> str:
        return verdict(self.stat, self.sign)

    @property
    def holds(self) -> int:
        return holds_count(self.diffs, self.sign)


@dataclass
class Claim:
    number: int
    text: str
    comparisons: list[Comparison]

    @property
    def verdict(self) -> str:
        return combine(c.verdict for c in self.comparisons)


def compare(first: Sequence[dict], second: Sequence[dict], metric: str, sign: int, label: str,
            threshold_first: float | None = None, threshold_second: float | None = None) -> Comparison:
    """second − first per seed (paired), claimed to have `sign`."""
    paired(first, second)
    diffs = [value(s, metric, threshold_second) - value(f, metric, threshold_first) for f, s in zip(first, second)]
    return Comparison(label, metric, diffs, sign)


def evaluate_claims(records: Sequence[dict], lang: str) -> list[Claim]:
    """The document's four claims on a set of records holding its four configurations (same seeds)."""
    cell = {c: select(records, setting=c[0], alpha=c[1]) for c in DOC_CELLS}
    a3, a5, a7, b7 = (cell[c] for c in DOC_CELLS)
    say = lambda en, ja: _pick(lang, en, ja)  # noqa: E731
    claims = [
        Claim(1, say("Setting A has better PPL than setting B at α = 0.7",
                     "α = 0.7 で設定Aは設定Bより PPL が良い"),
              [compare(b7, a7, "ppl", -1, say("PPL(A) − PPL(B)", "PPL(A) − PPL(B)"))]),
        Claim(2, say("α = 0.7 gives the best PPL among 0.3, 0.5 and 0.7 (setting A)",
                     "α ∈ {0.3, 0.5, 0.7} のうち α = 0.7 の PPL が最良（設定A）"),
              [compare(a3, a7, "ppl", -1, "PPL(α=0.7) − PPL(α=0.3)"),
               compare(a5, a7, "ppl", -1, "PPL(α=0.7) − PPL(α=0.5)")]),
    ]
    steps = []
    for lo, hi in zip(DOC_THRESHOLDS, DOC_THRESHOLDS[1:]):
        steps.append(compare(a7, a7, "ppl", -1, f"PPL(τ={hi:g}) − PPL(τ={lo:g})", lo, hi))
        steps.append(compare(a7, a7, "compute_frac", +1, f"Compute(τ={hi:g}) − Compute(τ={lo:g})", lo, hi))
    claims.append(Claim(3, say("A higher threshold gives better PPL at higher Compute% (setting A, α = 0.7, "
                               "the document's thresholds)",
                               "閾値を上げると Compute% が増え PPL が良くなる（設定A, α = 0.7, 文書の閾値）"), steps))
    claims.append(Claim(4, say("Setting B exits more tokens early (higher Shallow%) than A at α = 0.7",
                               "α = 0.7 で設定Bは設定Aより多くのトークンが早期退出する（Shallow% が高い）"),
                        [compare(a7, b7, "shallow_frac", +1, "Shallow(B) − Shallow(A)")]))
    return claims


def verdict_label(v: str, lang: str) -> str:
    return {REPRODUCED: _pick(lang, "**reproduced**", "**再現された**"),
            NOT_REPRODUCED: _pick(lang, "**not reproduced**", "**再現されなかった**"),
            INCONCLUSIVE: _pick(lang, "inconclusive", "判定不能")}[v]


def fmt_diff(stat: Stat, metric: str) -> str:
    scale, unit = (100, " pp") if PERCENT[metric] else (1, "")
    digits = 2 if metric == "ppl" else 1
    if stat.half is None:
        return f"{scale * stat.mean:+.{digits}f}{unit}"
    return (f"{scale * stat.mean:+.{digits}f}{unit} [{scale * stat.lo:+.{digits}f}, "
            f"{scale * stat.hi:+.{digits}f}]")


def claims_table(claims: Sequence[Claim], lang: str) -> str:
    rows = []
    for claim in claims:
        for comp in claim.comparisons:
            rows.append({"#": str(claim.number),
                         _pick(lang, "comparison (paired by seed)", "比較（シードで対応）"): comp.label,
                         _pick(lang, "claimed sign", "主張の符号"): "< 0" if comp.sign < 0 else "> 0",
                         _pick(lang, "mean difference [95% CI]", "平均差 [95% 信頼区間]"): fmt_diff(comp.stat, comp.metric),
                         _pick(lang, "seeds where it holds", "成り立つシード数"): f"{comp.holds}/{len(comp.diffs)}",
                         _pick(lang, "verdict", "判定"): verdict_label(comp.verdict, lang)})
    return markdown_table(pd.DataFrame(rows))


def claims_summary_table(by_regime: dict[str, list[Claim]], lang: str) -> str:
    """One row per claim, one verdict column per training regime."""
    names = list(by_regime)
    rows = []
    for i, claim in enumerate(by_regime[names[0]]):
        row = {"#": str(claim.number), _pick(lang, "claim", "主張"): claim.text}
        for name in names:
            row[name] = verdict_label(by_regime[name][i].verdict, lang)
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))


# --- forensics ---------------------------------------------------------------------------------
def _doc_results_rows(published: dict) -> dict[tuple[str, float], dict]:
    rows = {("A", float(r["alpha"])): r for r in published["exp5_alpha"]["rows"]}
    for r in published["exp6_settings"]["rows"]:
        rows.setdefault((r["setting"], float(published["exp6_settings"]["alpha"])), r)
    return rows


def _doc_sweep_rows(published: dict) -> dict[tuple[str, float, float], dict]:
    rows = {("A", float(published["exp5_threshold"]["alpha"]), float(r["threshold"])): r
            for r in published["exp5_threshold"]["rows"]}
    for r in published["exp6_threshold"]["rows"]:
        rows.setdefault((r["setting"], float(published["exp6_threshold"]["alpha"]), float(r["threshold"])), r)
    return rows


DOC_KEY = {"ppl": "ppl", "shallow_frac": "shallow_pct", "compute_frac": "compute_pct"}


def _doc_value(row: dict, metric: str) -> float:
    return row[DOC_KEY[metric]] / (100 if PERCENT[metric] else 1)


@dataclass
class Match:
    """One published number against the seeds of each corpus."""

    what: str
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


def forensic_matches(records: Sequence[dict], published: dict) -> list[Match]:
    """Every published PPL and Shallow% against the forensics runs of each corpus.

    The results tables are compared with the best epoch's metrics at the operating threshold; the
    threshold tables with the sweep (of the last epoch's weights, as the original swept)."""
    out = []
    for (setting, alpha), row in _doc_results_rows(published).items():
        recs = {c: select(records, setting=setting, alpha=alpha, corpus=c) for c in CORPORA}
        for metric in ("ppl", "shallow_frac"):
            out.append(Match(f"{setting} α={alpha:g}", metric, _doc_value(row, metric),
                             {c: [value(r, metric) for r in recs[c]] for c in CORPORA}))
    for (setting, alpha, t), row in _doc_sweep_rows(published).items():
        recs = {c: select(records, setting=setting, alpha=alpha, corpus=c) for c in CORPORA}
        for metric in ("ppl", "shallow_frac"):
            out.append(Match(f"{setting} α={alpha:g} τ={t:g}", metric, _doc_value(row, metric),
                             {c: [value(r, metric, t) for r in recs[c]] for c in CORPORA}))
    return out


SUPPORTED, REJECTED = "supported", "rejected"


def placeholder_verdict(matches: Sequence[Match]) -> str:
    """The rule, stated before the numbers: the hypothesis is supported when the placeholder runs
    are closer than the WikiText-2 runs to at least two thirds of the published numbers; rejected
    when WikiText-2 runs are closer to at least two thirds; inconclusive otherwise."""
    share = sum(m.closer == "placeholder" for m in matches) / len(matches)
    if share >= 2 / 3:
        return SUPPORTED
    if share <= 1 / 3:
        return REJECTED
    return INCONCLUSIVE


def forensic_results_table(records: Sequence[dict], published: dict, lang: str) -> str:
    """The document's results rows beside the forensics runs on each corpus (best epoch, τ = 0.95)."""
    corpus_name = {"wikitext-2": "WikiText-2", "placeholder": _pick(lang, "placeholder", "代替文")}
    rows = []
    for (setting, alpha), doc in _doc_results_rows(published).items():
        row = {_pick(lang, "run", "設定"): f"{setting}, α={alpha:g}"}
        for metric, title in (("ppl", "PPL"), ("shallow_frac", "Shallow")):
            row[f"{title} {_pick(lang, 'doc', '文書')}"] = fmt_value(_doc_value(doc, metric), metric)
            for c in CORPORA:
                vals = [value(r, metric) for r in select(records, setting=setting, alpha=alpha, corpus=c)]
                row[f"{title} {corpus_name[c]}"] = fmt_stat(mean_ci(vals), metric)
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def forensic_sweep_table(records: Sequence[dict], published: dict, lang: str) -> str:
    """The document's threshold rows beside each corpus's sweep of the last epoch's weights."""
    corpus_name = {"wikitext-2": "WikiText-2", "placeholder": _pick(lang, "placeholder", "代替文")}
    rows = []
    for (setting, alpha, t), doc in _doc_sweep_rows(published).items():
        row = {_pick(lang, "run", "設定"): f"{setting}, α={alpha:g}", "τ": f"{t:.2f}"}
        for metric, title in (("ppl", "PPL"), ("shallow_frac", "Shallow")):
            row[f"{title} {_pick(lang, 'doc', '文書')}"] = fmt_value(_doc_value(doc, metric), metric)
            for c in CORPORA:
                vals = [value(r, metric, t) for r in select(records, setting=setting, alpha=alpha, corpus=c)]
                row[f"{title} {corpus_name[c]}"] = fmt_stat(mean_ci(vals), metric)
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def forensic_evidence_table(records: Sequence[dict], analyses: dict[str, dict], lang: str) -> str:
    """Per corpus: vocabulary size, epochs, the last layer's PPL, and the published numbers' fit."""
    rows = []
    for c in CORPORA:
        recs = select(records, corpus=c)
        vocab = sorted({analyses[r["run_id"]]["vocab_size"] for r in recs})
        best = [r["metrics"]["best_epoch"] for r in recs]
        rows.append({
            _pick(lang, "corpus", "コーパス"): "WikiText-2" if c == "wikitext-2" else _pick(lang, "placeholder", "代替文"),
            _pick(lang, "runs", "実行数"): str(len(recs)),
            _pick(lang, "vocabulary", "語彙サイズ"): ", ".join(map(str, vocab)),
            _pick(lang, "best epoch (range)", "最良エポック（範囲）"): f"{min(best)}–{max(best)}",
            _pick(lang, "L3 PPL (range)", "L3 の PPL（範囲）"):
                f"{min(r['metrics']['ppl_deep'] for r in recs):.2f}–{max(r['metrics']['ppl_deep'] for r in recs):.2f}",
            _pick(lang, "PPL at τ=0.95 (range)", "τ=0.95 の PPL（範囲）"):
                f"{min(r['metrics']['ppl'] for r in recs):.2f}–{max(r['metrics']['ppl'] for r in recs):.2f}",
        })
    return markdown_table(pd.DataFrame(rows))


def inconsistency(records: Sequence[dict], published: dict, corpus: str) -> list[dict]:
    """The gap between the sweep's row at the operating threshold (last epoch's weights) and the
    results row (best epoch), per setting at α = 0.7: ours paired by seed, and the document's."""
    alpha = float(published["exp6_settings"]["alpha"])
    results_rows, sweep_rows = _doc_results_rows(published), _doc_sweep_rows(published)
    out = []
    for setting in ("A", "B"):
        recs = select(records, setting=setting, alpha=alpha, corpus=corpus)
        t = recs[0]["config"]["threshold"]
        for metric in ("ppl", "shallow_frac"):
            diffs = [value(r, metric, t) - value(r, metric) for r in recs]
            doc = _doc_value(sweep_rows[(setting, alpha, t)], metric) - _doc_value(results_rows[(setting, alpha)], metric)
            out.append({"setting": setting, "metric": metric, "stat": mean_ci(diffs), "doc": doc,
                        "same_sign": verdict(mean_ci(diffs), 1 if doc > 0 else -1) == REPRODUCED})
    return out


def inconsistency_table(rows: Sequence[dict], lang: str) -> str:
    out = []
    for r in rows:
        m = r["metric"]
        scale, unit = (100, " pp") if PERCENT[m] else (1, "")
        out.append({_pick(lang, "setting", "設定"): r["setting"], _pick(lang, "metric", "指標"): "PPL" if m == "ppl" else "Shallow",
                    _pick(lang, "document: sweep row − results row", "文書: スイープ行 − 結果行"):
                        f"{scale * r['doc']:+.2f}{unit}",
                    _pick(lang, "runs: last-epoch sweep − best epoch [95% CI]", "実行: 最終エポックのスイープ − 最良エポック [95% CI]"):
                        fmt_diff(r["stat"], m),
                    _pick(lang, "same sign, CI excludes 0", "同符号かつ CI が 0 を含まない"):
                        _pick(lang, "yes", "はい") if r["same_sign"] else _pick(lang, "no", "いいえ")})
    return markdown_table(pd.DataFrame(out))


# --- equal compute: dense baselines ------------------------------------------------------------
def sweep_curve(recs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per threshold: mean Compute fraction, mean PPL, and the per-seed PPL matrix [seed, threshold]."""
    thresholds = [row["threshold"] for row in recs[0]["sweep"]]
    comp = np.array([[sweep_row(r, t)["compute_frac"] for t in thresholds] for r in recs])
    ppl = np.array([[sweep_row(r, t)["ppl"] for t in thresholds] for r in recs])
    return comp.mean(axis=0), ppl.mean(axis=0), ppl


def ppl_at_compute(record: dict, compute: float) -> float:
    """A run's PPL at a given Compute fraction, interpolated along its sweep (NaN outside it)."""
    pts = sorted((row["compute_frac"], row["ppl"]) for row in record["sweep"])
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if compute < xs[0] - 1e-12 or compute > xs[-1] + 1e-12:
        return float("nan")
    return float(np.interp(compute, xs, ys))


def dense_ppl(dense: Sequence[dict], n_layers: int) -> list[dict]:
    return select(dense, n_layers=n_layers)


def equal_compute(exp: Sequence[dict], dense: Sequence[dict], lang: str) -> list[dict]:
    """At each smaller dense model's compute: every early-exit configuration's PPL there, paired by
    seed with the dense model's (last-layer PPL), and the verdict on "early exit beats it"."""
    full = max(r["config"]["n_layers"] for r in dense)
    out = []
    for n in sorted({r["config"]["n_layers"] for r in dense}):
        d = dense_ppl(dense, n)
        compute = n / full
        for cell in DOC_CELLS:
            recs = select(exp, setting=cell[0], alpha=cell[1])
            if n == full:  # full compute: nobody exits, the early-exit model's last layer
                ee = [r["metrics"]["ppl_deep"] for r in recs]
            else:
                ee = [ppl_at_compute(r, compute) for r in recs]
                if any(math.isnan(e) for e in ee):  # a sweep that never reaches this compute
                    continue
            paired(d, recs)
            diffs = [e - r["metrics"]["ppl_deep"] for e, r in zip(ee, d)]
            stat = mean_ci(diffs)
            out.append({"n_layers": n, "compute": compute, "cell": cell,
                        "dense": mean_ci([r["metrics"]["ppl_deep"] for r in d]), "early_exit": mean_ci(ee),
                        "diff": stat, "verdict": verdict(stat, -1), "holds": holds_count(diffs, -1)})
    return out


def equal_compute_table(rows: Sequence[dict], lang: str) -> str:
    out = []
    for r in rows:
        out.append({"Compute": f"{100 * r['compute']:.1f}%",
                    _pick(lang, "dense model", "密なモデル"): _pick(lang, f"{r['n_layers']} layer(s)", f"{r['n_layers']} 層"),
                    _pick(lang, "dense PPL", "密なモデルの PPL"): fmt_stat(r["dense"], "ppl"),
                    _pick(lang, "early exit", "早期退出"): f"{r['cell'][0]}, α={r['cell'][1]:g}",
                    _pick(lang, "early-exit PPL", "早期退出の PPL"): fmt_stat(r["early_exit"], "ppl"),
                    _pick(lang, "early exit − dense [95% CI]", "早期退出 − 密 [95% CI]"): fmt_diff(r["diff"], "ppl"),
                    _pick(lang, "early exit better?", "早期退出が優れるか"):
                        {REPRODUCED: _pick(lang, "yes", "はい"), NOT_REPRODUCED: _pick(lang, "no: worse", "いいえ（劣る）"),
                         INCONCLUSIVE: _pick(lang, "undecided", "判定不能")}[r["verdict"]]})
    return markdown_table(pd.DataFrame(out))


def fig_equal_compute(exp: Sequence[dict], dense: Sequence[dict], lang: str):
    """PPL against Compute%: every early-exit sweep (mean over seeds), the dense models, the Pareto front."""
    import matplotlib.pyplot as plt

    full = max(r["config"]["n_layers"] for r in dense)
    points = []  # (compute %, ppl, label)
    with figure_style(lang):
        fig, ax = plt.subplots(figsize=(7.8, 4.8))
        for i, cell in enumerate(DOC_CELLS):
            comp, ppl, _ = sweep_curve(select(exp, setting=cell[0], alpha=cell[1]))
            order = np.argsort(comp)
            ax.plot(100 * comp[order], ppl[order], color=_color(cell, i), linewidth=1.8, marker=".", markersize=4,
                    label=_pick(lang, f"early exit: setting {cell[0]}, α={cell[1]:g}",
                                f"早期退出: 設定{cell[0]}, α={cell[1]:g}"))
            points += [(100 * c, p) for c, p in zip(comp, ppl)]
        for n in sorted({r["config"]["n_layers"] for r in dense}):
            st = mean_ci([r["metrics"]["ppl_deep"] for r in dense_ppl(dense, n)])
            x = 100 * n / full
            ax.errorbar([x], [st.mean], yerr=[[st.mean - st.lo], [st.hi - st.mean]], fmt="s", color="black",
                        markersize=7, capsize=4, zorder=4,
                        label=_pick(lang, "dense models (1, 2, 3 layers; mean ± 95% CI)",
                                    "密なモデル（1・2・3 層、平均 ± 95% CI）") if n == 1 else None)
            ax.annotate(_pick(lang, f"{n}L dense", f"密 {n} 層"), (x, st.mean), textcoords="offset points",
                        xytext=(6, 6), fontsize=8)
            points.append((x, st.mean))
        front = pareto_front([p[0] for p in points], [p[1] for p in points])
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#2ca02c", linewidth=3,
                alpha=0.45, zorder=1, label=_pick(lang, "Pareto front (lower compute and PPL)",
                                                   "パレートフロント（計算量・PPL とも低い）"))
        ax.set_yscale("log")
        ax.set_xlabel(_pick(lang, "Compute % (layers used / 3)", "Compute %（使った層数 / 3）"))
        ax.set_ylabel(_pick(lang, "PPL (log scale)", "PPL（対数軸）"))
        ax.legend(fontsize=7.5, loc="upper right")
        ax.set_title(_pick(lang, "Early exit against smaller models at equal compute",
                           "同じ計算量での早期退出と小さいモデル"), fontsize=10)
        fig.tight_layout()
        return _finish(fig)


# --- other confidence measures and the oracle --------------------------------------------------
MEASURE_NAMES = {"max_prob": ("max probability (document)", "最大確率（文書の規則）"),
                 "entropy": ("entropy", "エントロピー"), "margin": ("top-1 − top-2 margin", "上位2確率の差"),
                 "cosine": ("cosine(L1, L3 states)", "L1・L3 状態のコサイン"),
                 "oracle": ("oracle (best possible)", "オラクル（理論上の最良）")}


# Measures a deployed model can use: the cosine needs the last layer's state, so it is a diagnostic.
USABLE_MEASURES = tuple(name for name in MEASURES if name != "cosine")


def matched_curves(recs: Sequence[dict], analyses: dict[str, dict]) -> tuple[list[float], dict[str, np.ndarray]]:
    """Shallow fractions and, per measure (and the oracle), the per-seed PPL matrix [seed, fraction]."""
    first = analyses[recs[0]["run_id"]]
    fractions = first["shallow_fractions"]
    curves = {name: np.array([analyses[r["run_id"]]["matched"][name] for r in recs])
              for name in [*MEASURES, "oracle"]}
    return fractions, curves


def measures_table(exp: Sequence[dict], analyses: dict[str, dict], lang: str,
                   at: Sequence[float] = (0.1, 0.25, 0.5)) -> str:
    rows = []
    for cell in (("A", 0.7), ("B", 0.7)):
        recs = select(exp, setting=cell[0], alpha=cell[1])
        fractions, curves = matched_curves(recs, analyses)
        for name, curve in curves.items():
            row = {_pick(lang, "run", "設定"): f"{cell[0]}, α={cell[1]:g}",
                   _pick(lang, "exit measure", "退出の尺度"): _pick(lang, *MEASURE_NAMES[name])}
            for f in at:
                j = min(range(len(fractions)), key=lambda k: abs(fractions[k] - f))
                row[f"PPL @ Shallow {100 * f:.0f}%"] = fmt_stat(mean_ci(curve[:, j]), "ppl")
            rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def fig_measures(exp: Sequence[dict], analyses: dict[str, dict], lang: str):
    import matplotlib.pyplot as plt

    styles = {"max_prob": ("#08519c", "-"), "entropy": ("#6a51a3", "--"), "margin": ("#238b45", "-."),
              "cosine": ("#d94801", ":"), "oracle": ("black", "-")}
    with figure_style(lang):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, cell in zip(axes, (("A", 0.7), ("B", 0.7))):
            recs = select(exp, setting=cell[0], alpha=cell[1])
            fractions, curves = matched_curves(recs, analyses)
            x = 100 * np.array(fractions)
            for name, curve in curves.items():
                color, ls = styles[name]
                st = [mean_ci(curve[:, j]) for j in range(len(fractions))]
                ax.plot(x, [s.mean for s in st], color=color, linestyle=ls, linewidth=2 if name == "oracle" else 1.6,
                        label=_pick(lang, *MEASURE_NAMES[name]))
                ax.fill_between(x, [s.lo for s in st], [s.hi for s in st], color=color, alpha=0.12, linewidth=0)
            ax.set_title(_pick(lang, f"setting {cell[0]}, α={cell[1]:g} ({len(recs)} seeds)",
                               f"設定{cell[0]}, α={cell[1]:g}（{len(recs)} シード）"), fontsize=10)
            ax.set_xlabel(_pick(lang, "Shallow % (tokens exiting at L1)", "Shallow %（L1 で退出するトークン）"))
            ax.set_yscale("log")
        axes[0].set_ylabel(_pick(lang, "PPL (log scale)", "PPL（対数軸）"))
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        return _finish(fig)


def agreement_stat(exp: Sequence[dict], analyses: dict[str, dict], cell: tuple[str, float]) -> Stat:
    return mean_ci([analyses[r["run_id"]]["agreement"] for r in select(exp, setting=cell[0], alpha=cell[1])])


# --- the alpha grid ----------------------------------------------------------------------------
def alpha_values(records: Sequence[dict], setting: str, metric: str) -> tuple[list[float], list[list[float]]]:
    alphas = sorted({r["config"]["alpha"] for r in records if r["config"]["setting"] == setting})
    return alphas, [[value(r, metric) for r in select(records, setting=setting, alpha=a)] for a in alphas]


def fig_alpha_grid(records: Sequence[dict], lang: str):
    import matplotlib.pyplot as plt

    panels = (("ppl", _pick(lang, "routed PPL at τ = 0.95", "τ = 0.95 での PPL")),
              ("ppl_deep", _pick(lang, "PPL of L3 alone", "L3 のみの PPL")),
              ("shallow_frac", "Shallow %"))
    colors = {"A": "#08519c", "B": "#d94801"}
    with figure_style(lang):
        fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.8))
        for ax, (metric, title) in zip(axes, panels):
            scale = 100 if metric == "shallow_frac" else 1
            for setting in ("A", "B"):
                alphas, vals = alpha_values(records, setting, metric)
                st = [mean_ci(np.array(v) * scale) for v in vals]
                ax.plot(alphas, [s.mean for s in st], marker="o", color=colors[setting],
                        label=_pick(lang, f"setting {setting}", f"設定{setting}"))
                ax.fill_between(alphas, [s.lo for s in st], [s.hi for s in st], color=colors[setting], alpha=0.2,
                                linewidth=0)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("α")
            if metric != "shallow_frac":
                ax.set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.suptitle(_pick(lang, "α from 0 to 1 (mean and 95% band over seeds)",
                           "α を 0 から 1 まで（シード平均と 95% 帯）"), fontsize=11)
        fig.tight_layout()
        return _finish(fig)


def alpha_table(records: Sequence[dict], lang: str) -> str:
    """Per α, claims 1 and 4 of the document: PPL of A and B at τ = 0.95 with the paired difference
    A − B ("A better"), and Shallow % with B − A ("B exits more"), each with its verdict."""
    rows = []
    alphas, _ = alpha_values(records, "A", "ppl")
    for a in alphas:
        ra, rb = select(records, setting="A", alpha=a), select(records, setting="B", alpha=a)
        ppl, shallow = alpha_claims(records, a)
        rows.append({"α": f"{a:g}", "PPL A": fmt_stat(mean_ci(value(r, "ppl") for r in ra), "ppl"),
                     "PPL B": fmt_stat(mean_ci(value(r, "ppl") for r in rb), "ppl"),
                     _pick(lang, "A − B [95% CI]", "A − B [95% CI]"): fmt_diff(ppl.stat, "ppl"),
                     _pick(lang, "A better?", "A が優れるか"): verdict_label(ppl.verdict, lang),
                     _pick(lang, "Shallow B − A [95% CI]", "Shallow B − A [95% CI]"):
                         fmt_diff(shallow.stat, "shallow_frac"),
                     _pick(lang, "B exits more?", "B の退出が多いか"): verdict_label(shallow.verdict, lang)})
    return markdown_table(pd.DataFrame(rows))


def alpha_claims(records: Sequence[dict], alpha: float) -> tuple[Comparison, Comparison]:
    """Claims 1 (PPL: A − B < 0) and 4 (Shallow: B − A > 0) at one α of the alpha grid, paired by seed."""
    ra, rb = select(records, setting="A", alpha=alpha), select(records, setting="B", alpha=alpha)
    return compare(rb, ra, "ppl", -1, ""), compare(ra, rb, "shallow_frac", 1, "")


def best_alpha(records: Sequence[dict], setting: str, metric: str = "ppl") -> float:
    alphas, vals = alpha_values(records, setting, metric)
    return alphas[int(np.argmin([np.mean(v) for v in vals]))]


# --- real early exit ---------------------------------------------------------------------------
def real_exit_entry(analysis: dict, threshold: float) -> dict:
    """A checkpoint analysis's real-exit row (with its simulated twin) at one threshold."""
    return next(e for e in analysis["real_exit"] if abs(e["threshold"] - threshold) < 1e-9)


def real_exit_gap(recs: Sequence[dict], analyses: dict[str, dict], threshold: float = 0.5) -> Stat:
    """Real-exit PPL minus simulated PPL at `threshold`, per seed."""
    return mean_ci(real_exit_entry(analyses[r["run_id"]], threshold)["ppl"]
                   - real_exit_entry(analyses[r["run_id"]], threshold)["sim_ppl"] for r in recs)


def real_exit_table(exp: Sequence[dict], analyses: dict[str, dict], lang: str) -> str:
    rows = []
    for cell in (("A", 0.7), ("B", 0.7)):
        recs = select(exp, setting=cell[0], alpha=cell[1])
        for t in DOC_THRESHOLDS:
            entries = [real_exit_entry(analyses[r["run_id"]], t) for r in recs]
            col = lambda k: mean_ci([e[k] for e in entries])  # noqa: E731
            rows.append({_pick(lang, "run", "設定"): f"{cell[0]}, α={cell[1]:g}", "τ": f"{t:.2f}",
                         "Shallow": fmt_stat(col("shallow_frac"), "shallow_frac"),
                         _pick(lang, "PPL simulated", "PPL（模擬）"): fmt_stat(col("sim_ppl"), "ppl"),
                         _pick(lang, "PPL real exit", "PPL（実退出）"): fmt_stat(col("ppl"), "ppl"),
                         _pick(lang, "Compute (layers)", "Compute（層数）"): fmt_stat(col("compute_frac"), "compute_frac"),
                         _pick(lang, "Compute (FLOPs)", "Compute（FLOPs）"): fmt_stat(col("flop_compute_frac"), "compute_frac")})
    return markdown_table(pd.DataFrame(rows))


def fig_real_exit(exp: Sequence[dict], analyses: dict[str, dict], bench: dict, lang: str):
    """Left: PPL against Compute %, simulated and real exit (mean over seeds). Right: measured decoding
    speedup against layer Compute %, beside the theoretical 1 / Compute %."""
    import matplotlib.pyplot as plt

    with figure_style(lang):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
        for i, cell in enumerate((("A", 0.7), ("B", 0.7))):
            recs = select(exp, setting=cell[0], alpha=cell[1])
            entries = [analyses[r["run_id"]]["real_exit"] for r in recs]
            comp = 100 * np.mean([[e["compute_frac"] for e in es] for es in entries], axis=0)
            for key, style, name in (("sim_ppl", "--", ("simulated", "模擬")), ("ppl", "-", ("real exit", "実退出"))):
                ppl = np.mean([[e[key] for e in es] for es in entries], axis=0)
                order = np.argsort(comp)
                left.plot(comp[order], ppl[order], style, marker=".", color=_color(cell, i),
                          label=_pick(lang, f"setting {cell[0]}, {name[0]}", f"設定{cell[0]}・{name[1]}"))
        left.set_xlabel(_pick(lang, "Compute % (layers)", "Compute %（層数）"))
        left.set_ylabel("PPL")
        left.set_title(_pick(lang, "Teacher-forced PPL, α = 0.7", "教師強制の PPL（α = 0.7）"), fontsize=10)
        left.legend(fontsize=8)
        xs = np.linspace(0.2, 1.0, 100)
        right.plot(100 * xs, 1 / xs, color="grey", linestyle=":", label=_pick(lang, "1 / Compute (theory)",
                                                                              "1 / Compute（理論）"))
        markers = {"default": "o", "large": "s"}
        for j, (model, batch) in enumerate(sorted({(r["model"], r["batch"]) for r in bench["rows"]})):
            rows = sorted((r for r in bench["rows"] if r["model"] == model and r["batch"] == batch),
                          key=lambda r: r["compute_frac"])
            first = rows[0]
            name = f"{first['n_layers']}L × {first['dim']}, " + _pick(lang, f"batch {batch}", f"バッチ {batch}")
            right.plot([100 * r["compute_frac"] for r in rows], [r["speedup"] for r in rows],
                       marker=markers.get(model, "^"), color=f"C{j}", label=name)
        right.set_xlabel(_pick(lang, "Compute % (layers)", "Compute %（層数）"))
        right.set_ylabel(_pick(lang, "measured speedup over full depth (×)", "全層に対する実測の高速化（倍）"))
        right.set_title(_pick(lang, "Decoding speed", "デコード速度"), fontsize=10)
        right.legend(fontsize=8)
        fig.tight_layout()
        return _finish(fig)


# --- the pages: everything each chapter glues --------------------------------------------------
def _glue_all(facts: dict[str, str], tables: dict[str, str], figures: dict) -> None:
    from ease.report import glue_facts, glue_figure, glue_table

    glue_facts(facts)
    for key, table in tables.items():
        glue_table(key, table)
    for key, fig in figures.items():
        glue_figure(key, fig)


def fig_forensics(matches: Sequence[Match], lang: str):
    """Each published number against the runs' mean on each corpus (on the diagonal: a match)."""
    import matplotlib.pyplot as plt

    colors = {"wikitext-2": "#08519c", "placeholder": "#d94801"}
    names = {"wikitext-2": "WikiText-2", "placeholder": _pick(lang, "placeholder text", "代替文")}
    with figure_style(lang):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
        for ax, metric in zip(axes, ("ppl", "shallow_frac")):
            ms = [m for m in matches if m.metric == metric]
            scale = 100 if PERCENT[metric] else 1
            for c in CORPORA:
                ax.scatter([scale * m.published for m in ms], [scale * float(np.mean(m.runs[c])) for m in ms],
                           color=colors[c], s=28, alpha=0.85, label=names[c], edgecolor="white", linewidth=0.5)
            lo = min(min(scale * m.published for m in ms), min(scale * min(min(v) for v in m.runs.values()) for m in ms))
            hi = max(max(scale * m.published for m in ms), max(scale * max(max(v) for v in m.runs.values()) for m in ms))
            ax.plot([lo, hi], [lo, hi], color="#888", linestyle="--", linewidth=1,
                    label=_pick(lang, "equal to the document", "文書と一致"))
            if metric == "ppl":
                ax.set_xscale("log")
                ax.set_yscale("log")
            title = "PPL" if metric == "ppl" else "Shallow %"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(_pick(lang, f"document's {title}", f"文書の {title}"))
            ax.set_ylabel(_pick(lang, f"runs' {title} (mean over seeds)", f"実行の {title}（シード平均）"))
        axes[0].legend(fontsize=8)
        fig.suptitle(_pick(lang, "Every published number against the runs on each corpus",
                           "文書の各数値と各コーパスでの実行結果"), fontsize=11)
        fig.tight_layout()
        return _finish(fig)


def page_forensics(lang: str) -> None:
    from ease.report import load_published

    say = lambda en, ja: _pick(lang, en, ja)  # noqa: E731
    records = grid_records("forensics")
    analyses = grid_analyses(records)
    published = load_published()
    matches = forensic_matches(records, published)
    base = records[0]["config"]
    v = placeholder_verdict(matches)
    closer = sum(m.closer == "placeholder" for m in matches)
    vocab = {c: sorted({analyses[r["run_id"]]["vocab_size"] for r in select(records, corpus=c)}) for c in CORPORA}
    med = {c: float(np.median([m.rel_error(c) for m in matches])) for c in CORPORA}
    inc = {c: inconsistency(records, published, c) for c in CORPORA}
    explained = {c: sum(r["same_sign"] for r in inc[c]) for c in CORPORA}
    seeds = sorted({r["config"]["seed"] for r in records})
    verdict_text = {
        SUPPORTED: say("**supported**", "**支持される**"), REJECTED: say("**rejected**", "**棄却される**"),
        INCONCLUSIVE: say("**inconclusive**", "**判定不能**")}[v]
    facts = {
        "fx_seeds": str(len(seeds)),
        "fx_runs": str(len(records)),
        "fx_train_chars": f"{base['train_chars']:,}",
        "fx_val_chars": f"{base['val_chars']:,}",
        "fx_n_numbers": str(len(matches)),
        "fx_closer_placeholder": str(closer),
        "fx_closer_wikitext": str(len(matches) - closer),
        "fx_inside_placeholder": str(sum(m.inside("placeholder") for m in matches)),
        "fx_inside_wikitext": str(sum(m.inside("wikitext-2") for m in matches)),
        "fx_median_placeholder": f"{100 * med['placeholder']:.0f}%",
        "fx_median_wikitext": f"{100 * med['wikitext-2']:.0f}%",
        "fx_vocab_wikitext": ", ".join(map(str, vocab["wikitext-2"])),
        "fx_vocab_placeholder": ", ".join(map(str, vocab["placeholder"])),
        "fx_verdict": verdict_text,
        "fx_gaps_placeholder": str(explained["placeholder"]),
        "fx_gaps_wikitext": str(explained["wikitext-2"]),
        "fx_gaps_n": str(len(inc["placeholder"])),
    }
    tables = {"tbl_fx_results": forensic_results_table(records, published, lang),
              "tbl_fx_sweep": forensic_sweep_table(records, published, lang),
              "tbl_fx_evidence": forensic_evidence_table(records, analyses, lang),
              "tbl_fx_gap_placeholder": inconsistency_table(inc["placeholder"], lang),
              "tbl_fx_gap_wikitext": inconsistency_table(inc["wikitext-2"], lang)}
    _glue_all(facts, tables, {"fig_forensics": fig_forensics(matches, lang)})


def page_claims(lang: str) -> None:
    say = lambda en, ja: _pick(lang, en, ja)  # noqa: E731
    regimes = {say("document's rule (stop at the first worse epoch)", "文書の規則（悪化した最初のエポックで停止）"):
               grid_records("exp5-6"),
               say("well trained (cosine decay, patience 3)", "十分な学習（cosine 減衰, patience 3）"):
               grid_records("regimes")}
    claims = {name: evaluate_claims(recs, lang) for name, recs in regimes.items()}
    first, second = claims.values()
    recs_first, recs_second = regimes.values()
    facts = {"cl_seeds": str(len(select(recs_first, setting="A", alpha=0.7))),
             "cl_seeds_regimes": str(len(select(recs_second, setting="A", alpha=0.7))),
             "cl_max_epochs": str(recs_second[0]["config"]["max_epochs"]),
             "cl_patience": str(recs_second[0]["config"]["patience"])}
    for claim in first:
        facts[f"cl_{claim.number}_verdict"] = verdict_label(claim.verdict, lang)
    for claim in second:
        facts[f"cl_{claim.number}_verdict_regimes"] = verdict_label(claim.verdict, lang)
    for name, recs in (("doc", recs_first), ("well", recs_second)):
        facts[f"cl_ppl_a7_{name}"] = fmt_stat(mean_ci(value(r, "ppl") for r in select(recs, setting="A", alpha=0.7)),
                                              "ppl")
        facts[f"cl_epochs_{name}"] = f"{np.mean([r['metrics']['epochs_run'] for r in recs]):.1f}"
    tables = {"tbl_claims_doc": claims_table(first, lang), "tbl_claims_well": claims_table(second, lang),
              "tbl_claims_summary": claims_summary_table(claims, lang)}
    _glue_all(facts, tables, {})


def page_beyond(lang: str) -> None:
    say = lambda en, ja: _pick(lang, en, ja)  # noqa: E731
    exp, dense, alpha = grid_records("exp5-6"), grid_records("dense"), grid_records("alpha")
    analyses = grid_analyses(select(exp, setting="A", alpha=0.7) + select(exp, setting="B", alpha=0.7))
    eq = equal_compute(exp, dense, lang)
    smaller = [r for r in eq if r["compute"] < 1]
    wins = sum(r["verdict"] == REPRODUCED for r in smaller)
    losses = sum(r["verdict"] == NOT_REPRODUCED for r in smaller)
    agree = {c: agreement_stat(exp, analyses, c) for c in (("A", 0.7), ("B", 0.7))}
    fractions, curves = matched_curves(select(exp, setting="A", alpha=0.7), analyses)
    j25 = min(range(len(fractions)), key=lambda k: abs(fractions[k] - 0.25))
    at25 = {name: float(curve[:, j25].mean()) for name, curve in curves.items()}
    best_measure = min(USABLE_MEASURES, key=lambda n: at25[n])
    facts = {
        "bd_seeds": str(len(select(dense, n_layers=1))),
        "bd_pairs": str(len(smaller)),
        "bd_wins": str(wins), "bd_losses": str(losses), "bd_undecided": str(len(smaller) - wins - losses),
        "bd_answer": (say("**yes**: early exit beats the smaller dense model at its compute in every comparison",
                          "**はい**: すべての比較で、同じ計算量の小さい密なモデルより早期退出が良い")
                      if wins == len(smaller) else
                      say("**no**: in no comparison does early exit beat the smaller dense model at its compute",
                          "**いいえ**: 同じ計算量の小さい密なモデルに早期退出が勝る比較は一つもない")
                      if wins == 0 else
                      say(f"**only sometimes**: early exit wins {wins} of {len(smaller)} comparisons",
                          f"**場合による**: {len(smaller)} 件中 {wins} 件で早期退出が勝つ")),
        "bd_agree_a": fmt_stat(agree[("A", 0.7)], "shallow_frac"),
        "bd_agree_b": fmt_stat(agree[("B", 0.7)], "shallow_frac"),
        "bd_best_measure": _pick(lang, *MEASURE_NAMES[best_measure]),
        "bd_maxprob_25": f"{at25['max_prob']:.2f}", "bd_oracle_25": f"{at25['oracle']:.2f}",
        "bd_best_25": f"{at25[best_measure]:.2f}",
        "bd_alpha_seeds": str(len(select(alpha, setting="A", alpha=0.0))),
        "bd_best_alpha_a": f"{best_alpha(alpha, 'A'):g}", "bd_best_alpha_b": f"{best_alpha(alpha, 'B'):g}",
        "bd_best_alpha_a_deep": f"{best_alpha(alpha, 'A', 'ppl_deep'):g}",
        "bd_best_alpha_b_deep": f"{best_alpha(alpha, 'B', 'ppl_deep'):g}",
    }
    per_alpha = [alpha_claims(alpha, a) for a in sorted({r["config"]["alpha"] for r in alpha})]
    ppl_verdicts = [ppl.verdict for ppl, _ in per_alpha]
    shallow_verdicts = [shallow.verdict for _, shallow in per_alpha]
    facts["bd_alpha_n"] = str(len(per_alpha))
    facts["bd_alpha_a_better"] = str(ppl_verdicts.count(REPRODUCED))
    facts["bd_alpha_b_better"] = str(ppl_verdicts.count(NOT_REPRODUCED))
    facts["bd_alpha_b_exits_more"] = str(shallow_verdicts.count(REPRODUCED))
    facts["bd_alpha_a_exits_more"] = str(shallow_verdicts.count(NOT_REPRODUCED))
    tables = {"tbl_equal_compute": equal_compute_table(eq, lang), "tbl_measures": measures_table(exp, analyses, lang),
              "tbl_alpha_grid": alpha_table(alpha, lang)}
    figures = {"fig_equal_compute": fig_equal_compute(exp, dense, lang), "fig_measures": fig_measures(exp, analyses, lang),
               "fig_alpha_grid": fig_alpha_grid(alpha, lang)}
    _glue_all(facts, tables, figures)


# --- the real early-exit page (ease.decode) ----------------------------------------------------
BENCH_FILE = Path("bench") / "decode.json"  # inside the results folder; written by benchmarks/bench_decode.py


def load_bench(results: str | Path | None = None) -> dict:
    path = (Path(results) if results is not None else results_dir()) / BENCH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no decoding benchmark at {path}: run python benchmarks/bench_decode.py "
                                f"--json {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def speedup_range(bench: dict, row: dict) -> tuple[float, float]:
    """The speedup of each timed run of `row` against the median full-depth run: its (lowest, highest)."""
    import statistics

    full = next(r for r in bench["rows"] if r["model"] == row["model"] and r["batch"] == row["batch"]
                and r["threshold"] is None)
    median_full = statistics.median(full["times_s"])
    return median_full / max(row["times_s"]), median_full / min(row["times_s"])


def bench_table(bench: dict, lang: str) -> str:
    rows = []
    for r in bench["rows"]:
        lo, hi = speedup_range(bench, r)
        rows.append({_pick(lang, "model", "モデル"): f"{r['n_layers']}L × {r['dim']}",
                     _pick(lang, "batch", "バッチ"): str(r["batch"]),
                     "τ": _pick(lang, "full depth", "全層") if r["threshold"] is None else f"{r['threshold']:g}",
                     "Shallow": fmt_value(r["shallow_frac"], "shallow_frac"),
                     _pick(lang, "Compute (layers)", "Compute（層数）"): fmt_value(r["compute_frac"], "compute_frac"),
                     _pick(lang, "Compute (FLOPs)", "Compute（FLOPs）"): fmt_value(r["flop_compute_frac"], "compute_frac"),
                     _pick(lang, "tokens/s", "トークン/秒"): f"{r['tokens_per_s']:,.0f}",
                     _pick(lang, "measured speedup (range of runs)", "実測の高速化（各回の範囲）"):
                         f"{r['speedup']:.2f}× ({lo:.2f}–{hi:.2f})",
                     _pick(lang, "1 / Compute", "1 / Compute"): f"{r['theoretical_speedup']:.2f}×",
                     _pick(lang, "measured / theoretical", "実測 / 理論"): f"{100 * r['ratio']:.0f}%"})
    return markdown_table(pd.DataFrame(rows))


def samples_html(samples: Sequence[dict], exit_layer: int, lang: str) -> str:
    """Generated text with each character's background showing the layer it exited at."""
    import html

    def span(ch: str, layer: int) -> str:
        color = "#fdae6b" if layer == exit_layer else "transparent"
        return f'<span style="background:{color}">{html.escape(ch)}</span>'

    legend = _pick(lang, f'<span style="background:#fdae6b">&nbsp;orange&nbsp;</span>: exited at layer {exit_layer}; '
                         "plain: went through every layer; grey: the prompt.",
                   f'<span style="background:#fdae6b">&nbsp;橙&nbsp;</span>: 第{exit_layer}層で退出した文字、'
                   "地の色: 全層を通った文字、灰色: プロンプト。")
    lines = []
    for s in samples:
        text = "".join(span(c, l) for c, l in zip(s["text"], s["layers"]))
        lines.append(f'<div style="font-family:monospace;white-space:pre-wrap;margin:0.2em 0">'
                     f'<b>τ = {s["threshold"]:g}</b>&nbsp; <span style="color:#888">{html.escape(s["prompt"])}</span>'
                     f'{text}</div>')
    return f'<div class="exit-samples">{"".join(lines)}<p style="font-size:0.85em">{legend}</p></div>'


def page_real_exit(lang: str) -> None:
    from IPython.display import HTML
    from myst_nb import glue

    exp = grid_records("exp5-6")
    a7 = select(exp, setting="A", alpha=0.7)
    analyses = grid_analyses(a7 + select(exp, setting="B", alpha=0.7))
    bench = load_bench()
    near = {(r["model"], r["batch"]): r for r in bench["nearest_50"]}
    large = next(r for (m, b), r in near.items() if m == "large" and b == 1)
    large_batch = [r for (m, b), r in near.items() if m == "large" and b > 1]

    at_05 = [real_exit_entry(analyses[r["run_id"]], 0.5) for r in a7]
    gap = real_exit_gap(a7, analyses)
    env = bench["env"]
    facts = {
        "rx_seeds": str(len(a7)),
        "rx_sim_05": fmt_stat(mean_ci(e["sim_ppl"] for e in at_05), "ppl"),
        "rx_real_05": fmt_stat(mean_ci(e["ppl"] for e in at_05), "ppl"),
        "rx_large_threshold": f"{large['threshold']:g}",
        "rx_large_compute": fmt_value(large["compute_frac"], "compute_frac"),
        "rx_large_flops": fmt_value(large["flop_compute_frac"], "compute_frac"),
        "rx_large_speedup": f"{large['speedup']:.2f}×",
        "rx_large_theory": f"{large['theoretical_speedup']:.2f}×",
        "rx_large_ratio": f"{100 * large['ratio']:.0f}%",
        "rx_large_verdict": (_pick(lang, "meets the target of at least 70%", "目標（70% 以上）に達している")
                             if large["ratio"] >= 0.7 else
                             _pick(lang, "misses the target of at least 70%", "目標（70% 以上）に届かない")),
        "rx_large_batch": ", ".join(f"{r['batch']}: {r['speedup']:.2f}× / {r['theoretical_speedup']:.2f}×"
                                    for r in large_batch),
        "rx_gap_sentence": (_pick(lang, f"really skipping the layers costs {fmt_stat(gap, 'ppl')} PPL that the "
                                        "simulated numbers do not show",
                                  f"層を実際に飛ばすと、模擬では見えない {fmt_stat(gap, 'ppl')} の PPL の悪化が生じる")
                            if gap.lo > 0 else
                            _pick(lang, f"the difference, {fmt_stat(gap, 'ppl')}, is not clearly worse than the "
                                        "simulation", f"差は {fmt_stat(gap, 'ppl')} で、模擬より明確に悪いとは言えない")),
        "rx_batch_trend": (_pick(lang, "the gain shrinks", "高速化は小さくなる")
                           if all(r["ratio"] < large["ratio"] for r in large_batch) else
                           _pick(lang, "the gain does not shrink", "高速化は小さくならない")),
        "rx_env": f"{env['platform'].split('-')[0]}, torch {env['torch']}, {env['device']}, "
                  f"{env['threads']} thread(s)",
        "rx_repeats": str(bench["settings"]["repeats"]),
        "rx_new_tokens": str(bench["settings"]["new_tokens"]),
    }
    tables = {"tbl_real_exit": real_exit_table(exp, analyses, lang), "tbl_bench": bench_table(bench, lang)}
    _glue_all(facts, tables, {"fig_real_exit": fig_real_exit(exp, analyses, bench, lang)})
    seed0 = analyses[a7[0]["run_id"]]
    glue("rx_samples", HTML(samples_html(seed0["samples"], a7[0]["config"]["exit_layer"], lang)), display=False)


# --- the landing page: one line per audit chapter -----------------------------------------------
def page_glance(lang: str) -> None:
    """Glue the landing page's summary of the audit chapters (gl_* facts), from the same records."""
    from ease.report import load_published

    say = lambda en, ja: _pick(lang, en, ja)  # noqa: E731
    matches = forensic_matches(grid_records("forensics"), load_published())
    closer = sum(m.closer == "placeholder" for m in matches)
    verdict_word = {SUPPORTED: say("supported", "支持される"), REJECTED: say("rejected", "棄却される"),
                    INCONCLUSIVE: say("inconclusive", "判定不能")}[placeholder_verdict(matches)]
    claims = evaluate_claims(grid_records("exp5-6"), lang)
    by_verdict = {v: [str(c.number) for c in claims if c.verdict == v]
                  for v in (REPRODUCED, INCONCLUSIVE, NOT_REPRODUCED)}
    claim_text = "; ".join(f"{verdict_label(v, lang)}: {', '.join(nums)}" for v, nums in by_verdict.items() if nums)
    exp, dense = grid_records("exp5-6"), grid_records("dense")
    smaller = [r for r in equal_compute(exp, dense, lang) if r["compute"] < 1]
    wins = sum(r["verdict"] == REPRODUCED for r in smaller)
    a7 = select(exp, setting="A", alpha=0.7)
    analyses = grid_analyses(a7)
    gap = real_exit_gap(a7, analyses)
    large = next(r for r in load_bench()["nearest_50"] if r["model"] == "large" and r["batch"] == 1)
    facts = {
        "gl_forensics": say(f"{verdict_word}: {closer} of the document's {len(matches)} numbers lie closer to runs "
                            "on the original code's placeholder sentence than to runs on WikiText-2",
                            f"{verdict_word}: 文書の数値 {len(matches)} 個のうち {closer} 個が、WikiText-2 での実行より"
                            "元のコードの代替文での実行に近い"),
        "gl_claims": claim_text,
        "gl_equal": say(f"early exit beats a plain smaller model of the same compute in {wins} of {len(smaller)} "
                        "comparisons", f"同じ計算量の小さい密なモデルに早期退出が勝つのは {len(smaller)} 件中 {wins} 件"),
        "gl_real": say(f"really skipping the layers costs {fmt_stat(gap, 'ppl')} PPL (setting A, α = 0.7, τ = 0.5); "
                       f"the 12-layer model decodes {large['speedup']:.2f}× faster at "
                       f"{fmt_value(large['compute_frac'], 'compute_frac')} Compute (theory "
                       f"{large['theoretical_speedup']:.2f}×)",
                       f"層を実際に飛ばすと PPL が {fmt_stat(gap, 'ppl')} 悪化する（設定A、α = 0.7、τ = 0.5）。"
                       f"12 層モデルは Compute {fmt_value(large['compute_frac'], 'compute_frac')} で "
                       f"{large['speedup']:.2f} 倍速くデコードする（理論値 {large['theoretical_speedup']:.2f} 倍）"),
    }
    _glue_all(facts, {}, {})
