"""The landing page (index): one line per chapter, from the same functions the chapters use.

- the re-run (book grid): Experiment 5's α (companion.experiments), and setting A against setting B
  judged exactly as claim 1 of the Claims chapter (`claims.evaluate` on the same records: paired by seed);
- the audit: the placeholder hypothesis (companion.forensics), the document's claims under its own
  training rule (companion.claims), early exit against smaller dense models (companion.beyond), and
  real early exit with the decoding benchmark (companion.real_exit).
"""
from __future__ import annotations

from dataclasses import dataclass

from ease.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

from companion import beyond, claims, core, experiments, forensics, judge, real_exit


@dataclass
class Glance:
    grid: core.Grid
    alpha: experiments.AlphaResults  # Experiment 5 on the book grid
    book_claims: list[claims.Claim]  # the document's claims on the book grid (claim 2: α = 0.7 the best)
    doc_rule_claims: list[claims.Claim]  # on the exp5-6 grid, as the Claims chapter reports them
    fx_verdict: str  # the placeholder hypothesis
    fx_closer: int  # published numbers closer to the placeholder runs
    fx_numbers: int
    fx_fit: dict[str, str]  # per setting, which corpus's runs its published numbers fit (forensics.setting_case)
    equal_wins: int  # early exit better than the smaller dense model at its compute
    equal_pairs: int  # comparisons below full compute
    real: real_exit.RealExit  # its gap (real − simulated PPL) and the benchmark's large model

    @property
    def a_vs_b(self) -> judge.Comparison:
        return a_vs_b(self.grid.records())

    @property
    def a_vs_b_case(self) -> str:
        """The claim's verdict, or 'single' when one seed leaves no interval."""
        return "single" if self.a_vs_b.stat.half is None else self.a_vs_b.verdict


def a_vs_b(records: list[dict]) -> judge.Comparison:
    """PPL(A) − PPL(B) per seed at α = 0.7, claimed negative: claim 1 of the Claims chapter on these records."""
    return claims.evaluate(records)[0].comparisons[0][1]


def load(grid: core.Grid, published: dict, results=None) -> Glance:
    exp = core.grid_records("exp5-6", results)
    fx = forensics.matches(core.grid_records("forensics", results), published)
    smaller = [r for r in beyond.equal_compute(exp, core.grid_records("dense", results)) if r.compute < 1]
    fits = forensics.fits(fx)
    return Glance(grid, experiments.alpha_results(grid, published), claims.evaluate(grid.records()),
                  claims.evaluate(exp), forensics.placeholder_verdict(fx), sum(m.closer == "placeholder" for m in fx),
                  len(fx), {s: forensics.setting_case(fits, s) for s in ("A", "B")},
                  sum(r.comparison.verdict == REPRODUCED for r in smaller), len(smaller),
                  real_exit.load(results))


def claims_by_verdict(found: list[claims.Claim], lang: str) -> str:
    """The claims grouped by verdict, e.g. '**reproduced**: 1, 3; inconclusive: 2' (labels `landing.group`;
    only the verdicts that occur)."""
    words = core.labels(lang)["landing"]
    groups = []
    for code in (REPRODUCED, INCONCLUSIVE, NOT_REPRODUCED):
        numbers = [str(c.number) for c in found if c.verdict == code]
        if numbers:
            groups.append(words["group"].format(verdict=judge.verdict_word(code, lang),
                                                numbers=words["list_sep"].join(numbers)))
    return words["group_sep"].join(groups)


def texts(g: Glance, lang: str) -> dict[str, str]:
    """The page's glued numbers and verdict words."""
    n_seeds = sorted({len(v) for v in g.grid.runs.values()})
    large = g.real.large
    return {
        "n_runs": str(len(g.grid.records())),
        "n_cells": str(len(g.grid.cells)),
        "seeds": str(n_seeds[0]) if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}",
        "exp5_best_alpha": f"{g.alpha.lowest.key:g}",
        "exp5_doc_best_alpha": f"{g.alpha.doc_best.key:g}",
        **experiments.at_doc_alpha_texts(g.alpha),
        "gl_alpha_verdict": judge.verdict_word(g.book_claims[1].verdict, lang),
        "gl_ab_diff": core.fmt_diff(g.a_vs_b.stat, "ppl"),
        "gl_fx_verdict": core.labels(lang)["forensics"]["verdict"][g.fx_verdict],
        "gl_fx_closer": str(g.fx_closer),
        "gl_fx_numbers": str(g.fx_numbers),
        "gl_claims": claims_by_verdict(g.doc_rule_claims, lang),
        "gl_equal_wins": str(g.equal_wins),
        "gl_equal_pairs": str(g.equal_pairs),
        "gl_large_layers": str(large["n_layers"]),
        "gl_large_speedup": real_exit.times(large["speedup"], lang),
        "gl_large_compute": core.fmt_value(large["compute_frac"], "compute_frac"),
        "gl_large_theory": real_exit.times(large["theoretical_speedup"], lang),
    }
