"""Chapter "Discussion": the document's three closing observations, each decided by the paired judge.

1. setting `best_setting` has a lower PPL than the other setting at the document's α;
2. α = `best_alpha` has a lower PPL than each other α of setting A;
3. the threshold `best_threshold` has a lower PPL than each other threshold of the document's table.
(`best_*` from the `discussion` section of book/data/published.yaml.) Each observation is the claimed
option's paired differences to every other option (companion.judge), read on the book's grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from companion import core, judge
from companion.experiments import A, B, Condition, alpha_conditions, lowest, threshold_conditions

KINDS = ("setting", "alpha", "threshold")  # what observations 1, 2, 3 choose between
SYMBOLS = {"alpha": "α", "threshold": "τ"}


def option_value(key) -> str:
    return key if isinstance(key, str) else f"{key:g}"


def option_name(kind: str, key, spaced: bool = False) -> str:
    """An option as the tables write it: 'A', 'α=0.7' ('α = 0.7' spaced), 'τ=0.95'."""
    if kind == "setting":
        return option_value(key)
    return f"{SYMBOLS[kind]}{' = ' if spaced else '='}{option_value(key)}"


@dataclass
class Observation:
    number: int
    kind: str  # one of KINDS
    claimed: judge.Lowest  # the document's option against every other (PPL, paired by seed, claimed lower)
    runs_lowest: judge.Lowest  # the option with the lowest mean PPL over seeds, against every other
    stats: dict  # option -> its PPL over seeds
    doc: dict  # option -> the document's PPL

    @property
    def verdict(self) -> str:
        return self.claimed.verdict

    @property
    def case(self) -> str:
        """The verdict, or 'single' when one seed leaves no interval."""
        return self.claimed.case


def observations(grid: core.Grid, published: dict) -> list[Observation]:
    disc = published["discussion"]
    alpha6 = float(published["exp6_settings"]["alpha"])
    options = {
        "setting": ({s: Condition(grid.cell(s, alpha6)) for s in (A, B)},
                    {r["setting"]: r["ppl"] for r in published["exp6_settings"]["rows"]}, disc["best_setting"]),
        "alpha": (alpha_conditions(grid, published["exp5_alpha"]["setting"]),
                  {float(r["alpha"]): r["ppl"] for r in published["exp5_alpha"]["rows"]}, float(disc["best_alpha"])),
        "threshold": (threshold_conditions(grid, published),
                      {float(r["threshold"]): r["ppl"] for r in published["exp5_threshold"]["rows"]},
                      float(disc["best_threshold"])),
    }
    out = []
    for number, kind in enumerate(KINDS, start=1):
        conditions, doc, claimed = options[kind]
        out.append(Observation(number, kind, lowest(conditions, claimed), lowest(conditions),
                               {k: c.stat("ppl") for k, c in conditions.items()}, doc))
    return out


def differences(o: Observation, lang: str) -> str:
    """The claimed option's paired PPL difference to each other option, with its 95% interval."""
    mine = option_name(o.kind, o.claimed.key)
    return "; ".join(f"{mine} − {option_name(o.kind, k)}: {judge.fmt_diff(c.stat, 'ppl', lang)}"
                     for k, c in o.claimed.against.items())


def claims_table(found: list[Observation], lang: str) -> str:
    """The document's observations: its values, the runs', the paired differences and the verdict."""
    h = core.labels(lang)["discussion"]
    rows = []
    for o in found:
        if o.kind == "setting":  # two options: both sides in full
            doc = ", ".join(f"{k} {v:.2f}" for k, v in o.doc.items())
            runs = ", ".join(f"{k} {core.fmt_stat(s, 'ppl')}" for k, s in o.stats.items())
        else:  # the lowest of several
            doc_key = min(o.doc, key=o.doc.get)
            doc = h["best"].format(option=option_name(o.kind, doc_key, True)) + f" ({o.doc[doc_key]:.2f})"
            runs = (h["lowest_mean"].format(option=option_name(o.kind, o.runs_lowest.key, True))
                    + f" ({core.fmt_stat(o.runs_lowest.stat, 'ppl')})")
        rows.append({h["observation"]: h["observations"][o.number].format(claimed=option_value(o.claimed.key)),
                     h["doc"]: doc, h["runs"]: runs, h["differences"]: differences(o, lang),
                     h["verdict"]: judge.verdict_word(o.verdict, lang)})
    return core.markdown_table(pd.DataFrame(rows))
