"""The report chapters' modules (book/companion: setup, architecture, experiments, discussion, caveats,
appendix) on hand-made records whose answers are derived by hand.

Records (tests/bookrecords.py): every run's sweep follows PPL(τ) = base · (1 + 2 · shallow(τ)) with
shallow(τ) = (1 − τ) for setting A and (1 − τ)² for setting B, and Compute = shallow/3 + (1 − shallow) (one
exit at layer 1 of 3). `base` is chosen per run; a seed effect shared by all cells (−1 … +1, wider than the
differences between cells) makes the paired comparisons decide what the cells' own intervals could not.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from ease.config import RunConfig
from ease.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Stat

from companion import appendix, architecture, caveats, core, discussion, experiments as ex, judge, setup

import bookrecords

REPO = Path(__file__).resolve().parents[1]
CELLS = [("A", 0.3), ("A", 0.5), ("A", 0.7), ("B", 0.7)]
SEEDS = range(5)
REFERENCES = [RunConfig(setting=s, alpha=a, seed=k) for k in SEEDS for s, a in CELLS]
SEED_EFFECT = {k: 0.5 * (k - 2) for k in SEEDS}  # shared by every cell of a seed
PUBLISHED = core.load_published()
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def record(setting: str, alpha: float, seed: int, base: float, train_s: float = 10.0, **changes) -> dict:
    config = RunConfig(setting=setting, alpha=alpha, seed=seed, **changes)
    return bookrecords.record(
        config, base, bookrecords.POWER[setting], epochs=4 + seed,
        history=[{"epoch": e, "train_loss": 3.0 / e, "val_ppl": base + 1 / e, "val_ppl_shallow": base + 2 / e,
                  "val_ppl_deep": base + 1 / e, "val_shallow_frac": 0.1} for e in (1, 2)],
        env={"python": "3", "torch": "2", "platform": "x", "device": "cpu", "threads": 1},
        timing={"train_s": train_s, "eval_s": 0.1, "tokens_per_s": 100.0 * train_s})


def grid_of(base: dict, seeds=SEEDS, **changes) -> core.Grid:
    """A grid whose run (cell, seed) has base PPL base[cell](seed)."""
    return core.select_grid([record(s, a, k, base[(s, a)](k), **changes) for s, a in CELLS for k in seeds],
                            REFERENCES)


# α = 0.7 lowest by 0.5 per step, B 1.0 above A at α = 0.7; exact per-seed differences (tiny noise)
ORDERED = {("A", 0.3): lambda k: 8.0 + SEED_EFFECT[k] + 0.01 * k, ("A", 0.5): lambda k: 7.5 + SEED_EFFECT[k],
           ("A", 0.7): lambda k: 7.0 + SEED_EFFECT[k] + 0.01 * (k % 2), ("B", 0.7): lambda k: 8.0 + SEED_EFFECT[k]}
# the same, but α = 0.3 and B wobble ±0.6 around α = 0.7 seed by seed: nothing resolved against α = 0.7
WOBBLE = {**ORDERED, ("A", 0.3): lambda k: 7.0 + SEED_EFFECT[k] + (0.6 if k % 2 else -0.6) + 0.1 * k,
          ("B", 0.7): lambda k: 7.0 + SEED_EFFECT[k] + (-0.6 if k % 2 else 0.6) + 0.1 * k}


@pytest.fixture(scope="module")
def ordered() -> core.Grid:
    return grid_of(ORDERED)


@pytest.fixture(scope="module")
def wobble() -> core.Grid:
    return grid_of(WOBBLE)


# --- the judge's building blocks -----------------------------------------------------------------------
def test_trend_needs_every_step_resolved():
    up, down = judge.Comparison("ppl", [1.0, 1.1, 0.9], +1), judge.Comparison("ppl", [-1.0, -1.1, -0.9], +1)
    unsure = judge.Comparison("ppl", [1.0, -1.0, 0.1], +1)
    assert ex.trend([up, up]) == "rises" and ex.trend([down, down]) == "falls"
    assert ex.trend([up, down]) == "not_monotonic" and ex.trend([up, unsure]) == "unresolved"
    assert ex.trend([judge.Comparison("ppl", [1.0], +1), up]) == "single"
    assert ex.doc_trend([3.0, 2.0, 1.0]) == "falls" and ex.doc_trend([1.0, 3.0, 2.0]) == "not_monotonic"


def test_seed_case_counts_seeds_per_cell(ordered):
    assert ex.seed_case(ordered) == "interval"
    assert ex.seed_case(grid_of(ORDERED, seeds=[0])) == "all_single"


# --- Experiment 5: α ---------------------------------------------------------------------------------
def test_alpha_results_on_resolved_records(ordered):
    r = ex.alpha_results(ordered, PUBLISHED)
    # operating threshold 0.95: PPL = 1.1 · base; α = 0.7 is lowest by 1.1 · 0.5 per step in every seed
    assert r.lowest.key == 0.7 and r.doc_best.key == 0.7  # the document's best α (22.95) is 0.7 too
    assert r.doc_best.case == REPRODUCED
    a3, a7 = ([1.1 * ORDERED[("A", a)](k) for k in SEEDS] for a in (0.3, 0.7))
    assert r.doc_best.against[0.3].diffs == pytest.approx([y - x for x, y in zip(a3, a7)])
    assert [s.comparison.verdict for s in r.steps] == [REPRODUCED, REPRODUCED]  # the document's PPL falls too
    assert (r.trend, r.doc_trend) == ("falls", "falls")
    means = {a: np.mean([1.1 * ORDERED[("A", a)](k) for k in SEEDS]) for a in (0.3, 0.5, 0.7)}
    assert r.spread == pytest.approx(max(means.values()) - min(means.values()))
    # 1.1 · (7 ± 1) is far below the document's 22.95 in every seed
    assert r.against_document == "runs_lower"
    table = ex.alpha_comparisons_table(r, "en")
    assert len(table.splitlines()) == 2 + 3 and table.count("**reproduced**") == 3


def test_alpha_results_are_inconclusive_when_the_paired_differences_are_not_resolved(wobble):
    r = ex.alpha_results(wobble, PUBLISHED)
    assert r.doc_best.against[0.3].verdict == INCONCLUSIVE and r.doc_best.case == INCONCLUSIVE
    assert r.trend == "unresolved"
    assert "inconclusive" in ex.alpha_comparisons_table(r, "en")


def test_unpaired_spread_would_not_resolve_what_the_paired_judge_does(ordered):
    """The seed effect swamps the per-cell intervals: only pairing by seed resolves α."""
    r = ex.alpha_results(ordered, PUBLISHED)
    a3, a7 = ordered.stat("A", 0.3, "ppl"), ordered.stat("A", 0.7, "ppl")
    assert a7.hi > a3.lo  # the two cells' own intervals overlap
    assert r.doc_best.against[0.3].verdict == REPRODUCED


def test_against_document_reads_the_interval_of_the_runs():
    doc = PUBLISHED["exp5_alpha"]["rows"][2]["ppl"]  # 22.95
    assert ex.against_document([doc - 1, doc + 1, doc - 0.5, doc + 0.5], doc) == "inside"
    assert ex.against_document([doc + 5, doc + 6, doc + 7], doc) == "runs_higher"
    assert ex.against_document([doc - 5], doc) == "single"


# --- Experiment 5: thresholds --------------------------------------------------------------------------
def test_threshold_results(ordered):
    r = ex.threshold_results(ordered, PUBLISHED)
    assert r.thresholds == [0.5, 0.7, 0.8, 0.9, 0.95]
    # PPL = base (1 + 2 (1 − τ)) falls with τ in every seed; the document's rises from 0.7 to 0.8
    assert r.trend == "falls" and r.lowest.key == 0.95 and r.doc_best.case == REPRODUCED
    assert [s.comparison.verdict for s in r.steps] == [REPRODUCED, NOT_REPRODUCED, REPRODUCED, REPRODUCED]
    base = [ORDERED[("A", 0.7)](k) for k in SEEDS]
    step = r.steps[1].comparison  # PPL(0.8) − PPL(0.7) = base · 2 · (0.2 − 0.3)
    assert step.stat.mean == pytest.approx(np.mean([-0.2 * b for b in base]))
    assert r.shallow_low.mean == pytest.approx(0.5) and r.shallow_high.mean == pytest.approx(0.05)
    assert r.shallow_change == "down" and r.shallow_comparison.verdict == REPRODUCED
    table = ex.threshold_comparisons_table(r, "ja")
    # 4 steps, 0.95 against 0.5, 0.7 and 0.8 (0.9 is a step already), and the Shallow row
    assert len(table.splitlines()) == 2 + 4 + 3 + 1 and "**非再現**" in table and " pt" in table


def test_self_conflict_cases():
    found = ex.self_conflict(PUBLISHED, 0.95)
    # the α = 0.7 row (22.95, 52.4%) is below the threshold table's lowest PPL (31.46) and matches no Shallow
    assert (found.case, found.operating, found.table_min_ppl) == ("below", 0.95, 31.46)
    assert ex.self_conflict(PUBLISHED, 0.6).operating == 0.95  # not in the table: its highest threshold
    changed = copy.deepcopy(PUBLISHED)
    row = next(r for r in changed["exp5_alpha"]["rows"] if r["alpha"] == 0.7)
    row["ppl"] = 38.0
    assert ex.self_conflict(changed, 0.95).case == "within"
    row["ppl"] = 60.0
    assert ex.self_conflict(changed, 0.95).case == "above"
    row["shallow_pct"] = 84.5
    found = ex.self_conflict(changed, 0.95)
    assert (found.case, found.match) == ("matches", 0.8)


# --- Experiment 6 ----------------------------------------------------------------------------------------
def test_settings_results(ordered):
    r = ex.settings_results(ordered, PUBLISHED)
    assert (r.doc_better, r.other) == ("A", "B")
    # at τ = 0.95: A = 1.1 · (7 + e), B = (1 + 2 · 0.05²) · (8 + e): A lower in every seed
    a7 = [ORDERED[("A", 0.7)](k) for k in SEEDS]
    b7 = [ORDERED[("B", 0.7)](k) for k in SEEDS]
    expected = np.mean([1.1 * a - 1.005 * b for a, b in zip(a7, b7)])
    assert r.ppl_comparison.stat.mean == pytest.approx(expected) and r.ppl_comparison.verdict == REPRODUCED
    # B exits fewer characters (0.05² < 0.05): the document's "B exits more" is not reproduced
    assert ex.direction(r.shallow_comparison) == "down" and r.shallow_comparison.verdict == NOT_REPRODUCED
    # per threshold, A − B = (7 + e)(1 + 2(1 − τ)) − (8 + e)(1 + 2(1 − τ)²): B lower at 0.7, 0.8, 0.9
    for t, verdict in ((0.7, NOT_REPRODUCED), (0.8, NOT_REPRODUCED), (0.9, NOT_REPRODUCED), (0.95, REPRODUCED)):
        mean = np.mean([a * (1 + 2 * (1 - t)) - b * (1 + 2 * (1 - t) ** 2) for a, b in zip(a7, b7)])
        assert r.per_threshold[t].stat.mean == pytest.approx(mean) and r.per_threshold[t].verdict == verdict
    assert (r.resolved_count(REPRODUCED), r.resolved_count(NOT_REPRODUCED), r.doc_better_count) == (1, 3, 4)
    # equal compute: A's at τ = 0.95 is 1 − (2/3) · 0.05; along B's sweep PPL = b · (1 + 3 (1 − compute)),
    # exact under linear interpolation, so B there is b · 1.1 and A − B = 1.1 · (a − b) = −1.1 · (1 ± noise)
    assert r.iso_compute == pytest.approx(1 - 2 / 3 * 0.05)
    assert r.iso_comparison.stat.mean == pytest.approx(np.mean([1.1 * (a - b) for a, b in zip(a7, b7)]))
    assert r.iso_comparison.verdict == REPRODUCED
    table = ex.settings_comparisons_table(r, PUBLISHED, "en")
    assert "**reproduced**" in table and "**not reproduced**" in table and " pp" in table


def test_iso_compute_is_the_mean_compute_not_one_run():
    """Compute differs by seed when the operating threshold does: the equal-compute point is their mean."""
    records = [record(s, a, k, ORDERED[(s, a)](k)) for s, a in CELLS for k in SEEDS]
    for r in records:  # seed 4 of A at α = 0.7 operates at τ = 0.5 (compute 1 − (2/3) · 0.5)
        if (r["config"]["setting"], r["config"]["alpha"], r["config"]["seed"]) == ("A", 0.7, 4):
            r["metrics"]["compute_frac"] = 1 - 2 / 3 * 0.5
    grid = core.select_grid(records, REFERENCES)
    r = ex.settings_results(grid, PUBLISHED)
    assert r.iso_compute == pytest.approx((4 * (1 - 2 / 3 * 0.05) + (1 - 2 / 3 * 0.5)) / 5)


def test_settings_inconclusive_when_b_wobbles_around_a(wobble):
    r = ex.settings_results(wobble, PUBLISHED)
    assert r.ppl_comparison.verdict == INCONCLUSIVE


# --- discussion -------------------------------------------------------------------------------------------
def test_observations_follow_the_paired_judge(ordered, wobble):
    found = discussion.observations(ordered, PUBLISHED)
    assert [o.kind for o in found] == ["setting", "alpha", "threshold"]
    assert [o.verdict for o in found] == [REPRODUCED, REPRODUCED, REPRODUCED]
    assert found[1].claimed.key == 0.7 and set(found[1].claimed.against) == {0.3, 0.5}
    assert set(found[2].claimed.against) == {0.5, 0.7, 0.8, 0.9}
    unsure = discussion.observations(wobble, PUBLISHED)
    assert [o.verdict for o in unsure] == [INCONCLUSIVE, INCONCLUSIVE, REPRODUCED]
    table = discussion.claims_table(unsure, "en")
    assert len(table.splitlines()) == 2 + 3 and table.count("inconclusive") == 2
    assert "α=0.7 − α=0.3:" in table
    single = discussion.observations(grid_of(ORDERED, seeds=[0]), PUBLISHED)
    assert [o.case for o in single] == ["single"] * 3


# --- formatting ------------------------------------------------------------------------------------------
def test_fmt_diff_shows_the_sign_of_an_interval_end_near_zero():
    # the interval [−0.057, −0.003] excludes zero: its upper end must not print as "−0.00"
    assert core.fmt_diff(Stat(-0.03, 0.027, 5), "ppl") == "-0.03 [-0.06, -0.003]"
    # 100 · [0.01 − 0.00996, 0.01 + 0.00996] = [+0.004, +1.996] percentage points
    assert core.fmt_diff(Stat(0.01, 0.00996, 5), "shallow_frac") == "+1.0 pp [+0.004, +2.0]"
    # an interval that contains zero keeps the usual digits, even where an end rounds to zero
    assert core.fmt_diff(Stat(-0.2, 0.203, 5), "ppl") == "-0.20 [-0.40, +0.00]"
    assert core.fmt_diff(Stat(-0.5, 0.2, 5), "ppl") == "-0.50 [-0.70, -0.30]"
    assert core.fmt_diff(Stat(0.25, None, 1), "ppl") == "+0.25"
    assert judge.fmt_diff(Stat(0.01, 0.00996, 5), "shallow_frac", "ja") == "+1.0 pt [+0.004, +2.0]"


# --- setup, architecture, caveats, appendix -----------------------------------------------------------
def test_setup_values_and_tables():
    records = [record(s, a, k, ORDERED[(s, a)](k), train_s=[1.0, 1.0, 1.0, 1.0, 16.0][k]) for s, a in CELLS
               for k in SEEDS]
    grid = core.select_grid(records, REFERENCES)
    values = setup.values(grid)
    assert values["cfg_n_layers"] == "3" and values["cfg_threshold"] == "0.95" and values["cfg_compute_exit"] == "1/3"
    assert values["cfg_train_chars"] == "200,000" and values["eval_tokens"] == "1,000"
    assert setup.grid_case(grid) == "reference"
    training = setup.training_table(grid, "en")
    # a mean, not the largest: (4 · 1 + 16) / 5 = 4.0 seconds, and 400 tokens/s
    assert "| 4.0 | 400 |" in training and "16.0" not in training
    assert "4, 5, 6, 7, 8" in training  # epochs of each seed, in seed order
    env = setup.environment_table(grid, "ja")
    assert env.splitlines()[-1].endswith("| 20 |")
    assert len(setup.setup_table(grid, PUBLISHED, "ja").splitlines()) == 2 + 14


def test_setup_names_the_deviations():
    small = grid_of(ORDERED, seeds=[0], train_chars=20_000, max_epochs=2)
    assert setup.grid_case(small) == "deviates"
    text = setup.deviations(small, "en")
    assert "`train_chars` = 20,000 (reference 200,000)" in text and "`max_epochs` = 2 (reference" in text


def test_architecture_weights(ordered):
    # A: 0.7 + 0 + 0.3 = 1, last share 30%; B: 0.7 + 1.0 + 0.3 = 2, last share 15%
    assert architecture.weights(ordered, PUBLISHED) == {"b_middle_weight": "1", "weight_sum_a": "1",
                                                        "weight_sum_b": "2", "last_share_a": "30%",
                                                        "last_share_b": "15%"}


def test_document_consistency():
    rows = [r for key in caveats.DOC_TABLES for r in PUBLISHED[key]["rows"]]
    # an exited character costs 1/3: Compute % = 100 − (2/3) · Shallow %
    gap = max(abs(r["compute_pct"] - (100 - 2 / 3 * r["shallow_pct"])) for r in rows)
    assert caveats.compute_gap(PUBLISHED) == pytest.approx(gap)
    assert caveats.compute_case(PUBLISHED) == "consistent" and caveats.exp6_repeats_exp5(PUBLISHED) == "same"
    changed = copy.deepcopy(PUBLISHED)
    changed["exp6_settings"]["rows"][0]["compute_pct"] = 70.0
    assert caveats.compute_case(changed) == "inconsistent" and caveats.exp6_repeats_exp5(changed) == "differs"
    table = caveats.consistency_table(PUBLISHED, "ja")
    assert len(table.splitlines()) == 2 + len(rows) and "設定A、α=0.7、閾値0.50" in table


@pytest.mark.parametrize("diffs, case, values", [
    ((-0.81, -0.89, -0.85), "lower", {"lo": "0.81", "hi": "0.89"}),
    ((0.12, 0.04), "higher", {"lo": "0.04", "hi": "0.12"}),
    ((-0.3, 0.1), "mixed", {"lo": "-0.30", "hi": "+0.10"}),
])
def test_the_validation_caveat_says_which_way_the_test_text_reads(diffs, case, values):
    from ease.stats import Stat

    rows = [{"key": f"m{i}", "diff": Stat(d, 0.05, 5)} for i, d in enumerate(diffs)]
    assert caveats.optimism_case(rows) == (case, values)


def test_runs_table_links_every_run(ordered):
    table = appendix.runs_table(ordered, "en")
    assert len(table.splitlines()) == 2 + len(ordered.records())
    assert all(f"(runs/{r['run_id']}.ipynb)" in table for r in ordered.records())


# --- figures, labels, language neutrality --------------------------------------------------------------
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_figures_draw_with_plain_log_ticks(ordered, lang):
    import matplotlib

    matplotlib.use("Agg")
    fig = ex.fig_tradeoff(ordered, PUBLISHED, [("A", 0.7), ("B", 0.7)], lang, doc_tables=["exp6_threshold"])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"\d+(\.\d+)?", s) for s in labels), labels
    for fig in (ex.fig_alpha(ordered, PUBLISHED, lang), setup.fig_learning_curves(ordered, lang),
                architecture.fig_architecture(lang)):
        assert fig.axes


def _keys(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}/{k}") for k, v in tree.items()))


def test_both_languages_have_the_same_labels():
    en, ja = (yaml.safe_load((REPO / "book" / lang / "labels.yml").read_text(encoding="utf-8")) for lang in ("en", "ja"))
    assert _keys(en) == _keys(ja)


def test_companion_modules_hold_no_japanese():
    for path in sorted((REPO / "book" / "companion").glob("*.py")):
        found = CJK.findall(path.read_text(encoding="utf-8"))
        assert not found, f"{path.name} contains Japanese text: {''.join(found[:20])}"
