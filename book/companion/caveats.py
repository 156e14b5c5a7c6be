"""Chapter "Caveats": how far the document's own numbers agree with each other.

With the exit at layer 1 of 3, Compute % follows from Shallow %: an exited character costs 1/3 of the
network, any other all of it. Every row of the document's result tables is checked against that.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ease.exits import layer_compute_frac

from companion import core

DOC_TABLES = ("exp5_alpha", "exp5_threshold", "exp6_settings", "exp6_threshold")
ROUNDING = 0.15  # percentage points: the most two one-decimal numbers can differ by rounding alone


def implied_compute(shallow_pct: float, exit_layer: int = 1, n_layers: int = 3) -> float:
    """Compute % implied by a Shallow %."""
    return 100 * layer_compute_frac(shallow_pct / 100, exit_layer, n_layers)


def document_rows(published: dict) -> list[tuple[str, dict]]:
    """Every (table name, row) of the document's result tables."""
    return [(key, r) for key in DOC_TABLES for r in published[key]["rows"]]


def compute_gap(published: dict) -> float:
    """The largest |printed Compute % − the Compute % its Shallow % implies| over the document's rows."""
    return max(abs(r["compute_pct"] - implied_compute(r["shallow_pct"])) for _, r in document_rows(published))


def compute_case(published: dict) -> str:
    """'consistent' when every printed Compute % follows from its Shallow % up to rounding, else 'inconsistent'."""
    return "consistent" if compute_gap(published) < ROUNDING else "inconsistent"


def exp6_repeats_exp5(published: dict) -> str:
    """'same' when Experiment 6's setting-A row repeats Experiment 5's row at that α, else 'differs'."""
    alpha = float(published["exp6_settings"]["alpha"])
    exp5 = next(r for r in published["exp5_alpha"]["rows"] if float(r["alpha"]) == alpha)
    exp6 = next(r for r in published["exp6_settings"]["rows"] if r["setting"] == "A")
    return "same" if all(exp6[k] == exp5[k] for k in ("ppl", "shallow_pct", "compute_pct")) else "differs"


def consistency_table(published: dict, lang: str) -> str:
    """For each document row: its Compute % against the one its Shallow % implies."""
    words = core.labels(lang)
    h = words["consistency"]
    rows = []
    for key, r in document_rows(published):
        parts = [words["setting"][r.get("setting", published[key].get("setting"))],
                 f"α={r.get('alpha', published[key].get('alpha')):g}"]
        if "threshold" in r:
            parts.append(h["threshold"].format(threshold=r["threshold"]))
        implied = implied_compute(r["shallow_pct"])
        rows.append({h["table"]: h["tables"][key], h["row"]: h["separator"].join(parts),
                     h["shallow"]: f"{r['shallow_pct']:.1f}%", h["printed"]: f"{r['compute_pct']:.1f}%",
                     h["implied"]: f"{implied:.2f}%", h["difference"]: f"{r['compute_pct'] - implied:+.2f}"})
    return core.markdown_table(pd.DataFrame(rows))


def optimism_case(rows: Sequence[dict]) -> tuple[str, dict[str, str]]:
    """How the same runs read on the test split against the validation text that chose their epoch (rows of
    held_out.optimism_rows): 'lower' or 'higher' on test for every model, else 'mixed'; with the range of the
    per-model mean differences (their sizes for 'lower' and 'higher', signed for 'mixed')."""
    diffs = [row["diff"].mean for row in rows]
    if all(d < 0 for d in diffs) or all(d > 0 for d in diffs):
        sizes = sorted(abs(d) for d in diffs)
        return ("lower" if diffs[0] < 0 else "higher"), {"lo": f"{sizes[0]:.2f}", "hi": f"{sizes[-1]:.2f}"}
    return "mixed", {"lo": f"{min(diffs):+.2f}", "hi": f"{max(diffs):+.2f}"}
