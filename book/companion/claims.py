"""Chapter "Claims": the document's four claims, each decided by the paired judge (companion.judge).

The claims (their wording is in labels `claims.text`):
1. setting A has a lower PPL than setting B at α = 0.7;
2. α = 0.7 has the lowest PPL of 0.3, 0.5 and 0.7 (setting A);
3. raising the threshold (the document's thresholds, A at α = 0.7) lowers PPL and raises Compute;
4. setting B exits more characters early (higher Shallow) than A at α = 0.7.
They are tested on two sets of records holding the document's four configurations with the same
seeds: the `exp5-6` grid (the document's training rule) and the `regimes` grid (trained well).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ease.config import DOC_THRESHOLDS
from ease.stats import Stat, mean_ci

from companion import core, judge

DOC_CELLS = (("A", 0.3), ("A", 0.5), ("A", 0.7), ("B", 0.7))
REGIMES = {"doc": "exp5-6", "well": "regimes"}  # regime code -> the grid whose records it reads


@dataclass
class Claim:
    number: int
    comparisons: list[tuple[str, judge.Comparison]]  # (what is compared, in notation; the comparison)

    @property
    def verdict(self) -> str:
        return judge.overall([c for _, c in self.comparisons])


def evaluate(records: Sequence[dict]) -> list[Claim]:
    """The four claims on records holding the document's four configurations (same seeds in each)."""
    a3, a5, a7, b7 = (core.select(records, setting=s, alpha=a) for s, a in DOC_CELLS)
    steps = []
    for lo, hi in zip(DOC_THRESHOLDS, DOC_THRESHOLDS[1:]):
        steps.append((f"PPL(τ={hi:g}) − PPL(τ={lo:g})", judge.compare(a7, a7, "ppl", -1, lo, hi)))
        steps.append((f"Compute(τ={hi:g}) − Compute(τ={lo:g})", judge.compare(a7, a7, "compute_frac", +1, lo, hi)))
    return [
        Claim(1, [("PPL(A) − PPL(B)", judge.compare(b7, a7, "ppl", -1))]),
        Claim(2, [("PPL(α=0.7) − PPL(α=0.3)", judge.compare(a3, a7, "ppl", -1)),
                  ("PPL(α=0.7) − PPL(α=0.5)", judge.compare(a5, a7, "ppl", -1))]),
        Claim(3, steps),
        Claim(4, [("Shallow(B) − Shallow(A)", judge.compare(a7, b7, "shallow_frac", +1))]),
    ]


@dataclass
class Regime:
    """One training regime's records and what the chapter reports of them."""

    records: list[dict]
    claims: list[Claim]
    seeds: int  # seeds per configuration
    ppl_a7: Stat  # setting A at α = 0.7: PPL over its seeds
    epochs_a7: float  # setting A at α = 0.7: mean epochs run over its seeds
    max_epochs: int
    patience: int


def regime(records: Sequence[dict]) -> Regime:
    a7 = core.select(records, setting="A", alpha=0.7)
    return Regime(list(records), evaluate(records), len(a7), mean_ci(core.value(r, "ppl") for r in a7),
                  float(np.mean([r["metrics"]["epochs_run"] for r in a7])),
                  records[0]["config"]["max_epochs"], records[0]["config"]["patience"])


def regimes(results=None) -> dict[str, Regime]:
    """Both regimes from the results folder, by code ("doc", "well")."""
    return {code: regime(core.grid_records(grid, results)) for code, grid in REGIMES.items()}


def texts(by_regime: dict[str, Regime], lang: str) -> dict[str, str]:
    """The page's glued numbers and verdict words: cl_* keys (suffix _regimes: the well-trained regime)."""
    doc, well = by_regime["doc"], by_regime["well"]
    out = {"cl_seeds": str(doc.seeds), "cl_seeds_regimes": str(well.seeds),
           "cl_max_epochs": str(well.max_epochs), "cl_patience": str(well.patience)}
    for code, suffix in (("doc", ""), ("well", "_regimes")):
        for claim in by_regime[code].claims:
            out[f"cl_{claim.number}_verdict{suffix}"] = judge.verdict_word(claim.verdict, lang)
    for code, r in by_regime.items():
        out[f"cl_ppl_a7_{code}"] = core.fmt_stat(r.ppl_a7, "ppl")
        out[f"cl_epochs_{code}"] = f"{r.epochs_a7:.1f}"
    return out


def claims_table(claims: Sequence[Claim], lang: str) -> str:
    """Every comparison of every claim: mean difference with its interval, seeds where it holds, verdict."""
    h = core.labels(lang)["claims"]["table"]
    rows = []
    for claim in claims:
        for what, comp in claim.comparisons:
            rows.append({"#": str(claim.number), h["comparison"]: what,
                         h["sign"]: "< 0" if comp.sign < 0 else "> 0",
                         h["difference"]: judge.fmt_diff(comp.stat, comp.metric, lang),
                         h["holds"]: f"{comp.holds}/{len(comp.diffs)}",
                         h["verdict"]: judge.verdict_word(comp.verdict, lang)})
    return core.markdown_table(pd.DataFrame(rows))


# The held-out chapter's primary comparison for each claim (claim 3 is described there, not tested).
HELD_OUT_PRIMARY = {1: "a_vs_b", 2: "a7_vs_a5", 4: "b_shallow"}


def summary_table(by_regime: dict[str, Regime], lang: str, held_out_verdicts: dict[str, str] | None = None) -> str:
    """One row per claim, one verdict column per training regime; with `held_out_verdicts` (the held-out
    chapter's primary comparisons, code -> verdict) a last column for the converged regime's test text."""
    words = core.labels(lang)["claims"]
    columns = {"doc": words["regime"]["doc"],
               "well": words["regime"]["well"].format(patience=by_regime["well"].patience)}
    rows = []
    for i, claim in enumerate(by_regime["doc"].claims):
        row = {"#": str(claim.number), words["table"]["claim"]: words["text"][claim.number]}
        for code, r in by_regime.items():
            row[columns[code]] = judge.verdict_word(r.claims[i].verdict, lang)
        if held_out_verdicts is not None:
            code = HELD_OUT_PRIMARY.get(claim.number)
            row[words["regime"]["held_out"]] = words["not_tested"] if code is None else \
                judge.verdict_word(held_out_verdicts[code], lang)
        rows.append(row)
    return core.markdown_table(pd.DataFrame(rows))
