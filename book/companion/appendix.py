"""Appendix "Lab notebooks": every run of the book's grid, linked to its executed notebook page."""
from __future__ import annotations

import pandas as pd

from companion import core


def runs_table(grid: core.Grid, lang: str, link_prefix: str = "runs/") -> str:
    h = core.labels(lang)["runs"]
    rows = []
    for setting, alpha in grid.cells:
        for r in grid.cell(setting, alpha):
            rows.append({h["run"]: f"[`{r['run_id']}`]({link_prefix}{r['run_id']}.ipynb)",
                         h["setting"]: setting, "α": f"{alpha:g}", h["seed"]: str(r["config"]["seed"]),
                         "PPL": core.fmt_value(r["metrics"]["ppl"], "ppl"), h["epochs"]: str(r["metrics"]["epochs_run"])})
    return core.markdown_table(pd.DataFrame(rows))
