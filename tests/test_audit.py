"""The audit chapters (companion.claims, forensics, beyond, real_exit, landing and the judge) on designed
records whose answers are derived by hand.

Every run's PPL is `base(config) · m(seed) · (1 + 2 · shallow(τ))` (tests/bookrecords.py): a base per
configuration, a seed factor m shared by every configuration of that seed (so paired differences cancel most
of the seed-to-seed spread while each condition's own spread stays large), and the share of early exits
shallow(τ) = (1 − τ)^p with p = 1 for setting A and 2 for B (0.1 on the placeholder text, whose runs land
near the document's tables). The expected numbers below are worked out from these formulas, and the
intervals from Student's t by hand (`t_interval`), not from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ease.analysis import ANALYSIS_VERSION, SHALLOW_FRACTIONS
from ease.config import DOC_THRESHOLDS, RunConfig
from ease.grid import expand_grid, load_grid
from ease.results import analysis_path, bench_path, record_path, write_json
from ease.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

from companion import beyond, claims, core, forensics, judge, landing, real_exit

import bookrecords

BASE_PPL = {("A", 0.3): 8.0, ("A", 0.5): 7.5, ("A", 0.7): 7.0, ("B", 0.7): 8.0}  # others: 7.2
DENSE_PPL = {1: 30.0, 2: 20.0, 3: 6.5}
K = {0: -2, 1: 0, 2: 2, 3: -1, 4: 1}  # per seed: mean 0 over seeds 0-4 and over seeds 0-2
M = {seed: 1 + 0.25 * k for seed, k in K.items()}  # the seed factor: 0.5, 1, 1.5, 0.75, 1.25
WELL_B_SWING = 0.3  # well-trained regime: routed PPL(B) = routed PPL(A) + 0.3 · (−1)^seed
REAL_GAP = {seed: 0.5 + 0.1 * k for seed, k in K.items()}  # real − simulated PPL at every threshold


def power(setting: str, corpus: str = "wikitext-2") -> float:
    """The exponent p of a run's share of early exits (1 − τ)^p."""
    return 0.1 if corpus == "placeholder" else bookrecords.POWER.get(setting, 1)


def shallow(setting: str, t: float, corpus: str = "wikitext-2") -> float:
    return bookrecords.shallow(t, power(setting, corpus))


PLACEHOLDER_ROUTED = 1 + 2 * shallow("A", 0.95, "placeholder")  # ≈ 2.5: routed / base at τ = 0.95


def t_interval(values) -> tuple[float, float, float]:
    """(mean, lower, upper) of the 95% Student-t interval, by the textbook formula."""
    x = np.asarray(values, float)
    half = scipy_stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return x.mean(), x.mean() - half, x.mean() + half


def base(config: RunConfig, published: dict) -> float:
    """The PPL of a run before its seed factor and exits (routed PPL at τ: base · m · (1 + 2 shallow))."""
    if config.setting == "custom":
        return DENSE_PPL[config.n_layers]
    if config.corpus == "placeholder":  # routed PPL at τ = 0.95 ≈ the document's results row
        return forensics.doc_rows(published, sweep=False)[(config.setting, config.alpha, None)]["ppl"] / PLACEHOLDER_ROUTED
    if config.lr_schedule == "cosine" and config.setting == "B":
        a = BASE_PPL[("A", 0.7)] * (1 + 2 * shallow("A", 0.95))
        return (a + WELL_B_SWING * (-1) ** config.seed / M[config.seed]) / (1 + 2 * shallow("B", 0.95))
    return BASE_PPL.get((config.setting, config.alpha), 7.2)


def epochs(config: RunConfig) -> int:
    return 5 + config.seed if (config.setting, config.alpha) == ("A", 0.7) else 20


def make_record(config: RunConfig, published: dict) -> dict:
    ppl = base(config, published) * M[config.seed]
    # a sweep read with the last epoch's weights is 20% worse than the best epoch's metrics
    return bookrecords.record(config, ppl, power(config.setting, config.corpus), epochs(config),
                              sweep_ppl=1.2 * ppl if config.sweep_weights == "last" else None)


MEASURE_SLOPE = {"max_prob": 2.0, "entropy": 2.5, "margin": 1.5, "cosine": 3.0, "oracle": 0.5}


def make_analysis(config: RunConfig, published: dict) -> dict:
    ppl = base(config, published) * M[config.seed]
    real = []
    for t in DOC_THRESHOLDS:
        s = shallow(config.setting, t, config.corpus)
        sim = ppl * (1 + 2 * s)
        real.append({"threshold": t, "ppl": sim + REAL_GAP[config.seed], "sim_ppl": sim, "shallow_frac": s,
                     "compute_frac": s / 3 + 1 - s, "flop_compute_frac": s / 3 + 1 - s + 0.05})
    return {"run_id": config.run_id, "analysis_version": ANALYSIS_VERSION,
            "vocab_size": 30 if config.corpus == "placeholder" else 180, "eval_tokens": 1000, "agreement": 0.6,
            "shallow_fractions": list(SHALLOW_FRACTIONS),
            "matched": {name: [ppl * (1 + k * f) for f in SHALLOW_FRACTIONS] for name, k in MEASURE_SLOPE.items()},
            "real_exit": real,
            "samples": [{"threshold": 0.5, "prompt": "ab", "text": "xyz", "layers": [1, 3, 1]}]}


def bench_row(batch: int, threshold, compute: float, times: list[float], ratio: float) -> dict:
    return {"model": "large", "n_layers": 12, "dim": 256, "batch": batch, "threshold": threshold,
            "shallow_frac": 1 - compute, "compute_frac": compute, "flop_compute_frac": compute + 0.05,
            "tokens_per_s": 100.0, "speedup": ratio / compute, "theoretical_speedup": 1 / compute, "ratio": ratio,
            "times_s": times}


BENCH = {"env": {"platform": "Linux-x", "torch": "2", "device": "cpu", "threads": 1},
         "settings": {"repeats": 3, "new_tokens": 8},
         "rows": [bench_row(1, None, 1.0, [1.0, 1.2, 0.8], 1.0), bench_row(1, 0.5, 0.5, [0.4, 0.5, 0.625], 0.9),
                  bench_row(16, None, 1.0, [2.0, 2.0, 2.0], 1.0), bench_row(16, 0.5, 0.5, [1.6, 1.6, 1.6], 0.6)]}
BENCH["nearest_50"] = [BENCH["rows"][1], BENCH["rows"][3]]
# speculative: full depth takes a median 1.0 s at batch 1, so draft 2 (0.5 s median) is 2x and draft 4 (0.8 s) 1.25x
BENCH["speculative"] = [
    {"model": "large", "n_layers": 12, "dim": 256, "setting": "custom", "alpha": None, "batch": 1, "draft": k,
     "acceptance": acc, "tokens_per_pass": per, "tokens_per_s": 100.0, "speedup": 1.0 / median, "identical": True,
     "times_s": [median * 0.9, median, median * 1.1]} for k, acc, per, median in ((2, 0.8, 2.2, 0.5), (4, 0.6, 2.8, 0.8))]
BENCH["grouped"] = [{**{k: BENCH["rows"][3][k] for k in ("model", "n_layers", "dim", "batch", "threshold",
                                                          "compute_frac")},
                     "schedule": "grouped", "tokens_per_s": 100.0, "speedup": 1.7, "ratio": 0.85, "lockstep_ratio": 0.6,
                     "identical": True, "times_s": [1.0, 2.0 / 1.7, 1.3]}]


@pytest.fixture(scope="module")
def published():
    return core.load_published()


@pytest.fixture(scope="module")
def results(tmp_path_factory, published):
    folder = tmp_path_factory.mktemp("audit")
    for name in ("exp5-6", "forensics", "dense", "regimes", "alpha"):
        for config in expand_grid(load_grid(name)):  # alpha shares runs with exp5-6: the same design
            write_json(record_path(folder, config.run_id), make_record(config, published))
            write_json(analysis_path(folder, config.run_id), make_analysis(config, published))
    write_json(bench_path(folder), BENCH)
    return folder


@pytest.fixture(scope="module")
def exp(results):
    return core.grid_records("exp5-6", results)


@pytest.fixture(scope="module")
def well(results):
    return core.grid_records("regimes", results)


# --- the judge ---------------------------------------------------------------------------------------
def test_compare_pairs_by_seed_and_needs_the_same_seeds(exp):
    a7, b7 = core.select(exp, setting="A", alpha=0.7), core.select(exp, setting="B", alpha=0.7)
    c = judge.compare(b7, a7, "ppl", -1)
    expected = [M[s] * (7.0 * 1.1 - 8.0 * (1 + 2 * 0.05 ** 2)) for s in range(5)]  # A − B per seed
    assert c.diffs == pytest.approx(expected)
    with pytest.raises(ValueError, match="same seeds"):
        judge.compare(a7[:3], b7[1:4], "ppl", -1)


def test_lowest_judges_the_lowest_mean_against_every_other():
    found = judge.lowest({"x": [1.0, 2.0, 3.0], "y": [1.5, 2.4, 3.6], "z": [3.0, 1.0, 2.5]}, "ppl")
    assert found.key == "x"
    # x − y = −0.5, −0.4, −0.6: interval below zero; x − z = −2, 1, 0.5: it contains zero
    assert found.against["y"].verdict == REPRODUCED and found.against["z"].verdict == INCONCLUSIVE
    assert found.verdict == INCONCLUSIVE and found.closest == "z"
    # x − y = −0.5, −0.5, −0.55: a narrow interval below zero
    assert judge.lowest({"x": [1.0, 2.0, 3.0], "y": [1.5, 2.5, 3.55]}, "ppl").verdict == REPRODUCED


def test_lowest_judges_a_claimed_condition_that_is_not_the_lowest():
    claimed = judge.lowest({"x": [1.0, 2.0, 3.0], "y": [1.5, 2.4, 3.6], "z": [3.0, 1.0, 2.5]}, "ppl", key="y")
    assert claimed.key == "y" and claimed.stat.mean == pytest.approx(2.5)
    # y − x = +0.5, +0.4, +0.6: the interval lies above zero, so "y is the lowest" is not reproduced
    assert claimed.against["x"].diffs == pytest.approx([0.5, 0.4, 0.6])
    assert claimed.against["x"].verdict == NOT_REPRODUCED and claimed.verdict == NOT_REPRODUCED
    assert claimed.case == NOT_REPRODUCED
    assert judge.lowest({"x": [1.0], "y": [2.0]}, "ppl", key="y").case == "single"
    with pytest.raises(ValueError, match="one value per seed"):
        judge.lowest({"x": [1.0, 2.0], "y": [2.0]}, "ppl")


# --- claims ----------------------------------------------------------------------------------------
def test_claims_on_the_documents_rule_reach_the_designed_verdicts(exp):
    found = claims.evaluate(exp)
    assert [c.number for c in found] == [1, 2, 3, 4]
    # 1: A − B = m · (7.7 − 8.04): all negative, spread by m → reproduced (paired)
    # 2: A is routed alike at every α, so 0.7 − 0.3 = m · 1.1 · (7 − 8) and 0.7 − 0.5 = m · 1.1 · (7 − 7.5) < 0
    # 3: PPL falls and Compute rises at every step of the document's thresholds
    # 4: B exits (1 − τ)² < (1 − τ) of A → Shallow(B) − Shallow(A) < 0 at every seed → not reproduced
    assert {c.number: c.verdict for c in found} == {1: REPRODUCED, 2: REPRODUCED, 3: REPRODUCED, 4: NOT_REPRODUCED}
    first = found[0].comparisons[0][1]
    mean, lo, hi = t_interval([M[s] * (7.7 - 8.0 * 1.005) for s in range(5)])
    assert (first.stat.mean, first.stat.lo, first.stat.hi) == pytest.approx((mean, lo, hi))
    assert first.holds == 5 and hi < 0
    assert len(found[2].comparisons) == 2 * (len(DOC_THRESHOLDS) - 1)


def test_claim_1_is_inconclusive_when_the_paired_differences_straddle_zero(well):
    # well-trained regime: A − B = −0.3 · (−1)^seed = −0.3, +0.3, −0.3, +0.3, −0.3
    first = claims.evaluate(well)[0]
    diffs = [-WELL_B_SWING * (-1) ** s for s in range(5)]
    mean, lo, hi = t_interval(diffs)
    assert lo < 0 < hi
    stat = first.comparisons[0][1].stat
    assert (stat.mean, stat.lo, stat.hi) == pytest.approx((mean, lo, hi))
    assert first.verdict == INCONCLUSIVE


def test_regime_reports_setting_a_at_07_means_over_its_own_seeds(exp, well):
    doc = claims.regime(exp)
    # A at α = 0.7 ran 5..9 epochs (mean 7); every other configuration ran 20
    assert doc.epochs_a7 == pytest.approx(7.0)
    assert doc.seeds == 5
    mean, lo, hi = t_interval([M[s] * 7.0 * 1.1 for s in range(5)])
    assert (doc.ppl_a7.mean, doc.ppl_a7.lo, doc.ppl_a7.hi) == pytest.approx((mean, lo, hi))
    text = claims.texts({"doc": doc, "well": claims.regime(well)}, "en")
    assert text["cl_epochs_doc"] == "7.0" and text["cl_epochs_well"] == "7.0"
    assert text["cl_ppl_a7_doc"] == f"{mean:.2f} ± {hi - mean:.2f}"
    assert text["cl_1_verdict"] == "**reproduced**" and text["cl_1_verdict_regimes"] == "inconclusive"
    assert (text["cl_max_epochs"], text["cl_patience"]) == ("20", "3")


def test_claims_tables_show_every_comparison_in_both_languages(exp, well):
    by_regime = {"doc": claims.regime(exp), "well": claims.regime(well)}
    lines = claims.claims_table(by_regime["doc"].claims, "en").splitlines()
    assert len(lines) == 2 + 1 + 2 + 8 + 1
    assert lines[-1].endswith("| 0/5 | **not reproduced** |") and "pp [" in lines[-1]
    ja = claims.claims_table(by_regime["doc"].claims, "ja")
    assert "**再現**" in ja and "**非再現**" in ja and "pt [" in ja and " pp" not in ja
    summary = claims.summary_table(by_regime, "en").splitlines()
    assert summary[0].count("|") == 5 and "patience 3" in summary[0]
    assert summary[2].endswith("| **reproduced** | inconclusive |")


# --- the landing page ------------------------------------------------------------------------------
def test_landing_judges_a_against_b_paired_where_an_unpaired_interval_would_not(results, published):
    g = landing.load(core.book_grid(results), published, results)
    a = [M[s] * 7.0 * 1.1 for s in range(5)]
    b = [M[s] * 8.0 * 1.005 for s in range(5)]
    # unpaired (Welch): the seed factor's spread swamps the difference, the interval contains zero
    va, vb = np.var(a, ddof=1) / 5, np.var(b, ddof=1) / 5
    dof = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 4)
    half = scipy_stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert np.mean(a) - np.mean(b) - half < 0 < np.mean(a) - np.mean(b) + half
    mean, lo, hi = t_interval(np.subtract(a, b))  # paired: below zero
    assert g.a_vs_b.verdict == REPRODUCED and g.a_vs_b_case == REPRODUCED
    assert landing.texts(g, "en")["gl_ab_diff"] == f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def test_landing_a_against_b_is_claim_1_on_the_same_records(exp, well):
    for records, expected in ((exp, REPRODUCED), (well, INCONCLUSIVE)):
        assert landing.a_vs_b(records).verdict == claims.evaluate(records)[0].verdict == expected


def test_landing_summarises_every_chapter(results, published):
    g = landing.load(core.book_grid(results), published, results)
    text = landing.texts(g, "en")
    assert text["gl_claims"] == "**reproduced**: 1, 2, 3; **not reproduced**: 4"
    assert landing.texts(g, "ja")["gl_claims"] == "主張1・2・3は**再現**、主張4は**非再現**"
    assert (text["gl_fx_verdict"], text["gl_fx_closer"], text["gl_fx_numbers"]) == ("supported", "26", "26")
    # designed: the placeholder runs sit on the published numbers; the landing page says what the chapter says
    assert g.fx_fit == {"A": "placeholder", "B": "placeholder"}
    assert g.fx_fit == {s: forensics.setting_case(forensics.load(results).fits, s) for s in ("A", "B")}
    assert (text["gl_equal_wins"], text["gl_equal_pairs"]) == ("8", "8")
    assert g.real.gap.verdict == REPRODUCED and g.real.gap.stat.mean == pytest.approx(0.5)
    assert (text["gl_large_speedup"], text["gl_large_theory"], text["gl_large_layers"]) == ("1.80×", "2.00×", "12")
    assert landing.texts(g, "ja")["gl_large_speedup"] == "1.80倍"
    assert (text["n_runs"], text["n_cells"], text["seeds"]) == ("20", "4", "5")
    assert text["gl_alpha_verdict"] == "**reproduced**"


# --- forensics -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fx(results):
    return forensics.load(results)


def test_every_published_number_is_set_beside_both_corpora(fx):
    assert len(fx.matches) == 2 * (4 + 9)  # PPL and Shallow of the 4 results rows and the 9 threshold rows
    a7 = next(m for m in fx.matches if (m.setting, m.alpha, m.threshold, m.metric) == ("A", 0.7, None, "ppl"))
    assert a7.published == 22.95
    assert a7.runs["placeholder"] == pytest.approx([22.95 * M[s] for s in range(5)])
    # the sweep rows read the last epoch's weights (20% worse by design)
    t5 = next(m for m in fx.matches if (m.setting, m.alpha, m.threshold, m.metric) == ("A", 0.7, 0.5, "ppl"))
    assert t5.runs["wikitext-2"] == pytest.approx([1.2 * 7.0 * M[s] * 2.0 for s in range(5)])


def test_placeholder_hypothesis_follows_the_two_thirds_rule(fx):
    assert all(m.closer == "placeholder" for m in fx.matches)
    assert forensics.placeholder_verdict(fx.matches) == forensics.SUPPORTED
    ppl = [m for m in fx.matches if m.metric == "ppl"]

    def moved(m, factor):  # the placeholder runs pushed far from the published value
        return forensics.Match(m.setting, m.alpha, m.threshold, m.metric, m.published,
                               {"wikitext-2": m.runs["wikitext-2"], "placeholder": [x * factor for x in m.runs["placeholder"]]})

    assert forensics.placeholder_verdict([moved(m, 100) for m in ppl]) == forensics.REJECTED
    half = [moved(m, 100) if i % 2 else m for i, m in enumerate(ppl)]
    assert forensics.placeholder_verdict(half) == INCONCLUSIVE


def test_each_setting_fits_a_corpus_by_a_test_that_can_fail(fx):
    def around(m):  # placeholder seeds spread around the published value: it lies inside their range
        return forensics.Match(m.setting, m.alpha, m.threshold, m.metric, m.published,
                               {"wikitext-2": m.runs["wikitext-2"],
                                "placeholder": [m.published * (1 + 0.01 * d) for d in (-2, -1, 0.5, 1, 2)]})

    inside = [around(m) for m in fx.matches]
    rows = forensics.fits(inside)
    a = next(r for r in rows if (r.setting, r.corpus) == ("A", "placeholder"))
    assert (a.inside, a.total, a.seeds) == (16, 16, 5) and a.chance == pytest.approx(4 / 6)
    assert a.p == pytest.approx(1.0) and a.fits
    assert forensics.setting_case(rows, "A") == "placeholder"
    # every placeholder range moved off the published numbers (all seeds above them): no fit, p = (2/6)^n
    outside = [forensics.Match(m.setting, m.alpha, m.threshold, m.metric, m.published,
                               {c: [abs(m.published) * 2 + 1 + i for i in range(5)] for c in forensics.CORPORA})
               for m in fx.matches]
    rows = forensics.fits(outside)
    b = next(r for r in rows if (r.setting, r.corpus) == ("B", "placeholder"))
    assert b.inside == 0 and b.p == pytest.approx((2 / 6) ** b.total) and not b.fits
    assert forensics.setting_case(rows, "B") == "neither"
    assert "< 0.001" in forensics.fit_table(rows, "en")


def test_gaps_follow_the_last_epochs_weights(fx):
    gap = next(g for g in fx.gaps["placeholder"] if (g.setting, g.metric) == ("A", "ppl"))
    # sweep (last weights, 1.2×) minus best epoch at τ = 0.95: 0.2 · (routed PPL 22.95 · m) per seed
    mean, lo, hi = t_interval([0.2 * 22.95 * M[s] for s in range(5)])
    assert (gap.runs.mean, gap.runs.lo, gap.runs.hi) == pytest.approx((mean, lo, hi))
    assert gap.doc == pytest.approx(31.46 - 22.95) and gap.same_sign
    shallow_gap = next(g for g in fx.gaps["placeholder"] if (g.setting, g.metric) == ("A", "shallow_frac"))
    assert not shallow_gap.same_sign  # the weights do not change who exits in this design: a zero gap
    table = forensics.gaps_table(fx.gaps["placeholder"], "ja")
    assert "+7.30 pt" in table and "はい" in table


def test_forensics_texts_and_tables(fx):
    text = forensics.texts(fx, "en")
    assert (text["fx_runs"], text["fx_seeds"], text["fx_n_numbers"]) == ("40", "5", "26")
    assert (text["fx_vocab_wikitext"], text["fx_vocab_placeholder"]) == ("180", "30")
    assert text["fx_verdict"] == "**supported**" and forensics.texts(fx, "ja")["fx_verdict"] == "**支持**"
    assert (text["fx_gaps_placeholder"], text["fx_gaps_n"]) == ("2", "4")  # the PPL gaps of A and B
    results_rows = forensics.rows_table(fx, "en", sweep=False).splitlines()
    sweep_rows = forensics.rows_table(fx, "en", sweep=True).splitlines()
    assert len(results_rows) == 2 + 4 and len(sweep_rows) == 2 + 9 and "| τ |" in sweep_rows[0]
    mean, lo, hi = t_interval([22.95 * M[s] for s in range(5)])
    assert "| A, α=0.7 | 22.95 | " in results_rows[4] and f"{mean:.2f} ± {hi - mean:.2f}" in results_rows[4]
    evidence = forensics.evidence_table(fx, "en").splitlines()
    assert evidence[2].startswith("| WikiText-2 | 20 | 180 | 4–19 |")


def tick_texts(fig) -> list[str]:
    fig.canvas.draw()
    return [t.get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
            for t in axis.get_ticklabels(which="both") if t.get_text()]


def test_log_axes_show_plain_numbers(fx, results):
    b = beyond.load(results)
    for lang in ("en", "ja"):
        for fig in (forensics.figure(fx, lang), beyond.fig_equal_compute(b.exp, b.dense, lang),
                    beyond.fig_measures(b.exp, b.analyses, lang), beyond.fig_alpha_grid(b.alpha, lang)):
            labels = tick_texts(fig)
            assert labels and not [t for t in labels if "$" in t or "×" in t or "^" in t], labels


# --- beyond ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bd(results):
    return beyond.load(results)


def test_equal_compute_against_dense_models(bd):
    smaller = bd.smaller
    assert len(smaller) == 2 * 4 and all(r.comparison.verdict == REPRODUCED for r in smaller)
    # at one third of the compute every character exits: the sweep's PPL at τ = 0 (shallow 1 → × 3)
    third = next(r for r in smaller if r.n_layers == 1 and r.cell == ("A", 0.7))
    assert third.comparison.diffs == pytest.approx([M[s] * (7.0 * 3 - 30.0) for s in range(5)])
    # at full compute the last layer of each early-exit model is worse than the dense 6.5
    assert all(r.comparison.verdict == NOT_REPRODUCED for r in bd.equal if r.compute == 1)
    assert bd.answer == "all"
    text = beyond.texts(bd, "en")
    assert (text["bd_pairs"], text["bd_wins"], text["bd_losses"], text["bd_undecided"]) == ("8", "8", "0", "0")


def test_measures_and_agreement(bd):
    found = bd.at25.best_usable
    # matched curves: ppl · (1 + k · f); the margin (k = 1.5) is lowest, the document's rule (k = 2) next
    assert found.key == "margin" and found.closest == "max_prob" and found.verdict == REPRODUCED
    f = bd.at25.fraction
    assert f == pytest.approx(0.25)
    assert found.against["max_prob"].diffs == pytest.approx([-0.5 * f * 7.0 * M[s] for s in range(5)])
    text = beyond.texts(bd, "en")
    assert float(text["bd_maxprob_25"]) == pytest.approx(7.0 * (1 + 2 * f), abs=0.006)
    assert float(text["bd_oracle_25"]) == pytest.approx(7.0 * (1 + 0.5 * f), abs=0.006)
    assert text["bd_best_measure"] == "top-1 − top-2 margin" and text["bd_agree_a"] == "60.0 ± 0.0%"
    assert len(beyond.measures_table(bd.exp, bd.analyses, "en").splitlines()) == 2 + 2 * 5


def test_alpha_grid_claims_and_best_alpha(bd):
    # every α of A is routed alike (shallow 0.05), so 0.7 (base 7.0) is below each other α by
    # m · 1.1 · (7.0 − base): base 7.2 for the new α, 7.5 and 8.0 for 0.5 and 0.3; three seeds
    best = bd.best[("A", "ppl")]
    assert best.key == 0.7
    to_new = t_interval([M[s] * 1.1 * (7.0 - 7.2) for s in range(3)])  # −0.11, −0.22, −0.33
    to_03 = t_interval([M[s] * 1.1 * (7.0 - 8.0) for s in range(3)])  # −0.55, −1.1, −1.65
    assert to_new[1] < 0 < to_new[2] and 0 < to_new[2] < to_03[2]  # three seeds: neither interval excludes 0
    assert best.verdict == INCONCLUSIVE
    assert best.closest == 0.3  # the highest upper end: the comparison least clearly won
    assert best.against[0.4].stat.hi == pytest.approx(to_new[2])
    # B: 7.2 at every α but 0.7 (8.0); the lowest mean ties with nine others, differences exactly 0
    assert bd.best[("B", "ppl")].key != 0.7 and bd.best[("B", "ppl")].verdict == INCONCLUSIVE
    ppl, shallow_c = beyond.alpha_claims(bd.alpha, 0.7)
    diffs = [M[s] * (7.0 * 1.1 - 8.0 * 1.005) for s in range(3)]
    assert ppl.diffs == pytest.approx(diffs)
    assert ppl.verdict == (REPRODUCED if t_interval(diffs)[2] < 0 else INCONCLUSIVE)
    assert shallow_c.diffs == pytest.approx([0.05 ** 2 - 0.05] * 3) and shallow_c.verdict == NOT_REPRODUCED
    text = beyond.texts(bd, "en")
    assert (text["bd_best_alpha_a"], text["bd_best_alpha_a_deep"], text["bd_alpha_seeds"]) == ("0.7", "0.7", "3")
    # B exits fewer characters than A at every α, by the same amount in every seed
    assert (text["bd_alpha_n"], text["bd_alpha_a_exits_more"], text["bd_alpha_b_exits_more"]) == ("11", "11", "0")
    table = beyond.alpha_table(bd.alpha, "en").splitlines()
    assert len(table) == 2 + 11 and "B exits more?" in table[0]
    assert len(beyond.best_alpha_table(bd.best, "ja").splitlines()) == 2 + 4


# --- real early exit -------------------------------------------------------------------------------
def test_real_exit_gap_is_judged_by_seed(results):
    r = real_exit.load(results)
    mean, lo, hi = t_interval([REAL_GAP[s] for s in range(5)])
    assert (r.gap.stat.mean, r.gap.stat.lo, r.gap.stat.hi) == pytest.approx((mean, lo, hi))
    assert r.gap.verdict == REPRODUCED
    swinging = {rec["run_id"]: {"real_exit": [{"threshold": 0.5, "sim_ppl": 7.0,
                                               "ppl": 7.0 + 0.1 * (-1) ** rec["config"]["seed"]}]} for rec in r.a7}
    assert real_exit.gap(r.a7, swinging).verdict == INCONCLUSIVE  # +0.1, −0.1, +0.1, −0.1, +0.1
    text = real_exit.texts(r, "en")
    sim = [7.0 * M[s] * (1 + 2 * 0.5) for s in range(5)]  # setting A at τ = 0.5
    assert text["rx_sim_05"] == f"{np.mean(sim):.2f} ± {t_interval(sim)[2] - np.mean(sim):.2f}"
    assert text["rx_large_speedup"] == "1.80×" and real_exit.texts(r, "ja")["rx_large_speedup"] == "1.80倍"
    assert text["rx_large_batch"] == "16: 1.20× / 2.00×"
    assert (r.target_case, r.batch_case) == ("meets", "shrinks")


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_speculative_and_grouped_decoding_are_read_against_their_aims(results, lang):
    r = real_exit.load(results)
    assert r.best_draft["draft"] == 2 and r.spec_case == "meets"  # 2.00x against the aim of 1.5x
    assert r.large_grouped["ratio"] == 0.85 and r.grouped_case == "meets"  # batch 16 at 85% against 80%
    text = real_exit.texts(r, lang)
    unit = "×" if lang == "en" else "倍"
    assert (text["rx_spec_speedup"], text["rx_spec_accept"], text["rx_spec_draft"]) == (f"2.00{unit}", "80%", "2")
    assert text["rx_spec_range"] == f"{1 / 0.55:.2f}{unit}–{1 / 0.45:.2f}{unit}"  # full-depth median over each run
    assert (text["rx_grouped_ratio"], text["rx_lockstep_ratio"], text["rx_grouped_threshold"]) == ("85%", "60%", "0.5")
    assert len(real_exit.speculative_table(r.bench, lang).splitlines()) == 2 + 2
    assert len(real_exit.grouped_table(r.bench, lang).splitlines()) == 2 + 1
    slow = {**r.bench, "speculative": [{**row, "speedup": 1.4} for row in r.bench["speculative"]],
            "grouped": [{**row, "ratio": 0.79} for row in r.bench["grouped"]]}
    r_slow = real_exit.RealExit(r.exp, r.a7, r.analyses, slow)
    assert (r_slow.spec_case, r_slow.grouped_case) == ("misses", "misses")


def test_bench_table_shows_the_spread_of_the_timed_runs():
    # against the median full-depth run (1.0 s): 1.0/0.625 = 1.6 to 1.0/0.4 = 2.5
    assert real_exit.speedup_range(BENCH, BENCH["rows"][1]) == pytest.approx((1.6, 2.5))
    table = real_exit.bench_table(BENCH, "en")
    assert "1.80× (1.60–2.50)" in table and "full depth" in table
    assert "文字/秒" in real_exit.bench_table(BENCH, "ja")
    # the document's other cells are in the benchmark for speculative decoding, not in the speed table
    extra = {**BENCH, "rows": BENCH["rows"] + [{**BENCH["rows"][1], "model": "A0.3"}]}
    assert real_exit.bench_table(extra, "en") == table


def test_samples_mark_the_characters_that_exited():
    out = real_exit.samples_html([{"threshold": 0.5, "prompt": "<p", "text": "xy", "layers": [1, 3]}], 1)
    assert f'<span style="background:{real_exit.EXIT_COLOR}">x</span>' in out
    assert '<span style="background:transparent">y</span>' in out and "&lt;p" in out
